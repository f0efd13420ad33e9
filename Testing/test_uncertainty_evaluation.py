"""The uncertainty evaluation: AUROC from histograms, the per-case row on the working frame, the
summary over cases (pooled AUROC, Spearman of the review score against the tumor Dice) and its plot."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.cascade import SegmentationResult
from KidneyTumorSegLib.imageio import Image
from KidneyTumorSegLib.uncertainty import CaseReview
from synthetic_cases import working_affine
from training_tools.uncertainty_evaluation import BINS, auroc, histograms, plot_uncertainty, summarise_uncertainty, uncertainty_row


def test_auroc_from_histograms_is_the_mann_whitney_statistic() -> None:
    rng = np.random.default_rng(0)
    wrong = (rng.integers(300, 1000, 400) + 0.5) / BINS  # bin centres: no binning error
    right = (rng.integers(0, 700, 1500) + 0.5) / BINS
    values = np.r_[wrong, right]
    is_wrong = np.r_[np.ones(len(wrong), bool), np.zeros(len(right), bool)]
    expected = stats.mannwhitneyu(wrong, right).statistic / (len(wrong) * len(right))
    assert auroc(*histograms(values, is_wrong)) == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes() -> None:
    values = np.array([0.0, 0.2, 0.9, 1.0], np.float32)
    assert auroc(*histograms(values, values > 0.5)) == 1.0
    assert auroc(*histograms(values, values < 0.5)) == 0.0
    assert auroc(*histograms(np.full(4, 0.3, np.float32), np.array([True, False, True, False]))) == 0.5
    assert math.isnan(auroc(*histograms(values, np.zeros(4, bool))))


def _result(shape: tuple[int, int, int], crop: Box, labels_crop: np.ndarray, uncertainty: np.ndarray) -> SegmentationResult:
    labels_working = np.zeros(shape, np.uint8)
    labels_working[crop.slices] = labels_crop
    review = CaseReview(0.3, True, 1.5, None, 0.45, 0.1)
    return SegmentationResult(labels_working, labels_working, crop, None, ("KT",), {}, uncertainty, review)


def test_a_case_row_compares_labels_with_the_truth_inside_the_crop_and_the_kidneys() -> None:
    shape = (6, 20, 20)  # an I,P,L grid at the working spacing: the working frame itself
    truth = np.zeros(shape, np.uint8)
    truth[1:5, 5:15, 5:15] = 1
    crop = Box((0, 2, 2), (5, 17, 17))
    labels = truth[crop.slices].copy()
    labels[1:5, 3:5, 3:13] = 0  # 80 missed voxels
    uncertainty = np.where(labels != truth[crop.slices], 0.8, 0.0).astype(np.float32)
    uncertainty[1:5, 5:7, 3:13] = 0.9  # 80 right kidney voxels more uncertain than the missed ones
    row = uncertainty_row(_result(shape, crop, labels, uncertainty), Image(truth, working_affine()), truth)
    assert row["wrong_counts"].sum() == 80 and row["right_counts"].sum() == np.prod(crop.size) - 80
    assert row["right_counts_kidneys"].sum() == 400 - 80 and row["wrong_counts_kidneys"].sum() == 80
    background = np.prod(crop.size) - 400
    assert row["uncertainty_auroc"] == pytest.approx((background + 240) / (background + 320))
    assert row["uncertainty_auroc_kidneys"] == pytest.approx(240 / 320)
    assert (row["review_score"], row["review"], row["disputed_ml"]) == (0.3, True, 1.5)


def _rows(scores: list[float], tumor_dice: list[float]) -> list[dict]:
    rows = []
    for number, (score, dice) in enumerate(zip(scores, tumor_dice)):
        wrong, right = np.zeros(BINS, np.int64), np.zeros(BINS, np.int64)
        wrong[800], right[100], right[900] = 10, 80, 10 * number  # later cases: more right voxels above the wrong ones
        rows.append({"case_id": f"case_{number:05d}", "review_score": score, "review": score >= 0.1, "tumor_dice": dice,
                     "kidney_dice": 0.9, "uncertainty_auroc": auroc(wrong, right), "wrong_counts": wrong, "right_counts": right,
                     "uncertainty_auroc_kidneys": auroc(right, wrong), "wrong_counts_kidneys": right, "right_counts_kidneys": wrong})
    return rows


def test_summary_pools_the_cases_and_ranks_scores_against_tumor_dice(tmp_path) -> None:
    rows = _rows([0.05, 0.2, 0.3, 0.4], [0.9, 0.6, 0.3, 0.1])
    summary = summarise_uncertainty(rows + [{"case_id": "no kidney found", "tumor_dice": 0.0}])
    wrong = sum(r["wrong_counts"] for r in rows)
    right = sum(r["right_counts"] for r in rows)
    assert summary["uncertainty_auroc_pooled"] == pytest.approx(auroc(wrong, right))
    assert summary["uncertainty_auroc_pooled"] == pytest.approx((80 * 4) / (80 * 4 + 60))
    assert summary["uncertainty_auroc_min"] == pytest.approx(80 / 110)
    assert summary["uncertainty_auroc_kidneys_pooled"] == pytest.approx(1 - summary["uncertainty_auroc_pooled"])  # roles swapped
    assert summary["spearman_review_score_tumor_dice"]["rho"] == pytest.approx(-1.0)
    assert "spearman_review_score_kidney_dice" not in summary  # kidney Dice constant: no ranking
    assert summary["cases_flagged_for_review"] == 3
    assert summarise_uncertainty([{"case_id": "x"}]) == {}
    assert plot_uncertainty(rows, tmp_path / "u.png", "test").stat().st_size > 5000
