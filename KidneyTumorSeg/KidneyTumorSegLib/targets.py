"""Training targets: stage-1 landmark heat-maps and stage-2 soft-boundary maps (SPEC §1-2).

Every array is indexed ``[z, y, x]`` (working frame, or its x4 down-sampled grid for stage 1):
z = slice index (Inferior), y = antero-posterior (Posterior), x = left-right (Left).
"Left / top / right / bottom" of a slice are array directions: smallest x, smallest y,
largest x, largest y. All 2D operations act on each axial slice ``[y, x]`` on its own.

Rounding: wherever a coordinate is a mean (a tie between extreme pixels, the centroid), it is
rounded with ``numpy.rint``, i.e. to the nearest integer with halves to the even integer.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from .settings import DEFAULT_SETTINGS, MethodSettings

LANDMARK_CHANNELS: tuple[str, ...] = ("left", "top", "right", "bottom", "center")

BoundaryTask = Literal["kidney", "kidney_tumor", "tumor"]


CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
"""3D components join voxels that share a face, an edge or a corner."""


def in_slice_structure(connectivity: int) -> np.ndarray:
    """3 x 3 x 3 structuring element that links voxels only within an axial slice.

    ``connectivity`` 1 gives the 2D cross (4-neighbours), 2 the full 3 x 3 square
    (8-neighbours); the z-neighbour planes are all False.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity)
    return structure


def large_components(mask: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """26-connected 3D components of a bool ``mask`` ``[z, y, x]``: their int32 labels (0 =
    background) and, per label, whether it has at least ``min_fraction`` of the largest one's
    voxels (``keep[0]`` is False)."""
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max() if count else np.zeros(1, dtype=bool)
    keep[0] = False
    return labels, keep


def kidney_components(mask_zyx: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Label each "kidney" of a foreground mask ``[z, y, x]`` (SPEC §1 [D]).

    A kidney is a 26-connected 3D component of ``mask_zyx > 0``; components with fewer voxels
    than ``landmark_min_component_fraction`` of the largest one are dropped (set to 0).
    Returns int32 labels ``[z, y, x]``, 1..n in scipy's scan order, 0 for background.
    """
    labels, keep = large_components(mask_zyx > 0, settings.targets.landmark_min_component_fraction)
    new_ids = np.zeros(keep.size, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels]


def _extreme_point(coords_yx: np.ndarray, axis: int, largest: bool) -> tuple[int, int]:
    """(y, x) of the extreme pixel along ``axis`` (0 = y, 1 = x) of an [n, 2] coordinate list.

    Ties are placed at the rounded mean of the other coordinate of the tied pixels.
    """
    values = coords_yx[:, axis]
    extreme = values.max() if largest else values.min()
    other = coords_yx[values == extreme, 1 - axis]
    point = [0, 0]
    point[axis] = int(extreme)
    point[1 - axis] = int(np.rint(other.mean()))
    return point[0], point[1]


def slice_landmarks(coords_yx: np.ndarray) -> np.ndarray:
    """The five landmarks of one kidney in one slice, from its pixel coordinates [n, 2] (y, x).

    Returns int64 [5, 2] (y, x) in channel order (left, top, right, bottom, center).
    """
    points = [
        _extreme_point(coords_yx, axis=1, largest=False),  # left: smallest x
        _extreme_point(coords_yx, axis=0, largest=False),  # top: smallest y
        _extreme_point(coords_yx, axis=1, largest=True),  # right: largest x
        _extreme_point(coords_yx, axis=0, largest=True),  # bottom: largest y
        tuple(int(v) for v in np.rint(coords_yx.mean(axis=0))),  # center: rounded centroid
    ]
    return np.asarray(points, dtype=np.int64)


def landmark_points(mask_zyx: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> list[np.ndarray]:
    """Landmark points of every kidney in every axial slice of a down-sampled mask ``[z, y, x]``.

    Returns one entry per slice z: an int64 array [k, 5, 2] of (y, x) points, k = number of
    kidneys (see :func:`kidney_components`) present in that slice, in component label order;
    the 5 rows are (left, top, right, bottom, center). k = 0 for slices without a kidney.
    """
    components = kidney_components(mask_zyx, settings)
    points: list[np.ndarray] = []
    for plane in components:
        ys, xs = np.nonzero(plane)
        ids = plane[ys, xs]
        per_kidney = [slice_landmarks(np.stack([ys[ids == i], xs[ids == i]], axis=1)) for i in np.unique(ids)]
        points.append(np.asarray(per_kidney, dtype=np.int64).reshape(-1, 5, 2))
    return points


def normalise_slices(volume: np.ndarray) -> np.ndarray:
    """Divide each axial slice (the last two axes) by its maximum, in place; all-zero slices stay 0."""
    maxima = volume.max(axis=(-2, -1), keepdims=True)
    np.divide(volume, maxima, out=volume, where=maxima > 0)
    return volume


def gaussian_slices(volume: np.ndarray, sigma: float, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """2D Gaussian of every axial slice of ``volume`` [..., y, x] (mode constant, truncated at 4 sigma)."""
    sigmas = (0.0,) * (volume.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(volume, sigma=sigmas, mode="constant", cval=0.0,
                                   truncate=settings.geometry.gaussian_truncate)


def landmark_heatmaps(mask_zyx: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Stage-1 landmark target: float32 [5, z, y, x] heat-maps of a down-sampled mask ``[z, y, x]``.

    Per channel and slice: 1 at each kidney's landmark point, a 2D Gaussian (sigma =
    ``landmark_sigma`` px), divided by the slice maximum; slices without foreground are all 0.
    """
    spikes = np.zeros((len(LANDMARK_CHANNELS),) + mask_zyx.shape, dtype=np.float32)
    channels = np.arange(len(LANDMARK_CHANNELS))
    for z, slice_points in enumerate(landmark_points(mask_zyx, settings)):
        for kidney in slice_points:
            spikes[channels, z, kidney[:, 0], kidney[:, 1]] = 1.0
    return normalise_slices(gaussian_slices(spikes, settings.targets.landmark_sigma, settings))


def landmark_peaks(heatmaps: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> list[tuple[int, int, int, int]]:
    """Landmark points read back from heat-maps [5, z, y, x], float32 or float16 (SPEC §1 [D]).

    A peak is a pixel equal to the maximum of its ``landmark_peak_window`` x ``landmark_peak_window``
    in-slice neighbourhood (zeros outside the slice) that reaches ``landmark_peak_threshold``.
    Per channel and slice the ``landmark_peaks_per_channel`` highest peaks are kept (one per
    kidney). Ties: equal values are taken in raster order (smallest y, then smallest x), and a
    peak inside the window of an already kept one is skipped, so a flat top gives one point.
    Returns (channel, z, y, x) tuples sorted by channel, slice, then decreasing value.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)  # scipy's maximum filter rejects float16
    stage1 = settings.stage1
    window = stage1.landmark_peak_window
    size = (1,) * (heatmaps.ndim - 2) + (window, window)
    local_max = ndimage.maximum_filter(heatmaps, size=size, mode="constant", cval=0.0)
    candidates = np.argwhere((heatmaps >= stage1.landmark_peak_threshold) & (heatmaps == local_max))
    values = heatmaps[tuple(candidates.T)]
    # Sort by channel, slice, decreasing value, then raster order (lexsort: last key is primary).
    order = np.lexsort((candidates[:, 3], candidates[:, 2], -values, candidates[:, 1], candidates[:, 0]))
    half = window // 2
    kept: dict[tuple[int, int], list[tuple[int, int]]] = {}
    peaks: list[tuple[int, int, int, int]] = []
    for c, z, y, x in candidates[order].tolist():
        chosen = kept.setdefault((c, z), [])
        if len(chosen) >= stage1.landmark_peaks_per_channel:
            continue
        if any(abs(y - cy) <= half and abs(x - cx) <= half for cy, cx in chosen):
            continue
        chosen.append((y, x))
        peaks.append((c, z, y, x))
    return peaks


def boundary_map(mask_zyx: np.ndarray) -> np.ndarray:
    """Per-slice 2D boundary of a mask ``[z, y, x]`` as bool [z, y, x].

    The mask minus its erosion by the 3 x 3 cross within each axial slice; the image outside the
    slice counts as background, so foreground pixels on the slice edge are boundary.
    """
    mask = mask_zyx > 0
    eroded = ndimage.binary_erosion(mask, structure=in_slice_structure(1), border_value=0)
    return mask & ~eroded


def boundary_sigma(task: BoundaryTask, settings: MethodSettings = DEFAULT_SETTINGS) -> float:
    """Gaussian sigma (px) of the boundary target: kidney and kidney+tumor 3, tumor 2 (SPEC §2)."""
    sigmas = {
        "kidney": settings.targets.boundary_sigma_kidney,
        "kidney_tumor": settings.targets.boundary_sigma_kidney,
        "tumor": settings.targets.boundary_sigma_tumor,
    }
    if task not in sigmas:
        raise ValueError(f"unknown boundary task {task!r}; expected one of {sorted(sigmas)}")
    return sigmas[task]


def boundary_target(mask_zyx: np.ndarray, sigma: float, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Soft-boundary regression target: float32 [z, y, x] from a mask ``[z, y, x]`` (SPEC §2).

    Boundary pixels (:func:`boundary_map`) set to 1, a 2D Gaussian of ``sigma`` px per axial
    slice, each slice divided by its maximum; slices without foreground are all 0.
    """
    spikes = boundary_map(mask_zyx).astype(np.float32)
    return normalise_slices(gaussian_slices(spikes, sigma, settings))


def task_boundary_target(mask_zyx: np.ndarray, task: BoundaryTask,
                         settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """:func:`boundary_target` with the sigma of ``task`` ("kidney", "kidney_tumor" or "tumor")."""
    return boundary_target(mask_zyx, boundary_sigma(task, settings), settings)
