"""Ensemble label assignment and tumor clean-up (SPEC §3), pure functions of arrays.

Every array is indexed ``[z, y, x]`` (the stage-2 crop of the working frame, z = axial slice).
Probabilities are float32 (or float16) in [0, 1]; thresholds compare them as given, so the
cascade hands them over in float32 (see cascade.py); labels are uint8 (0 background, 1 kidney, 2 tumor).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .settings import DEFAULT_SETTINGS, LABEL_BACKGROUND, LABEL_KIDNEY, LABEL_TUMOR, MethodSettings
from .targets import in_slice_structure


def _check_shapes(reference: np.ndarray, others: Sequence[np.ndarray], what: str) -> None:
    for other in others:
        if other.shape != reference.shape:
            raise ValueError(f"{what}: shape {other.shape} differs from {reference.shape}")


def average_probabilities(probs: Iterable[np.ndarray]) -> np.ndarray:
    """Voxel-wise mean of probability maps of one shape, as float32 (float16 input is fine).

    Accumulates in float32 as the maps come (a generator keeps one map alive besides the sum);
    no float64 copy of the volume is made.
    """
    total: np.ndarray | None = None
    count = 0
    for prob in probs:
        if total is None:
            total = np.zeros(prob.shape, dtype=np.float32)
        _check_shapes(total, [prob], "average_probabilities")
        np.add(total, prob, out=total, dtype=np.float32)
        count += 1
    if total is None:
        raise ValueError("average_probabilities needs at least one probability map")
    total /= np.float32(count)
    return total


def assign_labels(kt_prob: np.ndarray, k_prob: np.ndarray | None, t_probs: Sequence[np.ndarray],
                  settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Fuse the ensemble's probabilities into uint8 labels [z, y, x] (SPEC §3).

    Each map counts as 1 where p >= ``probability_threshold`` (0.5). Per voxel:
    KT = 0 -> 0; KT = 1 and any T = 1 -> 2 (tumor wins over kidney); else KT = 1 and K = 1 -> 1;
    KT = 1 with neither -> ``fusion.kt_only_label`` ([D] 1 = kidney, 0 = strict consensus).
    ``k_prob`` None (a bundle without K models) behaves as K = 0; ``t_probs`` may be empty.
    """
    kt_only_label = settings.fusion.kt_only_label
    if kt_only_label not in (LABEL_BACKGROUND, LABEL_KIDNEY):
        raise ValueError(f"fusion.kt_only_label must be 0 or 1, got {kt_only_label}")
    others = list(t_probs) + ([] if k_prob is None else [k_prob])
    _check_shapes(kt_prob, others, "assign_labels")
    threshold = settings.geometry.probability_threshold
    kt = kt_prob >= threshold
    labels = np.where(kt, np.uint8(kt_only_label), np.uint8(LABEL_BACKGROUND)).astype(np.uint8)
    if k_prob is not None:
        labels[kt & (k_prob >= threshold)] = LABEL_KIDNEY
    tumor = np.zeros(kt.shape, dtype=bool)
    for t_prob in t_probs:
        tumor |= t_prob >= threshold
    labels[kt & tumor] = LABEL_TUMOR
    return labels


def clean_tumor(labels: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Remove small tumor islands, slice by slice, from uint8 labels [z, y, x] (SPEC §3).

    In each axial slice, tumor components (8-connected, never joined across slices) with at
    most ``fusion.min_tumor_component_pixels`` (64) pixels are relabelled
    ``fusion.removed_tumor_label`` ([D] kidney); larger ones are kept. Returns a new array.
    """
    tumor = labels == LABEL_TUMOR
    components, count = ndimage.label(tumor, structure=in_slice_structure(2))
    cleaned = labels.copy()
    if count == 0:
        return cleaned
    sizes = np.bincount(components.ravel())
    too_small = sizes <= settings.fusion.min_tumor_component_pixels
    too_small[0] = False
    cleaned[too_small[components]] = settings.fusion.removed_tumor_label
    return cleaned
