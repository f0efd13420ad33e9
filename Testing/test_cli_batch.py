"""`batch` and `summarize`: no result is ever lost or replaced unasked, shards share one folder.

The bundle holds tiny steered networks (cli_helpers): a case takes well under a second.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from KidneyTumorSegLib.cli.exits import EXIT_CASES_FAILED, EXIT_FAILURE
from KidneyTumorSegLib.cli.shards import Shard, parse_shard, shard_device, shard_from
from cli_helpers import REPO, WORKING_SHAPE, cli_files, model_args, no_leftovers, run
from synthetic_cases import image_in, phantom_ct, write_nifti

torch.set_num_threads(1)

SHARD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                   "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")
REPORT_FIGURES = ("case", "input", "bundle", "models", "crop", "stage1", "measurements")  # all but timings and memory


@pytest.fixture(autouse=True)
def one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs are never a shard, whatever launched pytest."""
    for name in SHARD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cli_files(tmp_path_factory.mktemp("batch"))


def case_folder(folder: Path, files: dict[str, Path], good: tuple[str, ...], bad: tuple[str, ...] = ()) -> Path:
    """Copies of the phantom CT named ``good``, text files named ``bad``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in good:
        (folder / f"{name}.nii.gz").write_bytes(files["ct"].read_bytes())
    for name in bad:
        (folder / f"{name}.nii.gz").write_text("not an image\n", encoding="utf-8")
    return folder


def summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def summary_of(text: bytes) -> dict[str, dict[str, str]]:
    return {row["case"]: row for row in csv.DictReader(io.StringIO(text.decode("utf-8"), newline=""))}


def stamps(folder: Path) -> dict[str, int]:
    """Modification time of every file in ``folder``, by name."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# ---------------------------------------------------------------- what a batch writes


def test_each_case_gets_the_segment_report_and_a_failure_its_record(files, tmp_path: Path, capsys, caplog) -> None:
    cases = case_folder(tmp_path / "cases", files, ("good",), ("bad",))
    results = tmp_path / "results"
    code, stdout, _ = run(capsys, "batch", cases, results, *model_args(files, "json"))
    assert code == EXIT_CASES_FAILED and "bad: failed: " in caplog.text and "cannot read image" in caplog.text
    assert sorted(p.name for p in results.iterdir()) == ["bad.failed.json", "good.json", "good.nii.gz", "summary.csv"]
    assert nib.load(results / "good.nii.gz").shape == (96, 64, 16)
    rows = summary(results / "summary.csv")
    assert rows["good"]["status"] == "ok" and float(rows["good"]["kidney_ml"]) > 0 and float(rows["good"]["seconds"]) > 0
    assert rows["bad"]["status"] == "failed" and "cannot read image" in rows["bad"]["error"]
    report = json.loads((results / "good.json").read_text(encoding="utf-8"))
    for side in ("left", "right"):  # per kidney, as in the report
        found = report["kidneys"][side]
        assert rows["good"][f"{side}_kidney_found"] == str(found["kidney_found"])
        assert float(rows["good"][f"{side}_kidney_ml"]) == pytest.approx(found["kidney_ml"], abs=0.01)
        assert float(rows["good"][f"{side}_tumor_ml"]) == pytest.approx(found["tumor_ml"], abs=0.01)
    assert rows["good"]["warnings"] == "; ".join(report["warnings"])
    failure = json.loads((results / "bad.failed.json").read_text(encoding="utf-8"))
    assert failure["case"] == "bad" and failure["image"] == str(cases / "bad.nii.gz") and failure["error"] == rows["bad"]["error"]
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["model"] for e in events[:-1]] == ["bad", "good"] and events[-1] == {"type": "done", "output": str(results)}

    batch_report = json.loads((results / "good.json").read_text(encoding="utf-8"))
    code, _, _ = run(capsys, "segment", cases / "good.nii.gz", "-o", tmp_path / "seg.nii.gz", "--report",
                     tmp_path / "report.json", *model_args(files))
    segment_report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert code == 0 and set(batch_report) == set(segment_report)  # the full report ...
    assert {k: batch_report[k] for k in REPORT_FIGURES} == {k: segment_report[k] for k in REPORT_FIGURES}
    assert set(batch_report["seconds"]) == set(segment_report["seconds"])
    assert re.search(r"\.\d{4,}", (results / "good.json").read_text(encoding="utf-8")) is None  # ... rounded
    no_leftovers(results)


def test_a_failed_write_is_recorded_for_its_case_and_the_batch_goes_on(files, tmp_path: Path, capsys, monkeypatch) -> None:
    from KidneyTumorSegLib.cli import segment

    cases = case_folder(tmp_path / "cases", files, ("a", "b", "c"))
    results = tmp_path / "results"
    write = segment.write_label_map

    def write_failing_for_b(path, *rest, **options):
        if Path(path).name.startswith(".b.nii.gz."):  # the temporary file of b.nii.gz
            raise OSError("No space left on device")
        return write(path, *rest, **options)

    monkeypatch.setattr(segment, "write_label_map", write_failing_for_b)
    code, _, _ = run(capsys, "batch", cases, results, *model_args(files))
    assert code == EXIT_CASES_FAILED
    rows = summary(results / "summary.csv")
    assert [(r["case"], r["status"]) for r in rows.values()] == [("a", "ok"), ("b", "failed"), ("c", "ok")]
    assert rows["b"]["error"] == "No space left on device"
    assert sorted(p.name for p in results.iterdir()) == ["a.json", "a.nii.gz", "b.failed.json", "c.json", "c.nii.gz",
                                                         "summary.csv"]  # b: neither label map nor report


def test_batch_writes_each_uncertainty_map_as_segment_does(files, tmp_path: Path, capsys) -> None:
    cases = case_folder(tmp_path / "cases", files, ("a", "b"))
    results = tmp_path / "results"
    assert run(capsys, "batch", cases, results, "--uncertainty", *model_args(files))[0] == 0
    assert sorted(p.name for p in results.glob("*.uncertainty.nii.gz")) == ["a.uncertainty.nii.gz", "b.uncertainty.nii.gz"]
    alone = tmp_path / "alone.nii.gz"
    assert run(capsys, "segment", cases / "a.nii.gz", "-o", tmp_path / "labels.nii.gz", "--uncertainty", alone,
               *model_args(files))[0] == 0
    doubt = nib.load(results / "a.uncertainty.nii.gz")
    assert doubt.shape == nib.load(alone).shape and np.allclose(doubt.affine, nib.load(alone).affine)
    values = np.asarray(doubt.dataobj)
    assert np.array_equal(values, np.asarray(nib.load(alone).dataobj)) and values.max() > 0 and values.min() >= 0
    assert len(list(results.glob("*.nii.gz"))) == 4  # and nothing without the option
    assert run(capsys, "batch", cases, tmp_path / "plain", *model_args(files))[0] == 0
    assert not list((tmp_path / "plain").glob("*.uncertainty.nii.gz"))


def test_batch_of_an_empty_folder_fails(files, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "batch", tmp_path, tmp_path / "out", *model_args(files))
    assert code == EXIT_FAILURE and "no images found" in err


# ---------------------------------------------------------------- nothing lost, nothing replaced unasked


def test_rerun_resume_and_overwrite(files, tmp_path: Path, capsys, caplog) -> None:
    cases = case_folder(tmp_path / "cases", files, ("good",), ("bad",))
    results = tmp_path / "results"
    assert run(capsys, "batch", cases, results, *model_args(files))[0] == EXIT_CASES_FAILED
    first_summary = (results / "summary.csv").read_bytes()
    before = stamps(results)

    code, _, err = run(capsys, "batch", cases, results, *model_args(files))  # a plain rerun is refused
    assert code == EXIT_FAILURE and err.splitlines() == [
        f"kidneytumorseg: error: {results}: already holds results of 1 of these 2 cases (good): "
        "--resume runs only the others, --overwrite runs them all again"]
    assert stamps(results) == before

    code, _, _ = run(capsys, "batch", cases, results, "--resume", *model_args(files))
    assert code == EXIT_CASES_FAILED  # the bad case failed again, alike: the summary has the same rows
    assert stamps(results).keys() == before.keys() and (results / "summary.csv").read_bytes() == first_summary
    assert stamps(results)["good.nii.gz"] == before["good.nii.gz"] and stamps(results)["good.json"] == before["good.json"]

    case_folder(cases, files, ("bad",))  # the bad case is fixed
    code, _, _ = run(capsys, "batch", cases, results, "--resume", *model_args(files))
    assert code == 0
    rows = summary(results / "summary.csv")  # the folder's current truth: every case, the earlier figures too
    assert [(case, row["status"]) for case, row in rows.items()] == [("bad", "ok"), ("good", "ok")]
    assert rows["good"] == summary_of(first_summary)["good"]
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv"]  # a mended failure keeps nothing
    assert not (results / "bad.failed.json").exists()  # the failure is over

    written = (results / "summary.csv").read_bytes()
    assert run(capsys, "summarize", results)[0] == 0 and (results / "summary.csv").read_bytes() == written  # no repeat
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv"]

    before = stamps(results)
    assert run(capsys, "batch", cases, results, "--overwrite", *model_args(files))[0] == 0
    after = stamps(results)
    assert all(after[name] > before[name] for name in ("good.nii.gz", "good.json", "bad.nii.gz", "bad.json"))
    no_leftovers(results)


def test_the_summary_is_rebuilt_and_the_earlier_kept_only_when_figures_changed(files, tmp_path: Path, capsys, caplog) -> None:
    cases = case_folder(tmp_path / "cases", files, ("a", "b", "c"))
    results = tmp_path / "results"
    assert run(capsys, "batch", cases, results, *model_args(files))[0] == 0
    first = (results / "summary.csv").read_bytes()

    report = json.loads((results / "a.json").read_text(encoding="utf-8"))
    report["seconds"]["total"] += 5.0  # a rerun's timing alone: no figure changed
    (results / "a.json").write_text(json.dumps(report), encoding="utf-8")
    assert run(capsys, "summarize", results)[0] == 0
    assert summary(results / "summary.csv")["a"]["seconds"] == str(report["seconds"]["total"])
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv"]

    timed = (results / "summary.csv").read_bytes()
    report["measurements"]["kidney_ml"]["total"] += 10.0  # a's figures changed ...
    (results / "a.json").write_text(json.dumps(report), encoding="utf-8")
    (results / "c.json").unlink()  # ... and c's record is gone
    (results / "c.nii.gz").unlink()
    assert run(capsys, "summarize", results)[0] == 0
    assert "kept it as summary.earlier-1.csv" in caplog.text
    assert (results / "summary.earlier-1.csv").read_bytes() == timed  # the earlier summary, whole
    rows = summary(results / "summary.csv")  # the folder's current truth
    assert list(rows) == ["a", "b"] and float(rows["a"]["kidney_ml"]) == round(float(summary_of(first)["a"]["kidney_ml"]) + 10, 2)
    assert run(capsys, "summarize", results)[0] == 0  # nothing changed since: nothing more kept
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv", "summary.earlier-1.csv"]

    report["measurements"]["kidney_ml"]["total"] += 1.0
    (results / "a.json").write_text(json.dumps(report), encoding="utf-8")
    assert run(capsys, "summarize", results, "--overwrite")[0] == 0  # asked not to keep it
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv", "summary.earlier-1.csv"]

    rows = list(summary(results / "summary.csv").values())
    rows[1]["note"] = "look again"  # a column added by hand, to b's row
    with open(results / "summary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "note"])
        writer.writeheader()
        writer.writerows(rows)
    noted = (results / "summary.csv").read_bytes()
    assert run(capsys, "summarize", results)[0] == 0
    assert (results / "summary.earlier-2.csv").read_bytes() == noted
    assert rows[1]["case"] == "b" and "note" not in summary(results / "summary.csv")["b"]
    no_leftovers(results)


def test_colliding_case_names_are_refused_before_any_work(files, tmp_path: Path, capsys) -> None:
    cases = case_folder(tmp_path / "cases", files, ("case_a", "Case_B", "case_b", "c"))
    (cases / "case_a.nii").write_bytes(nib.load(files["ct"]).to_bytes())
    (cases / "case_a").mkdir()
    (cases / "case_a" / "imaging.nii.gz").write_bytes(files["ct"].read_bytes())
    code, out, err = run(capsys, "batch", cases, tmp_path / "results", *model_args(files, "json"))
    assert code == EXIT_FAILURE and out == "" and err.splitlines() == [
        f"kidneytumorseg: error: 2 case name(s) given by more than one input, whose results would take one name: "
        f"{cases / 'Case_B.nii.gz'} and {cases / 'case_b.nii.gz'}; {cases / 'case_a'  / 'imaging.nii.gz'} and "
        f"{cases / 'case_a.nii'} and {cases / 'case_a.nii.gz'}; rename or move all but one of each"]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("option", ["--overwrite", "--resume"])
def test_a_batch_into_its_own_input_folder_never_replaces_an_input(option: str, files, tmp_path: Path, capsys) -> None:
    cases = case_folder(tmp_path / "cases", files, ("a", "b"))
    linked = tmp_path / "results"
    linked.mkdir()
    (linked / "b.nii.gz").symlink_to(cases / "b.nii.gz")  # an output that is a link to an input
    original = files["ct"].read_bytes()
    for out, name in ((cases, "a.nii.gz"), (linked, "b.nii.gz")):
        code, _, err = run(capsys, "batch", cases, out, option, *model_args(files))
        assert code == EXIT_FAILURE and len(err.splitlines()) == 1 and f"{out / name}: is the input" in err
        assert sorted(p.name for p in cases.iterdir()) == ["a.nii.gz", "b.nii.gz"]
        assert all((cases / n).read_bytes() == original for n in ("a.nii.gz", "b.nii.gz"))
    assert [p.name for p in linked.iterdir()] == ["b.nii.gz"]


def test_summarize_needs_case_records(tmp_path: Path, capsys) -> None:
    (tmp_path / "boxes.json").write_text('{"boxes": {}}', encoding="utf-8")  # a JSON that is no case record
    code, _, err = run(capsys, "summarize", tmp_path)
    assert code == EXIT_FAILURE and "no case records" in err and not (tmp_path / "summary.csv").exists()


# ---------------------------------------------------------------- shards


def test_shard_option_and_environment() -> None:
    names = [f"case_{n}" for n in range(7)]
    assert parse_shard("1/3").take(names) == ["case_1", "case_4"]
    assert shard_from(None, {}) == Shard() and Shard().take(names) == names
    torchrun = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert (shard_from(None, torchrun).index, shard_from(None, torchrun).count) == (2, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2"}
    assert (shard_from(None, slurm).index, shard_from(None, slurm).count) == (2, 3)  # tasks 1, 3, 5
    assert (shard_from(None, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}).index) == 0
    assert shard_from("0/2", {**torchrun, **slurm}).source == "--shard"  # the option wins, then torchrun
    assert shard_from(None, {**torchrun, **slurm}).source.startswith("torchrun")
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="RANK"):
        shard_from(None, {"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"shards count from 0, so the last of 4 is 3/4; in a Slurm array leave --shard out"):
        parse_shard("4/4")


@pytest.mark.parametrize("ids", [range(0, 8), range(1, 9), range(5, 13), range(1, 16, 2)])
def test_a_slurm_array_gives_shards_from_0_whatever_its_first_id(ids: range) -> None:
    """``sbatch --array=0-7``, ``1-8``, ``5-12``, ``1-15:2``: Slurm sets these variables in each task."""
    shards = []
    for task in ids:
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(len(ids)), "SLURM_ARRAY_TASK_MIN": str(ids[0]),
               "SLURM_ARRAY_TASK_MAX": str(ids[-1]), "SLURM_ARRAY_TASK_STEP": str(ids.step)}
        shards.append(shard_from(None, env))
        del env["SLURM_ARRAY_TASK_MIN"]  # an environment without it: the first id follows from the last
        assert shard_from(None, env) == shards[-1]
    assert [(s.index, s.count) for s in shards] == [(k, 8) for k in range(8)]
    names = [f"case_{n:02d}" for n in range(19)]
    assert sorted(name for s in shards for name in s.take(names)) == names  # every case exactly once


@pytest.mark.parametrize("task, minimum, maximum, count", [("5", "1", "5", "3"), ("9", "1", "8", "8"), ("0", "1", "8", "8")])
def test_a_slurm_task_whose_place_is_unknown_is_refused(task: str, minimum: str, maximum: str, count: str) -> None:
    env = {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": count, "SLURM_ARRAY_TASK_MIN": minimum,
           "SLURM_ARRAY_TASK_MAX": maximum, "SLURM_ARRAY_TASK_STEP": "1"}  # --array=1,2,5; ids outside 1-8
    with pytest.raises(ValueError, match=f"Slurm array task {task} is not one of {count} evenly spaced ids .*--shard K/N"):
        shard_from(None, env)


def test_help_says_shards_count_from_0_and_slurm_ids_may_start_at_1(capsys) -> None:
    from KidneyTumorSegLib.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "shards count from 0: --shard 0/2 and --shard 1/2" in text and "--array=0-7 and --array=1-8 both work" in text


def test_device_auto_under_torchrun_takes_the_local_gpu() -> None:
    assert shard_device("auto", {"LOCAL_RANK": "1"}, cuda_devices=2) == "cuda:1"
    assert shard_device("auto", {"LOCAL_RANK": "1"}, cuda_devices=0) == "auto"  # no GPU: the CPU
    assert shard_device("auto", {}, cuda_devices=2) == "auto"
    assert shard_device("cpu", {"LOCAL_RANK": "1"}, cuda_devices=2) == "cpu"
    with pytest.raises(ValueError, match="LOCAL_RANK=2 but this node has 2 GPU"):
        shard_device("auto", {"LOCAL_RANK": "2"}, cuda_devices=2)


def test_two_processes_share_one_folder_and_the_summary_is_complete(files, tmp_path: Path, capsys) -> None:
    """Two real processes as torchrun starts them (RANK / WORLD_SIZE / LOCAL_RANK) over four cases."""
    names = ("a", "b", "c", "d")
    cases, results = case_folder(tmp_path / "cases", files, names), tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in SHARD_VARIABLES}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "KidneyTumorSeg"), str(REPO)]), OMP_NUM_THREADS="1", WORLD_SIZE="2")
    argv = [sys.executable, "-m", "KidneyTumorSegLib.cli.main", "batch", str(cases), str(results), "--members", "KT",
            *model_args(files)]
    processes = [subprocess.Popen(argv, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    ran = [re.findall(r"\[\d/\d\] (\w): ok", err) for _, err in outputs]
    assert ran == [["a", "c"], ["b", "d"]]  # every case exactly once
    assert sorted(p.name for p in results.iterdir()) == sorted(
        [f"{n}.nii.gz" for n in names] + [f"{n}.json" for n in names] + ["summary.csv"])  # the last shard's summary
    rows = summary(results / "summary.csv")
    assert list(rows) == list(names) and all(row["status"] == "ok" for row in rows.values())
    written = (results / "summary.csv").read_bytes()
    assert run(capsys, "summarize", results)[0] == 0
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv"] and (results / "summary.csv").read_bytes() == written


# ---------------------------------------------------------------- triage


def test_the_summary_holds_each_review_and_triage_puts_the_most_doubtful_first(files, tmp_path: Path, capsys) -> None:
    cases = case_folder(tmp_path / "cases", files, (), ("a",))
    for name, ct in (("b", phantom_ct(WORKING_SHAPE)), ("c", phantom_ct(WORKING_SHAPE, tumor=False)),
                     ("d", np.flip(phantom_ct(WORKING_SHAPE), 2))):
        image = image_in(np.ascontiguousarray(ct), "RAS")
        write_nifti(cases / f"{name}.nii.gz", image.array, image.affine)
    results = tmp_path / "results"
    code, _, _ = run(capsys, "batch", cases, results, "--triage", *model_args(files))
    assert code == EXIT_CASES_FAILED
    with open(results / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[-1]["case"] == "a" and rows[-1]["review_score"] == ""  # failed: no score, last
    scores = [float(r["review_score"]) for r in rows[:-1]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    for row in rows[:-1]:
        report = json.loads((results / f"{row['case']}.json").read_text(encoding="utf-8"))
        assert float(row["review_score"]) == report["review_flag"]["score"]  # the flag's score: >= 1 when flagged
        assert row["review"] == ("yes" if report["review"] else "no") and (float(row["review_score"]) >= 1) == report["review"]
        assert row["review_because"] == "; ".join(report["review_flag"]["tripped"])
        assert float(row["disputed_ml"]) == report["uncertainty"]["disputed_ml"]
    assert run(capsys, "summarize", results)[0] == EXIT_CASES_FAILED  # by case name: the same rows reordered
    assert list(summary(results / "summary.csv")) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in results.glob("summary*")) == ["summary.csv"]  # nothing kept: no figure changed


def test_triaged_puts_the_most_doubtful_first_and_unscored_rows_last() -> None:
    from KidneyTumorSegLib.cli.summary import triaged

    rows = [{"case": "x", "status": "failed"}, {"case": "y", "review_score": 0.1}, {"case": "s", "status": "ok"},
            {"case": "z", "review_score": 0.7}, {"case": "w", "review_score": 0.0}]
    assert [r["case"] for r in triaged(rows)] == ["z", "y", "w", "x", "s"]


def test_batch_writes_uncertainty_maps_that_review_lists(files, tmp_path: Path, capsys) -> None:
    from KidneyTumorSegLib.review.cases import read_cases

    cases = case_folder(tmp_path / "cases", files, ("b", "c"))
    results = tmp_path / "results"
    code, _, _ = run(capsys, "batch", cases, results, "--uncertainty", *model_args(files))
    assert code == 0
    assert sorted(p.name for p in results.iterdir()) == ["b.json", "b.nii.gz", "b.uncertainty.nii.gz", "c.json", "c.nii.gz",
                                                         "c.uncertainty.nii.gz", "summary.csv"]
    doubt = nib.load(results / "b.uncertainty.nii.gz")
    assert doubt.get_data_dtype() == np.uint8  # round(255 u) near the crop, as segment --uncertainty writes it
    assert all(d <= n for d, n in zip(doubt.shape, nib.load(results / "b.nii.gz").shape))
    assert list(summary(results / "summary.csv")) == ["b", "c"]  # the maps are no cases
    listed = read_cases(results)
    assert sorted(case.name for case in listed) == ["b", "c"]
    assert all(case.uncertainty == results / f"{case.name}.uncertainty.nii.gz" for case in listed)
    assert all(case.image == cases / f"{case.name}.nii.gz" for case in listed)
