"""The `kidneytumorseg` command line, in process (fast) and once as a real subprocess.

The bundle holds tiny networks whose stage 1 marks the whole volume and fixed landmark points,
and whose KT and K1 mark everything: every box below is then known exactly.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from KidneyTumorSegLib.cli.main import build_parser, main
from KidneyTumorSegLib.measurements import measure
from KidneyTumorSegLib.metrics import kits_dice
from KidneyTumorSegLib.stage1 import LANDMARK_NAMES
from synthetic_cases import image_in, phantom_ct, steered_bundle, write_nifti

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
WORKING_SHAPE = (16, 64, 96)
# The crop on the RAS input (i = 95 - x, j = 63 - y, k = 15 - z of the working frame): the
# landmark box x 0..23, y 0..3 grown by 64 voxels, the whole z range.
EXPECTED_CROP_IJK = [[8, 95], [0, 63], [0, 15]]
FULL_IJK = [[0, 95], [0, 63], [0, 15]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    image = image_in(phantom_ct(WORKING_SHAPE), "RAS")
    bundle = steered_bundle(root / "bundle", ("stage1", "KT", "K1", "T-vnet"), {"stage1": 10.0, "KT": 10.0, "K1": 10.0},
                            heat=1.0, kidney_patch=(16, 64, 64))
    return {"ct": write_nifti(root / "ct.nii.gz", image.array, image.affine), "bundle": bundle}


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def model_args(files: dict[str, Path], progress: str = "none") -> list[str]:
    return ["--bundle", str(files["bundle"]), "--device", "cpu", "--progress", progress]


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".part" in p.name]


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[], ["segment"], ["locate"], ["batch"], ["evaluate"], ["demo"]])
def test_help_of_every_command(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kidneytumorseg")


# ---------------------------------------------------------------- segment and locate


@pytest.mark.parametrize("flags, support, kt_only", [([], True, 1), (["--keep-all-components"], False, 1), (["--strict"], True, 0)])
def test_method_options_select_the_settings(flags: list[str], support: bool, kt_only: int) -> None:
    from KidneyTumorSegLib.cli.segment import method_settings

    settings = method_settings(build_parser().parse_args(["segment", "in.nii.gz", "-o", "out.nii.gz", *flags]))
    assert settings.stage1.support_components is support and settings.fusion.kt_only_label == kt_only


def test_segment_writes_labels_report_and_qa_with_json_progress(files, tmp_path: Path, capsys) -> None:
    out, report, qa = tmp_path / "seg.nii.gz", tmp_path / "report.json", tmp_path / "qa.png"
    code, stdout, _ = run(capsys, "segment", files["ct"], "-o", out, "--report", report, "--qa", qa, *model_args(files, "json"))
    assert code == 0
    source, written = nib.load(files["ct"]), nib.load(out)
    assert written.shape == source.shape == (96, 64, 16)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    assert qa.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_leftovers(tmp_path)

    data = json.loads(report.read_text(encoding="utf-8"))
    assert {"input", "bundle", "models", "crop", "stage1", "measurements", "seconds", "peak_rss_mb"} <= set(data)
    assert data["models"] == ["stage1", "KT", "T-vnet"]  # stage 1 fills its box: K1 has nothing to refine
    assert data["crop"]["ijk"] == EXPECTED_CROP_IJK
    assert np.array(data["crop"]["ras"]).shape == (2, 3)
    assert set(data["stage1"]["boxes"]) == {"segmentation", "landmarks", "chosen", "refined", "crop"}
    assert data["stage1"]["boxes"]["crop"] == data["crop"]
    assert data["stage1"]["boxes"]["segmentation"]["ijk"] == FULL_IJK
    assert data["measurements"] == json.loads(json.dumps(measure(labels, written.affine)))
    assert {"kidney_ml", "tumor_ml", "tumor_count", "tumors", "largest_tumor_diameter_mm"} <= set(data["measurements"])
    assert data["measurements"]["kidney_ml"]["total"] > 0  # KT marks the whole crop
    assert {"total", "prepare", "stage1", "KT", "T-vnet", "fusion"} <= set(data["seconds"]) and "K1" not in data["seconds"]
    assert "no refinement needed" in data["stage1"]["decisions"][-1]

    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1] == {"type": "done", "output": str(out)}
    progress = events[:-1]
    assert all(e["type"] == "progress" and 0.0 <= e["fraction"] <= 1.0 for e in progress)
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # In the order they run: stage 1, then KT and the tumor model.
    order = list(dict.fromkeys((e["stage"], e["model"]) for e in progress))
    assert order == [("stage1", "stage1"), ("stage2", "KT"), ("stage2", "T-vnet")]


def test_segment_with_the_whole_volume(files, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "seg.nii.gz", tmp_path / "report.json"
    code, _, _ = run(capsys, "segment", files["ct"], "-o", out, "--report", report, "--box", "full", *model_args(files))
    assert code == 0 and nib.load(out).shape == (96, 64, 16)
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["crop"]["ijk"] == FULL_IJK and data["stage1"] is None  # no boxes ...
    assert data["models"][:2] == ["stage1", "KT"]  # ... but stage 1's segmentation head gives the support
    assert np.all(np.asarray(nib.load(out).dataobj) > 0)  # KT marks every voxel of the crop


def test_locate_then_segment_in_its_box(files, tmp_path: Path, capsys) -> None:
    boxes = tmp_path / "boxes.json"
    code, _, _ = run(capsys, "locate", files["ct"], "-o", boxes, *model_args(files))
    assert code == 0
    located = json.loads(boxes.read_text(encoding="utf-8"))
    assert set(located) == {"boxes", "landmarks", "decisions"}
    for name in ("segmentation", "landmarks", "crop"):
        assert np.array(located["boxes"][name]["ijk"]).shape == (3, 2)
        assert np.array(located["boxes"][name]["ras"]).shape == (2, 3)
    assert located["boxes"]["crop"]["ijk"] == EXPECTED_CROP_IJK
    assert located["boxes"]["landmarks"]["ijk"] == [[72, 95], [60, 63], [0, 15]]  # x 0..23, y 0..3
    assert located["landmarks"] and all(lm["name"] in LANDMARK_NAMES and len(lm["ras"]) == 3 for lm in located["landmarks"])
    assert "landmark box used" in located["decisions"][0]

    out, report = tmp_path / "seg.nii.gz", tmp_path / "report.json"
    code, _, _ = run(capsys, "segment", files["ct"], "-o", out, "--report", report, "--box", boxes, *model_args(files))
    assert code == 0
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["crop"]["ijk"] == located["boxes"]["crop"]["ijk"] and data["stage1"] is None
    labels = np.asarray(nib.load(out).dataobj)
    assert np.all(labels[8:, :, :] > 0) and not labels[:8].any()  # everything in the crop, nothing outside


def test_segment_in_a_box_given_in_input_voxels(files, tmp_path: Path, capsys) -> None:
    box, report = tmp_path / "box.json", tmp_path / "report.json"
    box.write_text(json.dumps({"ijk": [[20, 60], [10, 40], [2, 12]]}), encoding="utf-8")
    code, _, _ = run(capsys, "segment", files["ct"], "-o", tmp_path / "seg.nii.gz", "--report", report, "--box", box,
                     "--members", "KT", *model_args(files))
    assert code == 0
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["crop"]["ijk"] == [[20, 60], [10, 40], [2, 12]] and data["models"] == ["stage1", "KT"]
    labels = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert np.count_nonzero(labels) == 41 * 31 * 11


# ---------------------------------------------------------------- batch


def test_batch_reports_failures_and_resumes(files, tmp_path: Path, capsys) -> None:
    cases, results = tmp_path / "cases", tmp_path / "results"
    cases.mkdir()
    (cases / "good.nii.gz").write_bytes(files["ct"].read_bytes())
    (cases / "bad.nii.gz").write_text("not an image\n", encoding="utf-8")
    code, stdout, _ = run(capsys, "batch", cases, results, *model_args(files, "json"))
    assert code == 1
    rows = {row["case"]: row for row in csv.DictReader(open(results / "summary.csv", encoding="utf-8"))}
    assert rows["good"]["status"] == "ok" and float(rows["good"]["kidney_ml"]) > 0
    assert rows["bad"]["status"] == "failed" and "cannot read image" in rows["bad"]["error"]
    assert nib.load(results / "good.nii.gz").shape == (96, 64, 16)
    assert "measurements" in json.loads((results / "good.json").read_text(encoding="utf-8"))
    assert not (results / "bad.nii.gz").exists()
    no_leftovers(results)
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["model"] for e in events[:-1]] == ["bad", "good"] and events[-1]["type"] == "done"

    before = (results / "good.nii.gz").stat().st_mtime_ns
    code, _, _ = run(capsys, "batch", cases, results, "--resume", *model_args(files))
    assert code == 1  # the bad case still fails
    rows = {row["case"]: row for row in csv.DictReader(open(results / "summary.csv", encoding="utf-8"))}
    assert rows["good"]["status"] == "skipped (done)" and rows["bad"]["status"] == "failed"
    assert (results / "good.nii.gz").stat().st_mtime_ns == before


def test_batch_reports_a_failed_write_for_its_case_and_goes_on(files, tmp_path: Path, capsys, monkeypatch) -> None:
    from KidneyTumorSegLib.cli import batch

    cases, results = tmp_path / "cases", tmp_path / "results"
    cases.mkdir()
    for name in "abc":
        (cases / f"{name}.nii.gz").write_bytes(files["ct"].read_bytes())
    write = batch.write_label_map

    def write_failing_for_b(path, *rest, **options):
        if Path(path).name == "b.nii.gz":
            raise OSError("No space left on device")
        return write(path, *rest, **options)

    monkeypatch.setattr(batch, "write_label_map", write_failing_for_b)
    code, _, _ = run(capsys, "batch", cases, results, *model_args(files))
    assert code == 1
    rows = list(csv.DictReader(open(results / "summary.csv", encoding="utf-8")))
    assert [(r["case"], r["status"]) for r in rows] == [("a", "ok"), ("b", "failed"), ("c", "ok")]
    assert rows[1]["error"] == "No space left on device"
    assert sorted(p.name for p in results.glob("*.nii.gz")) == ["a.nii.gz", "c.nii.gz"]
    assert not (results / "b.json").exists()
    no_leftovers(results)


def test_batch_of_an_empty_folder_fails(files, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "batch", tmp_path, tmp_path / "out", *model_args(files))
    assert code == 1 and "no images found" in err


# ---------------------------------------------------------------- evaluate


def _label_map(seed: int) -> np.ndarray:
    labels = np.zeros((20, 30, 40), np.uint8)
    rng = np.random.default_rng(seed)
    z, y, x = rng.integers(2, 6, 3)
    labels[z:z + 10, y:y + 15, x:x + 20] = 1
    labels[z + 2:z + 6, y + 3:y + 8, x + 4:x + 10] = 2
    return labels


def test_evaluate_two_files(tmp_path: Path, capsys) -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    predicted, truth = _label_map(1), _label_map(2)
    write_nifti(tmp_path / "pred.nii.gz", predicted, affine)
    write_nifti(tmp_path / "truth.nii.gz", truth, affine)
    code, out, _ = run(capsys, "evaluate", tmp_path / "pred.nii.gz", tmp_path / "truth.nii.gz", "--json")
    assert code == 0
    data = json.loads(out)
    expected = kits_dice(predicted, truth)
    assert data["kidney_dice"] == pytest.approx(expected["kidney_dice"]) and data["tumor_dice"] == pytest.approx(expected["tumor_dice"])
    assert data["mean_dice"] == pytest.approx((expected["kidney_dice"] + expected["tumor_dice"]) / 2)
    assert len(data["cases"]) == 1 and data["cases"][0]["case"] == "pred.nii.gz"
    assert {"kidney_surface_dice", "tumor_hd95_mm"} <= set(data["cases"][0])
    code, table, _ = run(capsys, "evaluate", tmp_path / "pred.nii.gz", tmp_path / "truth.nii.gz")
    assert code == 0 and table.splitlines()[-1].startswith("mean")


def test_evaluate_two_folders(tmp_path: Path, capsys) -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    predictions, truths = tmp_path / "pred", tmp_path / "truth"
    predictions.mkdir()
    expected = {}
    for number, case in enumerate(("case_00001", "case_00002")):
        predicted, truth = _label_map(10 + number), _label_map(20 + number)
        write_nifti(predictions / f"{case}.nii.gz", predicted, affine)  # a folder of files ...
        (truths / case).mkdir(parents=True)
        write_nifti(truths / case / "segmentation.nii.gz", truth, affine)  # ... against KiTS19 case folders
        expected[case] = kits_dice(predicted, truth)
    write_nifti(predictions / "unmatched.nii.gz", _label_map(0), affine)
    code, out, _ = run(capsys, "evaluate", predictions, truths, "--json")
    assert code == 0
    data = json.loads(out)
    assert [row["case"] for row in data["cases"]] == list(expected)
    for row in data["cases"]:
        assert row["kidney_dice"] == pytest.approx(expected[row["case"]]["kidney_dice"])
        assert row["tumor_dice"] == pytest.approx(expected[row["case"]]["tumor_dice"])
    assert data["kidney_dice"] == pytest.approx(np.mean([e["kidney_dice"] for e in expected.values()]))
    assert data["tumor_dice"] == pytest.approx(np.mean([e["tumor_dice"] for e in expected.values()]))


def test_evaluate_refuses_mismatched_shapes(tmp_path: Path, capsys) -> None:
    write_nifti(tmp_path / "a.nii.gz", _label_map(1), np.eye(4))
    write_nifti(tmp_path / "b.nii.gz", _label_map(1)[:, :, :-1], np.eye(4))
    code, _, err = run(capsys, "evaluate", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    assert code == 1 and "differs from the truth" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- end to end


def test_exit_code_and_stderr_of_a_real_process(files, tmp_path: Path) -> None:
    """One real process: a refused bundle ends with exit code 1 and one line on stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "KidneyTumorSeg"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "KidneyTumorSegLib.cli.main", "segment", str(files["ct"]), "-o", str(tmp_path / "out.nii.gz"),
         "--bundle", str(tmp_path / "no-bundle"), "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert process.returncode == 1
    assert process.stderr.splitlines() == [f"kidneytumorseg: error: {tmp_path / 'no-bundle'}: model bundle folder not found"]
    assert process.stdout == ""
    assert list(tmp_path.iterdir()) == []
