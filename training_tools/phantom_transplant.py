"""Tumors moved between masks: a donor mask's tumor placed at a random point of a host kidney's surface.

With a few dozen masks a tumor model can learn where each kidney's tumor sits instead of what a
tumor looks like: the shipped T-vnet scores whole-crop Dice 0.36 on new phantoms of its training
masks and 0.10 on phantoms of other masks (``benchmarks/generalisation_gap.py``). A moved tumor
keeps a real tumor's shape and size but takes a place drawn anew for every phantom, so the place
tells nothing and the look must.

Arrays are ``[z, y, x]`` label maps on one grid of ``spacing`` (z, y, x) mm (the working frame).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.settings import LABEL_KIDNEY, LABEL_TUMOR

DEPTH_RANGE = (-0.6, 0.5)
"""[D] Where the moved tumor's centre lies along the kidney surface's outward normal, in tumor radii
(negative: inside the kidney, an endophytic tumor; positive: outside, exophytic)."""


def tumor_crop(labels: np.ndarray) -> np.ndarray | None:
    """The tumor label (2) of ``labels`` cut to its bounding box (bool), or None without tumor."""
    tumor = labels == LABEL_TUMOR
    if not tumor.any():
        return None
    box = ndimage.find_objects(tumor.astype(np.uint8))[0]
    return tumor[box]


def _outward_normal(kidney: np.ndarray, point: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Unit outward normal (mm axes z, y, x) of ``kidney``'s surface at ``point``, from the smoothed mask's gradient."""
    box = tuple(slice(max(p - 6, 0), p + 7) for p in point)
    local = ndimage.gaussian_filter(kidney[box].astype(np.float32), sigma=[3.0 / s for s in spacing])
    centre = tuple(p - b.start for p, b in zip(point, box))
    gradient = np.array([np.gradient(local, s, axis=a)[centre] for a, s in enumerate(spacing)])
    norm = float(np.linalg.norm(gradient))
    return -gradient / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def transplant_tumor(labels: np.ndarray, tumor: np.ndarray, spacing: tuple[float, float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """``labels`` (uint8 ``[z, y, x]``, kidney 1, no tumor) with the bool ``tumor`` crop, flipped at
    random in-plane, pasted as label 2 with its centre ``DEPTH_RANGE`` radii from a random point of
    the kidney surface along the outward normal; voxels past the grid's edge are dropped.
    Returns ``labels`` unchanged when it holds no kidney."""
    kidney = labels == LABEL_KIDNEY
    surface = np.argwhere(kidney & ~ndimage.binary_erosion(kidney))
    if surface.size == 0:
        return labels
    point = tuple(int(v) for v in surface[rng.integers(len(surface))])
    for axis in (1, 2):
        if rng.uniform() < 0.5:
            tumor = np.flip(tumor, axis)
    radius_mm = (3.0 * tumor.sum() * float(np.prod(spacing)) / (4.0 * np.pi)) ** (1.0 / 3.0)
    shift_mm = _outward_normal(kidney, point, spacing) * rng.uniform(*DEPTH_RANGE) * radius_mm
    centre = np.asarray(point) + shift_mm / np.asarray(spacing)
    corner = np.rint(centre - np.asarray(tumor.shape) / 2.0).astype(int)
    target = tuple(slice(max(c, 0), min(c + n, size)) for c, n, size in zip(corner, tumor.shape, labels.shape))
    if any(t.stop <= t.start for t in target):
        return labels
    source = tuple(slice(t.start - c, t.stop - c) for t, c in zip(target, corner))
    moved = labels.copy()
    moved[target][tumor[source]] = LABEL_TUMOR
    return moved
