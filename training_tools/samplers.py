"""The patch samplers of SPEC §2, one class per kind of model.

Every sampler draws from a :class:`~training_tools.cache.CachedCase` and returns a
:data:`Sample` ``(image [1, *P], segmentation target [1, *P], regression target [C, *P])``,
float32, ``P`` = ``(z, y, x)`` for 3D models or the slice plane for 2D ones. Wherever a window
reaches past the cached crop (the region stage 2 sees at inference), the patch is filled with 0.

- :class:`Stage1Sampler`: ``count`` (100) random 16 x 64 x 64 patches of the whole x4 grid;
  targets = foreground and the 5 landmark heat-maps.
- :class:`StridePatchSampler` (KT, K1, K2): ``count`` (200) patches of 32 x 128 x 128 on a
  regular stride grid of the crop (ground-truth kidney+tumor box expanded by 16 x 128 x 128).
- :class:`TumorPatchSampler` (T-vnet, T-unet): ``count`` (100) random 32 x 64 x 64 patches
  centred at uniformly random points of the ground-truth tumor box expanded by 8 x 16 x 16,
  holding the crop's own image where they reach past that box; a named share centred anywhere
  in the crop, as inference meets the model (SPEC §2, revised; the former zero frame around
  the box is a named departure).
- :class:`TumorSliceSampler` (2D U-Nets): every slice of the crop along the model's axis that
  holds tumor, one random 256 x 256 window each, zero-padded where the slice is smaller, and a
  named share of slices drawn from the whole crop. The boundary target is SPEC's (made per axial
  slice), cut along the model's axis like the image.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.networks.registry import RoleSpec
from KidneyTumorSegLib.settings import LABEL_KIDNEY, LABEL_TUMOR

from .cache import SLICE_AXES, CachedCase

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(image [1, *P], segmentation target [1, *P], regression target [C, *P]), float32."""

TUMOR_BOX_PADDINGS = ("image", "zeros")
"""What fills a tumor patch outside the expanded tumor box: the crop's own image (SPEC, revised) or zeros."""

# Which cached boundary channel (cache.BOUNDARY_CHANNELS) is each task's regression target.
TASK_BOUNDARY_CHANNEL: dict[str, int] = {"foreground": 0, "kidney": 1, "tumor": 2}


class Sampler(Protocol):
    """Draws the training samples of one case."""

    def count(self, case: CachedCase) -> int:
        """Number of samples of ``case`` per epoch (0 = the case is not used)."""

    def sample(self, case: CachedCase, index: int, rng: np.random.Generator) -> Sample:
        """Sample ``index`` (0 <= index < count) of ``case``."""


def read_window(array: np.ndarray, start: Sequence[int], size: Sequence[int], limit: Box | None = None) -> np.ndarray:
    """The window ``start`` .. ``start + size`` of the trailing spatial axes of ``array``, float32.

    ``array`` is ``[..., *S]`` (leading channel axes are kept); ``start`` may be negative or
    reach past the array. Voxels outside ``limit`` (a box on the spatial grid; default the whole
    array) are 0.
    """
    spatial = len(size)
    grid = array.shape[-spatial:]
    limit_start = limit.start[-spatial:] if limit else (0,) * spatial
    limit_stop = limit.stop[-spatial:] if limit else tuple(n - 1 for n in grid)
    out = np.zeros(array.shape[:-spatial] + tuple(size), dtype=np.float32)
    source, target = [], []
    for s, n, lo, hi in zip(start, size, limit_start, limit_stop):
        first, last = max(s, lo), min(s + n - 1, hi)
        if last < first:
            return out
        source.append(slice(first, last + 1))
        target.append(slice(first - s, last - s + 1))
    lead = (slice(None),) * (array.ndim - spatial)
    out[lead + tuple(target)] = array[lead + tuple(source)]
    return out


def random_start(rng: np.random.Generator, length: int, patch: int) -> int:
    """A uniform window start for a ``patch`` in ``length``: inside it when it fits, else placing
    the whole extent at a random offset within the window (the rest is zero-padded)."""
    low, high = min(0, length - patch), max(0, length - patch)
    return int(rng.integers(low, high + 1))


def stride_starts(length: int, patch: int, count: int) -> np.ndarray:
    """``count`` starts on a regular grid from 0 to ``length - patch`` (rounded); a patch longer
    than ``length`` is centred (start ``(length - patch) // 2``, the rest zero-padded)."""
    if length <= patch:
        return np.full(count, (length - patch) // 2, dtype=np.int64)
    return np.rint(np.linspace(0, length - patch, count)).astype(np.int64)


@lru_cache(maxsize=4096)
def stride_counts(shape: tuple[int, ...], patch: tuple[int, ...], total: int) -> tuple[int, ...]:
    """Grid positions per axis, with product exactly ``total``, spreading the patches evenly.

    Among all factorisations of ``total``, the one with the smallest largest stride relative to
    the patch (an axis with room but one position counts as infinite); ties go to the most
    distinct positions, then to the first in lexicographic order.
    """
    rooms = [max(n - p, 0) for n, p in zip(shape, patch)]

    def score(counts: tuple[int, ...]) -> tuple[float, int]:
        strides = [(room / (c - 1) if c > 1 else (np.inf if room else 0.0)) / p
                   for room, c, p in zip(rooms, counts, patch)]
        distinct = int(np.prod([min(c, room + 1) for room, c in zip(rooms, counts)]))
        return max(strides), -distinct

    return min(_factorisations(total, len(shape)), key=score)


def _factorisations(total: int, parts: int) -> list[tuple[int, ...]]:
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    return [c for c in itertools.product(divisors, repeat=parts) if int(np.prod(c)) == total]


def stride_positions(shape: tuple[int, ...], patch: tuple[int, ...], total: int) -> np.ndarray:
    """``total`` patch starts ``[total, 3]`` on a regular stride grid of a region of ``shape``, in raster order."""
    counts = stride_counts(tuple(shape), tuple(patch), total)
    axes = [stride_starts(n, p, c) for n, p, c in zip(shape, patch, counts)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(shape))


def task_mask(labels: np.ndarray, task: str) -> np.ndarray:
    """Segmentation target of ``task`` from labels, float32: foreground = label > 0 (kidney and
    tumor), kidney = label 1, tumor = label 2."""
    if task == "foreground":
        return (labels > 0).astype(np.float32)
    return (labels == {"kidney": LABEL_KIDNEY, "tumor": LABEL_TUMOR}[task]).astype(np.float32)


class Stage1Sampler:
    """Random ``patch`` windows of the whole x4 grid; targets = foreground and 5 landmark channels."""

    def __init__(self, patch: Sequence[int] = (16, 64, 64), count: int = 100):
        self.patch, self._count = tuple(patch), count

    def count(self, case: CachedCase) -> int:
        return self._count

    def sample(self, case: CachedCase, index: int, rng: np.random.Generator) -> Sample:
        start = [random_start(rng, n, p) for n, p in zip(case.image_down.shape, self.patch)]
        image = read_window(case.image_down, start, self.patch)[None]
        seg = read_window(case.foreground_down, start, self.patch)[None]
        return image, seg, read_window(case.landmarks_down, start, self.patch)


class StridePatchSampler:
    """``count`` windows on a regular stride grid of the crop (KT, K1, K2); none in a case without kidney."""

    def __init__(self, task: str, patch: Sequence[int] = (32, 128, 128), count: int = 200):
        self.task, self.patch, self._count = task, tuple(patch), count

    def count(self, case: CachedCase) -> int:
        return self._count if case.has_kidney else 0

    def positions(self, case: CachedCase) -> np.ndarray:
        """All patch starts ``[count, 3]`` in crop voxels."""
        return stride_positions(tuple(case.labels.shape), self.patch, self._count)

    def sample(self, case: CachedCase, index: int, rng: np.random.Generator) -> Sample:
        start = self.positions(case)[index]
        return _crop_sample(case, self.task, start, self.patch)


class TumorPatchSampler:
    """``count`` random windows of the crop (T-vnet, T-unet).

    SPEC §2: each window is centred at a uniformly random point of the expanded tumor box, so the
    tumor falls anywhere in the window and the window reaches past the box. ``inference_fraction``
    (0 = the paper) of them are instead centred at a uniformly random point of the whole crop, as
    inference meets the model (both kidneys, with tumor or none); a case without tumor (a healthy
    phantom) gives only those. ``padding``: outside the box a tumor-box window holds the crop's
    ``"image"`` and labels (SPEC, revised) or ``"zeros"`` (the former reading, a zero frame around
    small tumors); the window is placed the same way either way.
    """

    def __init__(self, patch: Sequence[int] = (32, 64, 64), count: int = 100, inference_fraction: float = 0.0,
                 padding: str = "image"):
        if not 0.0 <= inference_fraction <= 1.0:
            raise ValueError(f"inference_fraction must lie in [0, 1], got {inference_fraction}")
        if padding not in TUMOR_BOX_PADDINGS:
            raise ValueError(f"padding must be one of {TUMOR_BOX_PADDINGS}, got {padding!r}")
        self.patch, self._count, self.padding = tuple(patch), count, padding
        self._inference_count = int(round(count * inference_fraction))

    def count(self, case: CachedCase) -> int:
        if not case.has_kidney:
            return 0
        return self._count if case.tumor_crop_box is not None else self._inference_count

    def sample(self, case: CachedCase, index: int, rng: np.random.Generator) -> Sample:
        box = case.tumor_crop_box
        if box is None or index >= self._count - self._inference_count:
            start = centred_start(Box.full(case.labels.shape), self.patch, rng)
            return _crop_sample(case, "tumor", start, self.patch)
        start = centred_start(box, self.patch, rng)
        return _crop_sample(case, "tumor", start, self.patch, limit=box if self.padding == "zeros" else None)


def centred_start(region: Box, patch: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Start of a ``patch`` window centred at a uniformly random voxel of ``region`` (the centre of
    an even extent ``p`` is voxel ``p // 2`` of the window)."""
    return [int(rng.integers(a, b + 1)) - p // 2 for a, b, p in zip(region.start, region.stop, patch)]


def _crop_sample(case: CachedCase, task: str, start: Sequence[int], patch: Sequence[int],
                 limit: Box | None = None) -> Sample:
    """A 3D window of the crop with the targets of ``task``."""
    image = read_window(case.image, start, patch, limit)[None]
    labels = read_window(case.labels, start, patch, limit)
    channel = TASK_BOUNDARY_CHANNEL[task]
    boundary = read_window(case.boundary[channel:channel + 1], start, patch, limit)
    return image, task_mask(labels, task)[None], boundary


class TumorSliceSampler:
    """2D U-Nets: one random ``size`` window of every crop slice along ``axis`` that holds tumor
    (SPEC §2), and, as inference meets the model, slices drawn uniformly from all the crop's slices
    along ``axis``: as many as make ``inference_fraction`` of the case's samples, or, in a case
    without tumor, ``inference_fraction`` of its slices."""

    def __init__(self, axis: str, size: Sequence[int] = (256, 256), inference_fraction: float = 0.0):
        if axis not in SLICE_AXES:
            raise ValueError(f"axis must be one of {sorted(SLICE_AXES)}, got {axis!r}")
        if not 0.0 <= inference_fraction <= 1.0:
            raise ValueError(f"inference_fraction must lie in [0, 1], got {inference_fraction}")
        self.axis, self.size, self.inference_fraction = axis, tuple(size), inference_fraction

    def _inference_count(self, case: CachedCase) -> int:
        tumor = len(case.tumor_slices(self.axis))
        if not tumor or self.inference_fraction == 1.0:
            return int(round(self.inference_fraction * case.labels.shape[SLICE_AXES[self.axis]]))
        return int(round(tumor * self.inference_fraction / (1.0 - self.inference_fraction)))

    def count(self, case: CachedCase) -> int:
        if not case.has_kidney:
            return 0
        tumor = 0 if self.inference_fraction == 1.0 else len(case.tumor_slices(self.axis))
        return tumor + self._inference_count(case)

    def sample(self, case: CachedCase, index: int, rng: np.random.Generator) -> Sample:
        axis = SLICE_AXES[self.axis]
        tumor = self.count(case) - self._inference_count(case)
        position = case.tumor_slices(self.axis)[index] if index < tumor else int(rng.integers(case.labels.shape[axis]))
        take = [slice(None)] * 3
        take[axis] = position
        image, labels = case.image[tuple(take)], case.labels[tuple(take)]
        boundary = case.boundary[(slice(2, 3), *take)]
        start = [random_start(rng, n, p) for n, p in zip(image.shape, self.size)]
        seg = task_mask(read_window(labels, start, self.size), "tumor")
        return read_window(image, start, self.size)[None], seg[None], read_window(boundary, start, self.size)


def make_sampler(spec: RoleSpec, patch_size: Sequence[int] | None = None, count: int | None = None,
                 inference_fraction: float = 0.0, tumor_padding: str = "image") -> Sampler:
    """The SPEC §2 sampler of a role; ``patch_size`` / ``count`` override the role's patch and the
    samples per case (defaults: the role's patch; 100 stage 1, 200 KT / K, 100 T);
    ``inference_fraction`` (tumor models): share of windows drawn as inference meets them
    (:class:`TumorPatchSampler`, :class:`TumorSliceSampler`); ``tumor_padding``: see
    :class:`TumorPatchSampler` (3D tumor models only)."""
    patch = tuple(patch_size or spec.patch_size)
    if spec.architecture == "unet2d":
        return TumorSliceSampler(spec.axis, patch, inference_fraction)
    if spec.downsample_factor > 1:
        return Stage1Sampler(patch, count or 100)
    if spec.task == "tumor":
        return TumorPatchSampler(patch, count or 100, inference_fraction, tumor_padding)
    return StridePatchSampler(spec.task, patch, count or 200)
