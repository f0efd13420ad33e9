"""The `kidneytumorseg` command line, in process (fast) and once as a real subprocess.

The bundle holds tiny networks whose stage 1 marks the whole volume and fixed landmark points,
and whose KT and K1 mark everything: every box below is then known exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from KidneyTumorSegLib.cli.main import build_parser
from KidneyTumorSegLib.measurements import measure
from KidneyTumorSegLib.metrics import kits_dice
from KidneyTumorSegLib.report import rounded
from KidneyTumorSegLib.stage1 import LANDMARK_NAMES
from cli_helpers import REPO, cli_files, floats, model_args, no_leftovers, run
from synthetic_cases import write_nifti

torch.set_num_threads(1)

# The crop on the RAS input (i = 95 - x, j = 63 - y, k = 15 - z of the working frame): the
# landmark box x 0..23, y 0..3 grown by 64 voxels, the whole z range.
EXPECTED_CROP_IJK = [[8, 95], [0, 63], [0, 15]]
FULL_IJK = [[0, 95], [0, 63], [0, 15]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cli_files(tmp_path_factory.mktemp("cli"))


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[], ["segment"], ["locate"], ["batch"], ["evaluate"], ["demo"]])
def test_help_of_every_command(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kidneytumorseg")


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    """Every option and positional of ``parser`` and its subcommands, as (command, action)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(name, a) for _, a in _actions(sub)]
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            found.append((parser.prog, action))
    return found


def test_every_option_and_positional_has_help_with_its_default() -> None:
    actions = _actions(build_parser())
    assert {command for command, _ in actions} >= {"segment", "locate", "batch", "summarize", "evaluate", "demo"}
    for command, action in actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"{command} {name}: no help"
        if action.option_strings and not action.required:
            assert "default" in action.help, f"{command} {name}: the help states no default"


@pytest.mark.parametrize("command", [[], ["segment"], ["batch"]])
def test_help_says_what_the_labels_mean(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "1 = kidney" in text and "2 = tumor" in text


def test_locate_takes_only_the_options_it_uses(capsys: pytest.CaptureFixture) -> None:
    from KidneyTumorSegLib.cli.segment import method_settings

    for option in (["--strict"], ["--min-tumor-pixels", "10"]):  # they change labels; locate writes none
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["locate", "in.nii.gz", "-o", "boxes.json", *option])
        assert exit_.value.code == 2 and f"unrecognized arguments: {option[0]}" in capsys.readouterr().err
    settings = method_settings(build_parser().parse_args(["locate", "in.nii.gz", "-o", "b.json", "--keep-all-components"]))
    assert settings.stage1.support_components is False  # the refinement keeps every kidney region


def test_the_command_lines_of_the_slicer_module_parse() -> None:
    from KidneyTumorSegLib.process import CliCommand, RunOptions

    command, options = CliCommand(), RunOptions(bundle="b", members=("KT",), min_tumor_pixels=32, keep_all_components=True)
    for argv in (command.locate(Path("ct.nii.gz"), Path("boxes.json"), options),
                 command.segment(Path("ct.nii.gz"), Path("seg.nii.gz"), options, Path("boxes.json"), Path("r.json")),
                 command.batch(Path("cases"), Path("results"), options)):
        args = build_parser().parse_args(argv[3:])  # past "python -m KidneyTumorSegLib.cli.main"
        assert args.keep_all_components and args.members == "KT" and getattr(args, "min_tumor_pixels", 32) == 32


# ---------------------------------------------------------------- segment and locate


@pytest.mark.parametrize("flags, support, kt_only, outside", [([], True, 1, "trim"), (["--keep-all-components"], False, 1, "trim"),
                                                             (["--strict"], True, 0, "trim"),
                                                             (["--support-outside", "drop"], True, 1, "drop")])
def test_method_options_select_the_settings(flags: list[str], support: bool, kt_only: int, outside: str) -> None:
    from KidneyTumorSegLib.cli.segment import method_settings

    settings = method_settings(build_parser().parse_args(["segment", "in.nii.gz", "-o", "out.nii.gz", *flags]))
    assert settings.stage1.support_components is support and settings.fusion.kt_only_label == kt_only
    assert settings.stage1.support_outside == outside
    locate_flags = [flag for flag in flags if flag != "--strict"]  # locate labels nothing: no --strict
    located = method_settings(build_parser().parse_args(["locate", "in.nii.gz", "-o", "b.json", *locate_flags]))
    assert located.stage1.support_outside == outside


def test_segment_writes_labels_report_and_qa_with_json_progress(files, tmp_path: Path, capsys) -> None:
    out, report, qa = tmp_path / "seg.nii.gz", tmp_path / "report.json", tmp_path / "qa.png"
    uncertainty, review_mask = tmp_path / "uncertainty.nii.gz", tmp_path / "review.nii.gz"
    code, stdout, _ = run(capsys, "segment", files["ct"], "-o", out, "--report", report, "--qa", qa, "--uncertainty", uncertainty,
                          "--review-mask", review_mask, *model_args(files, "json"))
    assert code == 0
    source, written = nib.load(files["ct"]), nib.load(out)
    assert written.shape == source.shape == (96, 64, 16)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    assert qa.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _png_size(qa) == (1800, 600)  # three panels: axial, coronal, uncertainty
    no_leftovers(tmp_path)
    # The map and the disputed voxels cover the input voxels near the crop only, with their own
    # affine: the crop grown by one voxel (the input grid is the working grid, reordered), clipped.
    (i0, i1), (j0, j1), (k0, k1) = EXPECTED_CROP_IJK
    near = [(max(0, a - 1), min(n - 1, b + 1)) for (a, b), n in zip(EXPECTED_CROP_IJK, source.shape)]
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in near]
    doubt, disputed = nib.load(uncertainty), nib.load(review_mask)
    assert doubt.shape == disputed.shape == tuple(b - a + 1 for a, b in near) == (i1 - i0 + 2, 64, 16)
    assert doubt.get_data_dtype() == disputed.get_data_dtype() == np.uint8
    np.testing.assert_allclose(doubt.affine, source.affine @ shift, atol=1e-5)
    np.testing.assert_allclose(disputed.affine, source.affine @ shift, atol=1e-5)
    doubt, disputed = np.asarray(doubt.dataobj), np.asarray(disputed.dataobj)
    assert not doubt[0].any()  # the grown voxel outside the crop: nothing was examined there
    assert doubt.max() > 0  # the lone tumor model (random weights) is unsure inside
    # the disputed voxels are those at u >= 0.45, decided before the map was rounded to 255 levels
    assert set(np.unique(disputed)) <= {0, 1} and disputed.any()
    assert doubt[disputed == 1].min() >= 114 and doubt[disputed == 0].max() <= 115

    data = json.loads(report.read_text(encoding="utf-8"))
    assert {"input", "bundle", "models", "crop", "stage1", "measurements", "seconds", "peak_rss_mb"} <= set(data)
    assert data["models"] == ["stage1", "KT", "T-vnet"]  # stage 1 fills its box: K1 has nothing to refine
    assert data["crop"]["ijk"] == EXPECTED_CROP_IJK
    assert np.array(data["crop"]["ras"]).shape == (2, 3)
    assert set(data["stage1"]["boxes"]) == {"segmentation", "landmarks", "chosen", "refined", "crop"}
    assert data["stage1"]["boxes"]["crop"] == data["crop"]
    assert data["stage1"]["boxes"]["segmentation"]["ijk"] == FULL_IJK
    assert data["measurements"] == rounded(measure(labels, written.affine))
    assert data["case"] == "ct" and data["image"] == str(files["ct"])
    assert all(round(v, 3) == v for v in floats(data))  # every figure rounded to 3 places
    assert {"kidney_ml", "tumor_ml", "tumor_count", "tumors", "largest_tumor_diameter_mm"} <= set(data["measurements"])
    assert data["measurements"]["kidney_ml"]["total"] > 0  # KT marks the whole crop
    sides = data["kidneys"]
    assert set(sides) == {"left", "right"} and all(side["kidney_found"] for side in sides.values())
    assert all(side["kidney_ml"] == data["measurements"]["kidney_ml"][name] for name, side in sides.items())
    assert data["warnings"] == []
    assert {"total", "prepare", "stage1", "KT", "T-vnet", "fusion"} <= set(data["seconds"]) and "K1" not in data["seconds"]
    assert "no refinement needed" in data["stage1"]["decisions"][-1]
    review = data["uncertainty"]
    assert isinstance(data["review"], bool) and data["review"] is review["review"]
    assert 0.0 <= review["score"] <= 1.0 and review["disputed_ml"] >= 0.0
    assert (review["disputed_threshold"], review["score_threshold"]) == (0.45, 0.1)
    disputed_ml = np.count_nonzero(disputed) * float(np.prod(source.header.get_zooms())) / 1000
    assert review["disputed_ml"] == pytest.approx(disputed_ml, rel=0.05, abs=0.05)  # same grid up to the linear fade

    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1] == {"type": "done", "output": str(out)}
    progress = events[:-1]
    assert all(e["type"] == "progress" and 0.0 <= e["fraction"] <= 1.0 for e in progress)
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # In the order they run: stage 1, then KT and the tumor model.
    order = list(dict.fromkeys((e["stage"], e["model"]) for e in progress))
    assert order == [("stage1", "stage1"), ("stage2", "KT"), ("stage2", "T-vnet")]


@pytest.mark.parametrize("command", ["segment", "locate", "batch"])
def test_a_partial_bundle_is_refused_unless_allowed(files, tmp_path: Path, capsys, caplog, command: str) -> None:
    """The test bundle holds 4 of the 12 models: refused with one line naming the 8 it lacks, no
    output; with --allow-partial it runs and the report records what was missing."""
    out = tmp_path / ("results" if command == "batch" else "out.json" if command == "locate" else "seg.nii.gz")
    target = [files["ct"].parent, out] if command == "batch" else [files["ct"], "-o", out]
    argv = [a for a in model_args(files) if a != "--allow-partial"]
    code, _, err = run(capsys, command, *target, *argv)
    missing = "K2, T-unet, T2D-ax-dice, T2D-co-dice, T2D-sa-dice, T2D-ax-bce, T2D-co-bce, T2D-sa-bce"
    assert code != 0 and f"lacks 8 of the 12 models ({missing}); give --allow-partial" in err
    assert len([line for line in err.splitlines() if "error" in line.lower()]) == 1
    assert not out.exists()
    if command == "segment":
        report = tmp_path / "report.json"
        code, _, err = run(capsys, command, *target, "--report", report, *model_args(files))
        assert code == 0 and f"lacks {missing}: the ensemble runs without them" in caplog.text
        bundle = json.loads(report.read_text(encoding="utf-8"))["bundle"]
        assert bundle["partial"] is True and bundle["missing_roles"] == missing.split(", ")


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
    assert set(located) == {"note", "boxes", "landmarks", "decisions"}
    assert "'ijk'" in located["note"] and "'ras'" in located["note"] and "delete the other" in located["note"]
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


def test_a_box_whose_ijk_was_edited_while_its_ras_stayed_is_refused(files, tmp_path: Path, capsys) -> None:
    boxes = tmp_path / "boxes.json"
    assert run(capsys, "locate", files["ct"], "-o", boxes, *model_args(files))[0] == 0
    located = json.loads(boxes.read_text(encoding="utf-8"))
    crop = located["boxes"]["crop"]
    crop["ijk"] = [[20, 60], [10, 40], [2, 12]]  # shrunk by voxel index; 'ras' still the old box
    boxes.write_text(json.dumps(located), encoding="utf-8")
    out = tmp_path / "seg.nii.gz"
    code, _, err = run(capsys, "segment", files["ct"], "-o", out, "--box", boxes, *model_args(files))
    assert code == 1 and len(err.splitlines()) == 1
    assert f"'ijk' {crop['ijk']} and 'ras' {crop['ras']} disagree" in err and "delete the one you did not edit" in err
    assert not out.exists()
    del crop["ras"]  # as the note says: keep the edited one
    boxes.write_text(json.dumps(located), encoding="utf-8")
    report = tmp_path / "report.json"
    code, _, _ = run(capsys, "segment", files["ct"], "-o", out, "--report", report, "--box", boxes, *model_args(files))
    assert code == 0 and json.loads(report.read_text(encoding="utf-8"))["crop"]["ijk"] == [[20, 60], [10, 40], [2, 12]]


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


def test_an_ijk_box_reaching_outside_is_clipped_with_a_warning_naming_it(files, tmp_path: Path, capsys, caplog) -> None:
    box, report = tmp_path / "box.json", tmp_path / "report.json"
    box.write_text(json.dumps({"ijk": [[20, 60], [-4, 40], [2, 99]]}), encoding="utf-8")
    code, _, _ = run(capsys, "segment", files["ct"], "-o", tmp_path / "seg.nii.gz", "--report", report, "--box", box,
                     "--members", "KT", *model_args(files))
    shape = " × ".join(map(str, nib.load(files["ct"]).shape))
    assert code == 0 and (f"--box {box}: the crop box's 'ijk' [[20, 60], [-4, 40], [2, 99]] reaches outside the image "
                          f"({shape} voxels): clipped to [[20, 60], [0, 40], [2, 15]]") in caplog.text
    crop = json.loads(report.read_text(encoding="utf-8"))["crop"]
    assert crop["ijk"] == [[20, 60], [0, 40], [2, 15]] and crop["clipped_from"] == [[20, 60], [-4, 40], [2, 99]]


def test_the_demo_replaces_its_own_earlier_outputs_and_nothing_else(files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "kidneytumorseg-demo"
    argv = ["demo", "--out", out, "--members", "KT", *model_args(files)]
    assert run(capsys, *argv)[0] == 0
    names = ["qa.png", "report.json", "segmentation.nii.gz", "uncertainty.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == names
    before = {name: (out / name).stat().st_mtime_ns for name in names}
    code, stdout, err = run(capsys, *argv)  # the README's command, a second time
    assert code == 0, err
    assert all((out / name).stat().st_mtime_ns > before[name] for name in names) and "dice" in json.loads(stdout)
    assert sorted(p.name for p in out.iterdir()) == names
    (out / "report.json").write_text('{"mine": true}', encoding="utf-8")  # not the demo's any more
    code, _, err = run(capsys, *argv)
    assert code == 1 and "already exists" in err and (out / "report.json").read_text(encoding="utf-8") == '{"mine": true}'


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
    called, true_tumor = predicted == 2, truth == 2
    assert data["tumor_precision_pooled"] == pytest.approx((called & true_tumor).sum() / called.sum())
    assert data["cases"][0]["healthy_called_tumor"] == pytest.approx((called & (truth == 1)).sum() / (truth == 1).sum())
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
