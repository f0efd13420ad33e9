"""The simulated scanner of a phantom: resolution, partial volume and noise.

A phantom is painted sharp on its grid. ``acquire`` then images it as a scanner with a drawn
acquisition voxel would: it blurs by the scanner's point spread and the voxel's own width,
samples the acquisition grid (when coarser than the phantom's), adds noise there (white, or
correlated by a smooth reconstruction kernel), and interpolates back onto the phantom's grid
linearly, as the engine's resampling does with a real scan. Arrays are float32 ``[z, y, x]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training_tools.phantom_style import PhantomStyle

VOXEL_BLUR = 0.42  # blur std per mm of voxel width (a Gaussian whose FWHM is the voxel)
MIN_SIGMA_VOXELS = 0.3  # weaker blurs are skipped
COARSER = 1.2  # an acquisition voxel this many times the grid's is sampled on its own grid


@dataclass(frozen=True)
class Acquisition:
    """One simulated acquisition: voxel size ``(z, y, x)`` mm, point spread (mm), noise std (HU)
    and noise grain (std of the kernel smoothing the noise, in acquisition pixels)."""

    voxel_mm: tuple[float, float, float]
    psf_mm: float
    noise_hu: float
    noise_grain_px: float


def draw_acquisition(style: PhantomStyle, rng: np.random.Generator) -> Acquisition:
    """Slice thickness, in-plane pixel (sometimes coarse, sometimes isotropic), blur and noise."""
    thickness = float(rng.uniform(*style.slice_mm))
    pixel = float(rng.uniform(*(style.low_pixel_mm if rng.uniform() < style.low_pixel else style.pixel_mm)))
    if rng.uniform() < style.isotropic:
        pixel = thickness
    low, high = np.log(style.noise_hu)
    return Acquisition(
        voxel_mm=(thickness, pixel, pixel),
        psf_mm=float(rng.uniform(*style.psf_mm)),
        noise_hu=float(np.exp(rng.uniform(low, high))),
        noise_grain_px=float(rng.uniform(*style.noise_grain_px)),
    )


def _noise(shape: tuple[int, ...], acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    if acquisition.noise_grain_px > 0.1:
        grain = acquisition.noise_grain_px
        noise = ndimage.gaussian_filter(noise, (0.0, grain, grain), mode="wrap")
        noise /= max(float(noise.std()), 1e-6)
    noise *= np.float32(acquisition.noise_hu)
    return noise


def acquire(
    hu: np.ndarray, spacing: tuple[float, float, float], acquisition: Acquisition, rng: np.random.Generator,
    resolution: bool = True,
) -> np.ndarray:
    """``hu`` (float32 ``[z, y, x]``, ``spacing`` mm) as the scanner sees it, on the same grid.

    ``resolution`` False keeps the grid's own voxel size (only the point spread and noise).
    """
    voxel = tuple(max(a, s) for a, s in zip(acquisition.voxel_mm, spacing)) if resolution else tuple(spacing)
    sigma = [np.hypot(acquisition.psf_mm, VOXEL_BLUR * v) / s for v, s in zip(voxel, spacing)]
    sigma = [s if s >= MIN_SIGMA_VOXELS else 0.0 for s in sigma]
    blurred = ndimage.gaussian_filter(hu, sigma, truncate=3.0) if any(sigma) else hu.astype(np.float32, copy=True)
    factors = [v / s for v, s in zip(voxel, spacing)]
    if max(factors) < COARSER:
        blurred += _noise(blurred.shape, acquisition, rng)
        return blurred
    coarse_shape = tuple(max(2, int(round(n / f))) if f >= COARSER else n for n, f in zip(hu.shape, factors))
    coarse = _resize(blurred, coarse_shape)
    coarse += _noise(coarse.shape, acquisition, rng)
    return _resize(coarse, hu.shape)


def _resize(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of ``volume`` onto ``shape`` samples spanning the same first and last voxel
    centres, one axis at a time (numpy only: several times faster than scipy's zoom, and no
    thread pool to hang in a worker process)."""
    out = np.asarray(volume, np.float32)
    for axis, count in enumerate(shape):
        size = out.shape[axis]
        if size == count:
            continue
        position = np.linspace(0.0, size - 1.0, count) if count > 1 else np.zeros(1)
        low = np.minimum(np.floor(position).astype(np.int64), size - 1)
        high = np.minimum(low + 1, size - 1)
        weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        first = np.take(out, low, axis=axis)
        out = first + (np.take(out, high, axis=axis) - first) * weight
    return out
