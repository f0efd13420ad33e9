"""Checks that an input image is a CT the cascade can work on (one-line reasons when it is not)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from .imageio import Image


logger = logging.getLogger(__name__)


class InputError(ValueError):
    """The input image cannot be segmented; the message says why in one line."""


@dataclass(frozen=True)
class InputChecks:
    """Thresholds of the input checks. ``min_extent_mm``: smallest physical extent per axis;
    ``air_hu``/``min_air_fraction``: a CT of the abdomen holds air (outside the body, in the
    bowel) below -900 HU in at least this fraction of voxels; ``max_hu``: above any CT value."""

    min_extent_mm: float = 30.0
    air_hu: float = -900.0
    min_air_fraction: float = 0.001
    max_hu: float = 5000.0


AIR_HU = -1000.0
"""What ``--force`` puts in place of NaN or infinite voxels: air."""


def check_ct(image: Image, force: bool = False, checks: InputChecks = InputChecks()) -> Image:
    """The image to segment, or :class:`InputError` for one that is not a usable CT ``[i, j, k]``.

    Always refused: a constant volume, a volume smaller than ``min_extent_mm`` on an axis. Refused
    unless ``force``: NaN or infinite voxels (with ``force`` they become air, :data:`AIR_HU`, in
    the image returned), intensities that do not look like Hounsfield units (no air, or values far
    beyond the CT range, as in MR).
    """
    array = image.array
    extent = np.array(array.shape) * np.array(image.spacing)
    if np.any(extent < checks.min_extent_mm):
        raise InputError(f"image too small: {tuple(array.shape)} voxels = {np.round(extent, 1).tolist()} mm (need ≥ {checks.min_extent_mm:g} mm per axis)")
    image = _nonfinite_as_air(image, force)
    array = image.array
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise InputError(f"image is constant ({low:g} everywhere)")
    if force:
        return image
    air = np.count_nonzero(array <= checks.air_hu) / array.size
    if air < checks.min_air_fraction or high > checks.max_hu:
        raise InputError(
            f"image does not look like CT in Hounsfield units (range {low:g}..{high:g}, {100 * air:.2f} % below "
            f"{checks.air_hu:g} HU); use --force to segment it anyway"
        )
    return image


def _nonfinite_as_air(image: Image, force: bool) -> Image:
    """``image`` unchanged when every voxel is finite; else InputError saying how many are not,
    or with ``force`` a copy holding air there (a warning says how many)."""
    array = image.array
    if not np.issubdtype(array.dtype, np.floating):
        return image
    nonfinite = ~np.isfinite(array)
    count = int(np.count_nonzero(nonfinite))
    if count == 0:
        return image
    share = f"{count} of {array.size} voxels ({100 * count / array.size:.3g} %)"
    if not force:
        raise InputError(f"image holds NaN or infinite values in {share}; --force segments it with them as air "
                         f"({AIR_HU:g} HU)")
    logger.warning("image holds NaN or infinite values in %s: segmented with them as air (%g HU, --force)", share, AIR_HU)
    return dataclasses.replace(image, array=np.where(nonfinite, np.asarray(AIR_HU, array.dtype), array))


BYTES_PER_WORKING_VOXEL = 16
"""Peak bytes per working-frame voxel of a run: the resampled CT and its normalised copy
(float32 each), the label map, and the stage-1 / kidney caches, measured with headroom."""


def available_memory_bytes() -> int | None:
    """Memory the system can still give (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(working_shape: tuple[int, int, int], available: int | None = None) -> None:
    """Raise MemoryError, with the figures, when a working frame of ``working_shape`` cannot fit."""
    available = available_memory_bytes() if available is None else available
    needed = int(np.prod(working_shape, dtype=np.int64)) * BYTES_PER_WORKING_VOXEL
    if available is not None and needed > available:
        raise MemoryError(
            f"volume too large for the memory available: its working frame {tuple(working_shape)} needs about "
            f"{needed / 2**30:.1f} GB, {available / 2**30:.1f} GB are free; crop the image or use a machine with more memory"
        )
