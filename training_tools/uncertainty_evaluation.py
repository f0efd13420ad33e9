"""Does the ensemble's uncertainty mean something? Per case: how well the voxel uncertainty
separates wrong voxels from right ones inside the crop (AUROC), and -- harder, without the crop's
easy background -- among the voxels labelled or truly kidney or tumor; over cases: whether the
review score ranks cases by their tumor Dice (Spearman). Part of ``kidneytumorseg-train evaluate``.

Voxels are compared on the working frame, where the uncertainty is computed: the cascade's labels
against the truth resampled there (nearest). AUROCs come from histograms of the uncertainty
(``BINS`` bins over [0, 1], ties within a bin counted half), so cases pool exactly without
moving their voxels between processes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from KidneyTumorSegLib.cascade import SegmentationResult
from KidneyTumorSegLib.geometry import to_working_frame, working_frame_for
from KidneyTumorSegLib.imageio import Image

BINS = 1000
REVIEW_COLUMNS = ("review_score", "review", "disputed_ml", "tumor_agreement", "uncertainty_auroc", "uncertainty_auroc_kidneys")
REGIONS = {"": "the crop", "_kidneys": "voxels labelled or truly kidney or tumor"}  # key suffix -> what it covers
PLOT_NAME = "uncertainty.png"


def histograms(uncertainty: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of voxels per uncertainty bin ``[BINS]`` among the wrong and among the right ones."""
    bins = np.minimum((np.asarray(uncertainty, np.float32) * BINS).astype(np.int64), BINS - 1)
    return np.bincount(bins[wrong], minlength=BINS), np.bincount(bins[~wrong], minlength=BINS)


def auroc(wrong_counts: np.ndarray, right_counts: np.ndarray) -> float:
    """P(a wrong voxel is more uncertain than a right one), ties half, from :func:`histograms`;
    NaN when either group is empty."""
    wrong_total, right_total = int(wrong_counts.sum()), int(right_counts.sum())
    if wrong_total == 0 or right_total == 0:
        return math.nan
    below = np.cumsum(right_counts) - right_counts  # right voxels in lower bins
    return float(np.sum(wrong_counts * (below + 0.5 * right_counts)) / (wrong_total * right_total))


def uncertainty_row(result: SegmentationResult, image: Image, truth: np.ndarray) -> dict[str, Any]:
    """The review summary of one case and its uncertainty histograms (``truth``: labels ``[i, j, k]``
    on ``image``'s grid). Keys: :data:`REVIEW_COLUMNS`, and ``wrong_counts<suffix>`` /
    ``right_counts<suffix>`` for each region of :data:`REGIONS`."""
    frame = working_frame_for(image.array.shape, image.affine)
    crop = result.crop_box.slices
    truth_crop = to_working_frame(truth, frame, order=0, dtype=np.uint8)[crop]
    labels = result.labels_working[crop]
    wrong = labels != truth_crop
    kidneys = (labels > 0) | (truth_crop > 0)
    review = result.review.to_json()
    row = {"review_score": review["score"], "review": review["review"], "disputed_ml": review["disputed_ml"],
           "tumor_agreement": review["tumor_agreement"]}
    for suffix, (values, errors) in (("", (result.uncertainty, wrong)), ("_kidneys", (result.uncertainty[kidneys], wrong[kidneys]))):
        row[f"wrong_counts{suffix}"], row[f"right_counts{suffix}"] = histograms(values, errors)
        row[f"uncertainty_auroc{suffix}"] = auroc(row[f"wrong_counts{suffix}"], row[f"right_counts{suffix}"])
    return row


def summarise_uncertainty(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled and per-case AUROC of the voxel uncertainty for voxel error in each region of
    :data:`REGIONS`, and the Spearman rank correlation of the review score with the tumor Dice (and
    the kidney Dice) over cases."""
    rows = [r for r in rows if "wrong_counts" in r]
    if not rows:
        return {}
    summary: dict[str, Any] = {"cases_flagged_for_review": sum(bool(r["review"]) for r in rows)}
    for suffix in REGIONS:
        per_case = [r[f"uncertainty_auroc{suffix}"] for r in rows if math.isfinite(r[f"uncertainty_auroc{suffix}"])]
        summary[f"uncertainty_auroc{suffix}_pooled"] = auroc(sum(r[f"wrong_counts{suffix}"] for r in rows),
                                                            sum(r[f"right_counts{suffix}"] for r in rows))
        summary[f"uncertainty_auroc{suffix}_mean"] = float(np.mean(per_case)) if per_case else None
        summary[f"uncertainty_auroc{suffix}_min"] = float(np.min(per_case)) if per_case else None
    scores = [r["review_score"] for r in rows]
    for key in ("tumor_dice", "kidney_dice"):
        if len(rows) > 2 and np.ptp(scores) > 0 and np.ptp([r[key] for r in rows]) > 0:
            rho, p_value = stats.spearmanr(scores, [r[key] for r in rows])
            summary[f"spearman_review_score_{key}"] = {"rho": float(rho), "p": float(p_value)}
    return summary


def plot_uncertainty(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels: the pooled ROC curves of the voxel uncertainty for voxel error (in the crop, and
    among the voxels labelled or truly kidney or tumor), and the review score against the tumor
    Dice, one dot per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "wrong_counts" in r]
    figure, (roc, ranks) = plt.subplots(1, 2, figsize=(10, 4.2))
    for (suffix, region), colour in zip(REGIONS.items(), ("#c0392b", "#8e44ad")):
        wrong, right = sum(r[f"wrong_counts{suffix}"] for r in rows), sum(r[f"right_counts{suffix}"] for r in rows)
        # sweeping the threshold down from 1: the share of wrong (right) voxels at or above it
        true_positive = np.r_[0.0, np.cumsum(wrong[::-1]) / max(wrong.sum(), 1)]
        false_positive = np.r_[0.0, np.cumsum(right[::-1]) / max(right.sum(), 1)]
        roc.plot(false_positive, true_positive, color=colour, label=f"{region}: AUROC {auroc(wrong, right):.3f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set_xlabel("right voxels above the threshold")
    roc.set_ylabel("wrong voxels above the threshold")
    roc.legend(loc="lower right", fontsize=8)
    roc.set_title("voxel error, all cases pooled", fontsize=9)
    ranks.scatter([r["review_score"] for r in rows], [r["tumor_dice"] for r in rows], color="#2e86c1")
    for row in rows:
        ranks.annotate(str(row["case_id"])[-2:], (row["review_score"], row["tumor_dice"]), fontsize=7)
    ranks.set_xlabel("review score (share of the labelled region disputed)")
    ranks.set_ylabel("tumor Dice")
    ranks.set_ylim(-0.02, 1.02)
    spearman = summarise_uncertainty(rows).get("spearman_review_score_tumor_dice")
    ranks.set_title("cases" + ("" if spearman is None else f": Spearman {spearman['rho']:.2f}"), fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
