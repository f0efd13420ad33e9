"""Grid helpers of the phantom generator: linear up-sampling and smooth random fields.

A coarse grid with integer factors ``f`` samples a fine grid at fine indices ``0, f, 2f, ...``;
fine index ``i`` lies at coarse position ``i / f``. All arrays are float32 ``[z, y, x]``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def coarse_size(n: int, factor: int) -> int:
    """Number of coarse samples (fine indices 0, f, 2f, ...) that cover fine indices 0 .. n-1."""
    return -(-(n - 1) // factor) + 1


def upsample_axis(a: np.ndarray, axis: int, factor: int, start: int, count: int) -> np.ndarray:
    """Fine rows ``start .. start+count-1`` of the linear up-sampling of ``a`` along ``axis``."""
    fine = np.arange(start, start + count)
    low = fine // factor
    if factor == 1:
        return np.take(a, low, axis=axis)
    high = np.minimum(low + 1, a.shape[axis] - 1)
    shape = [1] * a.ndim
    shape[axis] = count
    weight = ((fine % factor) / factor).astype(np.float32).reshape(shape)
    lo = np.take(a, low, axis=axis)
    result = np.take(a, high, axis=axis)
    result -= lo
    result *= weight
    result += lo
    return result


def upsample_box(a: np.ndarray, factors: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
    """The fine-grid box ``box`` (one slice with explicit start and stop per axis) of the linear
    up-sampling of coarse ``a`` by ``factors``; only the coarse rows needed are touched."""
    out = a
    for axis in range(a.ndim):
        start, stop = box[axis].start, box[axis].stop
        first = start // factors[axis]
        last = min(coarse_size(stop, factors[axis]), a.shape[axis])
        index = [slice(None)] * a.ndim
        index[axis] = slice(first, last)
        out = upsample_axis(out[tuple(index)], axis, factors[axis], start - first * factors[axis], stop - start)
    return out


def smooth_noise(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], length_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~``length_mm``.

    White noise on a grid about ``length_mm / 2`` apart, Gaussian-smoothed there (sigma ~ one
    grid step) and linearly up-sampled, so the cost is set by the output size only.
    """
    factors = tuple(max(1, int(length_mm / (2.0 * s))) for s in spacing_mm)
    small_shape = tuple(coarse_size(n, f) for n, f in zip(shape, factors))
    sigma = tuple(max(0.7, length_mm / (2.0 * f * s)) for f, s in zip(factors, spacing_mm))
    small = ndimage.gaussian_filter(rng.standard_normal(small_shape, dtype=np.float32), sigma, mode="wrap")
    small /= max(float(small.std()), 1e-6)
    return upsample_box(small, factors, tuple(slice(0, n) for n in shape))
