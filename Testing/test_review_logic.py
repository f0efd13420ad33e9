"""`review`'s decision logic without a browser: the case list and its order, decisions saved
atomically and replaced with a message, reviews.csv, who may connect, ports, and the Slicer command."""
from __future__ import annotations

import csv
import json
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.mrml.volumes import image_data_array
from KidneyTumorSegLib.review.access import Access, is_loopback, plan_access
from KidneyTumorSegLib.review.cases import read_cases, review_order
from KidneyTumorSegLib.review.decisions import (DecisionFileError, decision_path, read_decision, read_decisions,
                                                resume_index, save_decision)
from KidneyTumorSegLib.review.loading import Prefetcher, load_case
from KidneyTumorSegLib.review.slicer_command import slicer_code, slicer_command
from cli_helpers import run
from review_folders import AFFINE, labels, make_batch_folder

FLAGS = {"case_a": (False, 0.05), "case_b": (True, 0.30), "case_c": (None, None), "case_d": (True, 0.60),
         "case_e": (False, 0.09)}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_batch_folder(tmp_path, FLAGS)


def test_flagged_cases_come_first_most_doubtful_first(folder: Path) -> None:
    (folder / "case_x.failed.json").write_text(json.dumps({"case": "case_x", "status": "failed", "error": "boom"}))
    (folder / "case_y.json").write_text(json.dumps(json.loads((folder / "case_a.json").read_text()) | {"case": "case_y"}))
    cases = read_cases(folder)
    # flagged by score, then unflagged by score, then reports without a review; no failed or label-less case
    assert [case.name for case in cases] == ["case_d", "case_b", "case_e", "case_a", "case_c"]
    assert [case.flagged for case in cases] == [True, True, False, False, None]
    assert review_order(list(reversed(cases))) == cases


def test_a_case_holds_its_files_and_per_side_volumes(folder: Path, tmp_path: Path) -> None:
    case = next(case for case in read_cases(folder) if case.name == "case_b")
    assert case.labels == folder / "case_b.nii.gz" and case.uncertainty == folder / "case_b.uncertainty.nii.gz"
    assert case.image == tmp_path / "images" / "case_b" / "imaging.nii.gz"
    assert case.truth == tmp_path / "images" / "case_b" / "segmentation.nii.gz"
    assert case.kidney_ml == {"left": 0.0, "right": 12.288} and case.tumor_ml == {"left": 12.288, "right": 0.0}
    assert case.crop is not None and case.crop.low == (-91.0, -75.0, -2.0)


def test_reports_without_optional_fields_are_read(folder: Path, tmp_path: Path) -> None:
    report = json.loads((folder / "case_a.json").read_text())
    del report["crop"], report["image"]
    report["measurements"]["kidney_ml"] = {"total": 3.0}  # an older report: no sides
    (folder / "case_a.json").write_text(json.dumps(report))
    case = next(case for case in read_cases(folder, images=tmp_path / "images") if case.name == "case_a")
    assert case.crop is None and case.kidney_ml == {}
    assert case.image == tmp_path / "images" / "case_a" / "imaging.nii.gz"  # found through --images


def test_loading_reads_volumes_and_dice_against_the_truth(folder: Path) -> None:
    case = read_cases(folder)[0]
    volumes = load_case(case)
    assert np.array_equal(volumes.labels.array, labels()) and volumes.ct is not None
    assert np.array_equal(image_data_array(volumes.labels.image_data), labels())  # what the label node will show
    assert np.array_equal(volumes.labels.affine, AFFINE)
    assert volumes.dice == {"kidney_dice": 1.0, "tumor_dice": 1.0}
    assert float(volumes.uncertainty.array.max()) == pytest.approx(round(0.9 * 255) / 255)  # stored as uint8
    prefetcher = Prefetcher(keep=2)
    try:
        prefetcher.prefetch(case, delay_s=600)
        start = time.perf_counter()
        assert np.array_equal(prefetcher.get(case).labels.array, volumes.labels.array)
        assert time.perf_counter() - start < 60  # asking for a case read ahead ends its wait
    finally:
        prefetcher.close()


def test_decisions_are_saved_replaced_with_a_message_and_listed(folder: Path) -> None:
    label_bytes = (folder / "case_b.nii.gz").read_bytes()
    first = save_decision(folder, "case_b", "accepted", "looks fine", now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert first.replaced is None and first.message == "case_b: accepted"
    assert json.loads(decision_path(folder, "case_b").read_text()) == {
        "case": "case_b", "status": "accepted", "note": "looks fine", "time": "2026-01-02T03:04:05+00:00"}
    second = save_decision(folder, "case_b", "rejected", "kidney missed")  # another tab, later
    assert second.replaced == first.decision
    assert "replaced the decision 'accepted' of 2026-01-02T03:04:05+00:00" in second.message
    assert read_decision(folder, "case_b").status == "rejected"
    save_decision(folder, "case_a", "needs correction")
    with open(folder / "reviews.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [(row["case"], row["status"], row["note"]) for row in rows] == [
        ("case_a", "needs correction", ""), ("case_b", "rejected", "kidney missed")]
    assert (folder / "case_b.nii.gz").read_bytes() == label_bytes  # the review never changes a label map
    assert not list(folder.glob(".*part*"))  # no temporary file left behind


def test_an_unreadable_decision_file_is_never_replaced(folder: Path) -> None:
    decision_path(folder, "case_a").write_text("not json")
    with pytest.raises(DecisionFileError, match="not a review decision"):
        save_decision(folder, "case_a", "accepted")
    assert decision_path(folder, "case_a").read_text() == "not json"
    assert read_decisions(folder, ["case_a", "case_b"]) == {}
    with pytest.raises(ValueError, match="status must be one of"):
        save_decision(folder, "case_b", "maybe")


def test_restart_resumes_from_the_saved_decisions(folder: Path) -> None:
    save_decision(folder, "case_d", "accepted")
    cases = [case.name for case in read_cases(folder)]
    decisions = read_decisions(folder, cases)  # what a new process reads
    assert list(decisions) == ["case_d"]
    assert cases[resume_index(cases, decisions)] == "case_b"
    every = {name: decisions["case_d"] for name in cases}
    assert resume_index(cases, every) == 0 and resume_index(cases, {}) == 0


def test_loopback_needs_no_token_any_other_host_does() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    free = _free_port()
    assert plan_access("127.0.0.1", free).token is None
    remote = plan_access("0.0.0.0", free)
    assert remote.token and len(remote.token) >= 32 and remote.token != plan_access("0.0.0.0", free).token
    assert remote.url("host.example") == f"http://host.example:{free}/index.html?token={remote.token}"
    assert remote.allows(remote.token, None) and remote.allows(None, remote.token)
    assert not remote.allows(None, None) and not remote.allows("wrong", None) and not remote.allows(remote.token[:-1], "x")
    assert Access("127.0.0.1", free, None).allows(None, None)


def test_a_taken_port_is_a_one_line_error(folder: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "review", folder, "--port", port)
    assert code == 1 and err.strip() == f"kidneytumorseg: error: port {port} on 127.0.0.1 is taken by another program: choose another with --port"
    code, _, err = run(capsys, "review", folder, "--port", 70000)
    assert code == 1 and "between 1 and 65535" in err


def test_a_folder_without_results_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "review", tmp_path)
    assert code == 1 and "no finished cases" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "review", tmp_path / "missing")
    assert code == 1 and "folder not found" in err


def test_the_slicer_command_loads_ct_labels_and_crop(folder: Path) -> None:
    case = next(case for case in read_cases(folder) if case.name == "case_b")
    code = slicer_code(case)
    compile(code, "slicer", "exec")
    assert f'loadVolume("{case.image.resolve()}")' in code and f'loadLabelVolume("{case.labels.resolve()}")' in code
    assert "roi.SetCenter(-47.000, -39.000, 22.000); roi.SetSize(88.000, 72.000, 48.000)" in code
    assert '1: ("Kidney", (0.725, 0.400, 0.325))' in code and '2: ("Tumor", (0.565, 0.933, 0.565))' in code
    assert slicer_command(case).startswith("Slicer --python-code '")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
