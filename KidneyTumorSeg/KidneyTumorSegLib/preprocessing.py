"""Intensity normalisation and ×4 block down-sampling (SPEC §0 and 'Conventions')."""
from __future__ import annotations

import numpy as np

from .settings import IntensitySettings


def normalize_hu(ct: np.ndarray, settings: IntensitySettings = IntensitySettings()) -> np.ndarray:
    """Clip HU to ``[hu_min, hu_max]`` and scale linearly to [0, 1]; float32, same shape."""
    scale = np.float32(1.0 / (settings.hu_max - settings.hu_min))
    out = np.array(ct, dtype=np.float32)  # a float32 copy: clipping an int16 CT directly would make a float64 one
    np.clip(out, settings.hu_min, settings.hu_max, out=out)
    out -= np.float32(settings.hu_min)
    out *= scale
    return out


def _block_starts(length: int, factor: int) -> np.ndarray:
    return np.arange(0, length, factor)


def downsample_mean(volume: np.ndarray, factor: int = 4) -> np.ndarray:
    """Block mean over ``factor``-cubes ``[z, y, x]``; a trailing partial block averages what exists.

    Output voxel n covers input voxels ``factor·n … factor·n + factor − 1`` on each axis; float32.
    """
    total = volume.astype(np.float32, copy=False)
    counts = []
    for axis in range(3):
        starts = _block_starts(volume.shape[axis], factor)
        total = np.add.reduceat(total, starts, axis=axis)
        counts.append(np.diff(np.r_[starts, volume.shape[axis]]).astype(np.float32))
    return total / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])


def downsample_max(mask: np.ndarray, factor: int = 4) -> np.ndarray:
    """Block maximum over ``factor``-cubes ``[z, y, x]`` (any foreground); keeps the dtype."""
    out = mask
    for axis in range(3):
        out = np.maximum.reduceat(out, _block_starts(mask.shape[axis], factor), axis=axis)
    return out
