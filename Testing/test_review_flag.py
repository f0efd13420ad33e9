"""The review flag: its calibration on validation rows, its check, and the engine reading a
bundle's calibration file (review_flag.py, training_tools/review_calibration.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import cli_files, model_args, run
from KidneyTumorSegLib.review_flag import CALIBRATION_NAME, MEASURES, flag_case, load_calibration, review_flag
from training_tools.review_calibration import auroc, calibrate, check


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cli_files(tmp_path_factory.mktemp("review"))


def _row(case: str, kidney: float, tumor: float, **measures: float) -> dict:
    return {"case": case, "kidney_dice": kidney, "tumor_dice": tumor,
            "measures": {name: measures.get(name, 0.0) for name in MEASURES}}


def test_the_calibration_file_is_read_and_names_what_tripped(files, tmp_path: Path, capsys, caplog) -> None:
    """Without a calibration the flag is the uncalibrated disputed-share rule; with the bundle's
    review_calibration.json the report, the terminal and the summary say which measure tripped."""
    report = tmp_path / "report.json"
    code, _, _ = run(capsys, "segment", files["ct"], "-o", tmp_path / "a.nii.gz", "--report", report, *model_args(files))
    before = json.loads(report.read_text(encoding="utf-8"))
    assert code == 0 and before["review_flag"]["calibration"].startswith("none: the uncalibrated rule")
    assert set(before["review_flag"]["thresholds"]) == {"disputed_share"}
    labelled = before["review_flag"]["measures"]["labelled_ml"]
    calibration = files["bundle"] / CALIBRATION_NAME
    calibration.write_text(json.dumps({"format_version": 1, "calibrated_on": "test rows",
                                       "thresholds": {"labelled_ml": labelled / 2, "tumor_count": 1000}}))
    try:
        code, _, _ = run(capsys, "segment", files["ct"], "-o", tmp_path / "b.nii.gz", "--report", report, "--overwrite",
                         *model_args(files))
    finally:
        calibration.unlink()
    after = json.loads(report.read_text(encoding="utf-8"))
    flag = after["review_flag"]
    assert code == 0 and after["review"] is True and flag["calibration"].startswith(f"{CALIBRATION_NAME} of the bundle (test rows")
    assert flag["score"] == pytest.approx(2.0, abs=0.01)  # labelled_ml at twice its threshold
    assert flag["tripped"] == [f"kidney and tumor volume, both sides (mL) {labelled:.3g} >= {labelled / 2:.3g}"]
    assert f"needs review (score 2.00): {flag['tripped'][0]}" in caplog.text


def test_a_malformed_calibration_is_one_line(tmp_path: Path) -> None:
    (tmp_path / CALIBRATION_NAME).write_text(json.dumps({"format_version": 1, "thresholds": {"shoe_size": 3}}))
    with pytest.raises(ValueError, match="is not one this version reads"):
        load_calibration(tmp_path)
    assert load_calibration(tmp_path / "nowhere") is None


def test_calibration_picks_the_measures_that_flag_the_bad_cases() -> None:
    """Two bad cases by kidney Dice, told apart by side imbalance; tumor Dice < 0.5 everywhere, so
    the tumor criterion is left out and the calibration says so."""
    rows = [_row("a", 0.95, 0.2, side_imbalance=0.1, tumor_count=9), _row("b", 0.96, 0.1, side_imbalance=0.2, tumor_count=2),
            _row("c", 0.70, 0.3, side_imbalance=0.9, tumor_count=3), _row("d", 0.85, 0.1, side_imbalance=0.6, tumor_count=8)]
    result = calibrate(rows)
    assert result["thresholds"] == {"side_imbalance": pytest.approx(0.4)}
    assert result["youden_j"] == 1.0 and result["flagged_share"] == 0.5
    assert "tumor criterion is left out: every validation case has tumor Dice < 0.5" in result["target"]
    checked = check(rows, result["thresholds"])
    assert checked["flagged_share"] == 0.5 and checked["auroc_kidney_dice_below_0.9"] == 1.0
    assert checked["auroc_tumor_dice_below_0.5"] is None  # one class only
    assert checked["mean_kidney_dice"] == {"flagged": pytest.approx(0.775), "unflagged": pytest.approx(0.955)}


def test_flag_score_and_auroc() -> None:
    assert flag_case({"tumor_share": 0.6, "tumor_count": 2.0}, {"tumor_share": 0.5, "tumor_count": 4.0}) == (
        pytest.approx(1.2), ["tumor_share"])
    import numpy as np

    assert auroc(np.array([3.0, 1.0, 2.0, 2.0]), np.array([True, False, True, False])) == pytest.approx(0.875)
    report = {"measurements": {"kidney_ml": {"left": 100.0, "right": 0.0, "total": 100.0},
                               "tumor_ml": {"left": 0.0, "right": 0.0, "total": 0.0}, "tumor_count": 0}}
    flag = review_flag(report, {"thresholds": {"side_imbalance": 0.5}, "calibrated_on": "x"})
    assert flag["review"] is True and flag["measures"]["side_imbalance"] == 1.0  # a side is missing
