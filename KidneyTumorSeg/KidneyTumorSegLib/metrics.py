"""Evaluation metrics (SPEC §4): KiTS19 Dice, surface Dice and 95 % Hausdorff distance, and how
the tumor label reads to a user: its precision, recall and the share of healthy kidney called tumor.

Label maps are integer arrays [z, y, x] (0 background, 1 kidney, 2 tumor) on one grid;
``spacing_zyx`` is the voxel size in mm along (z, y, x).

Empty masks [D]:
- Dice and surface Dice: both masks empty -> 1.0 (perfect agreement); one empty -> 0.0.
- 95 % Hausdorff distance: both empty -> 0.0 mm; one empty -> ``float('inf')``.
- Tumor precision / recall of a case: NaN where nothing was called tumor / the truth has none;
  pooled over cases from the voxel counts, they are defined whenever any case called or held tumor.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .settings import DEFAULT_SETTINGS, LABEL_KIDNEY, LABEL_TUMOR, MethodSettings

DICE_KEYS: tuple[str, ...] = ("kidney_dice", "tumor_dice", "mean_dice")
TUMOR_COUNT_KEYS: tuple[str, ...] = ("tumor_tp", "tumor_fp", "tumor_fn")


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice 2|P∩G| / (|P| + |G|) of two boolean masks of one shape; both empty -> 1.0."""
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} differs from ground truth {gt_mask.shape}")
    total = np.count_nonzero(pred_mask) + np.count_nonzero(gt_mask)
    if total == 0:
        return 1.0
    return float(2 * np.count_nonzero(pred_mask & gt_mask) / total)


def kits_dice(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
    """KiTS19 kidney and tumor Dice of integer label maps [z, y, x].

    kidney_dice on label > 0 (kidney and tumor together), tumor_dice on label > 1, i.e. label 2
    for labels in {0, 1, 2}: the official KiTS19 ``starter_code/evaluation.py`` formula,
    2 * |P∩G| / (|P| + |G|) on integer voxel counts, so values agree with it bit for bit.
    A structure empty in both maps scores 1.0 [D].
    """
    # The official script divides numpy integer counts, which never raises ZeroDivisionError:
    # when both maps lack a structure it returns NaN (0 / 0, with a RuntimeWarning), and its
    # "except ZeroDivisionError: return 0.0" branches are dead code. We return 1.0 there instead;
    # KiTS19 cases always contain both structures, so the official numbers are never affected.
    for labels in (pred_labels, gt_labels):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise TypeError(f"label maps must be integer arrays, got {labels.dtype}")
    return {
        "kidney_dice": dice(pred_labels > 0, gt_labels > 0),
        "tumor_dice": dice(pred_labels >= LABEL_TUMOR, gt_labels >= LABEL_TUMOR),
    }


def _union_crop(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of pred ∪ gt grown by one voxel, clipped to the array."""
    union = pred_mask | gt_mask
    crop = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=other_axes))
        crop.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, union.shape[axis])))
    return tuple(crop)


def surface(mask: np.ndarray) -> np.ndarray:
    """3D surface voxels of a boolean mask: the mask minus its erosion by the 6-neighbour cross.

    Outside the array counts as background, so foreground voxels on the array edge are surface.
    """
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def surface_distances(pred_mask: np.ndarray, gt_mask: np.ndarray,
                      spacing_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the nearest surface voxel of the other.

    Returns (pred -> gt, gt -> pred); both masks must be non-empty. Computed on the bounding box
    of their union plus a one-voxel margin, which changes no distance.
    """
    crop = _union_crop(pred_mask, gt_mask)
    pred_surface = surface(pred_mask[crop])
    gt_surface = surface(gt_mask[crop])
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=spacing_zyx)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing_zyx)
    return to_gt[pred_surface], to_pred[gt_surface]


def _empty_case(pred_mask: np.ndarray, gt_mask: np.ndarray) -> bool | None:
    """None when both masks have foreground, else whether both are empty."""
    pred_any, gt_any = bool(pred_mask.any()), bool(gt_mask.any())
    if pred_any and gt_any:
        return None
    return not (pred_any or gt_any)


def surface_dice(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_zyx: Sequence[float],
                 tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm`` of two masks [z, y, x] (surface voxels counted, not areas).

    (#pred surface voxels within tolerance of the gt surface + #gt surface voxels within
    tolerance of the pred surface) / (#pred surface voxels + #gt surface voxels); a distance
    equal to the tolerance counts. Both empty -> 1.0; one empty -> 0.0.
    """
    pred_mask, gt_mask = pred_mask > 0, gt_mask > 0
    both_empty = _empty_case(pred_mask, gt_mask)
    if both_empty is not None:
        return 1.0 if both_empty else 0.0
    to_gt, to_pred = surface_distances(pred_mask, gt_mask, spacing_zyx)
    within = np.count_nonzero(to_gt <= tolerance_mm) + np.count_nonzero(to_pred <= tolerance_mm)
    return float(within / (to_gt.size + to_pred.size))


def hausdorff95(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95 % Hausdorff distance in mm between the surfaces of two masks [z, y, x].

    The larger of the two directed 95th percentiles (numpy's linear interpolation) of the
    surface-to-surface distances. Both empty -> 0.0; one empty -> ``float('inf')``.
    """
    pred_mask, gt_mask = pred_mask > 0, gt_mask > 0
    both_empty = _empty_case(pred_mask, gt_mask)
    if both_empty is not None:
        return 0.0 if both_empty else math.inf
    to_gt, to_pred = surface_distances(pred_mask, gt_mask, spacing_zyx)
    return float(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))


def tumor_calls(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """How the tumor label of integer label maps [z, y, x] reads against the truth.

    Keys: voxel counts ``tumor_tp``, ``tumor_fp``, ``tumor_fn`` (pooled by :func:`summarise`);
    ``tumor_precision`` and ``tumor_recall`` of this case; ``healthy_called_tumor``, the share of
    the truth's healthy kidney (label 1) called tumor: what a patient without a tumor meets (NaN
    without healthy kidney).
    """
    called, truth = pred >= LABEL_TUMOR, gt >= LABEL_TUMOR
    tp = int(np.count_nonzero(called & truth))
    fp, fn = int(np.count_nonzero(called)) - tp, int(np.count_nonzero(truth)) - tp
    healthy = gt == LABEL_KIDNEY
    healthy_voxels = int(np.count_nonzero(healthy))
    return {"tumor_tp": tp, "tumor_fp": fp, "tumor_fn": fn,
            "tumor_precision": tp / (tp + fp) if tp + fp else math.nan,
            "tumor_recall": tp / (tp + fn) if tp + fn else math.nan,
            "healthy_called_tumor": (int(np.count_nonzero(called & healthy)) / healthy_voxels
                                     if healthy_voxels else math.nan)}


def evaluate_case(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float],
                  tolerance_mm: float | None = None, settings: MethodSettings = DEFAULT_SETTINGS) -> dict[str, float]:
    """All metrics of one case from integer label maps [z, y, x] on the same grid.

    Keys: kidney_dice, tumor_dice, mean_dice (KiTS19), kidney_surface_dice, tumor_surface_dice
    (tolerance ``tolerance_mm``, default ``evaluation.surface_tolerance_mm``), kidney_hd95_mm,
    tumor_hd95_mm, and those of :func:`tumor_calls`. "Kidney" is label > 0 (kidney and tumor),
    "tumor" label 2, as in KiTS19.
    """
    tolerance = settings.evaluation.surface_tolerance_mm if tolerance_mm is None else tolerance_mm
    row = kits_dice(pred, gt)
    row["mean_dice"] = (row["kidney_dice"] + row["tumor_dice"]) / 2
    for name, pred_mask, gt_mask in (("kidney", pred > 0, gt > 0),
                                     ("tumor", pred >= LABEL_TUMOR, gt >= LABEL_TUMOR)):
        row[f"{name}_surface_dice"] = surface_dice(pred_mask, gt_mask, spacing_zyx, tolerance)
        row[f"{name}_hd95_mm"] = hausdorff95(pred_mask, gt_mask, spacing_zyx)
    row.update(tumor_calls(pred, gt))
    return row


def summarise(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Over cases (rows of :func:`evaluate_case`): mean kidney_dice, tumor_dice and mean_dice;
    tumor precision and recall pooled over every case's voxels (None where undefined); the median
    share of healthy kidney called tumor (over cases with healthy kidney); and "cases"."""
    if len(rows) == 0:
        raise ValueError("summarise needs at least one case")
    summary: dict[str, float | None] = {key: float(np.mean([row[key] for row in rows])) for key in DICE_KEYS}
    tp, fp, fn = (sum(row[key] for row in rows) for key in TUMOR_COUNT_KEYS)
    summary["tumor_precision_pooled"] = tp / (tp + fp) if tp + fp else None
    summary["tumor_recall_pooled"] = tp / (tp + fn) if tp + fn else None
    healthy = [row["healthy_called_tumor"] for row in rows if math.isfinite(row["healthy_called_tumor"])]
    summary["median_healthy_called_tumor"] = float(np.median(healthy)) if healthy else None
    summary["cases"] = len(rows)
    return summary
