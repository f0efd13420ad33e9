"""Training-time data augmentation (off in the paper configs: the paper uses none).

Acts on a :data:`~training_tools.samplers.Sample` ``(image [1, *P], seg [1, *P], reg [C, *P])``
of a 3D (``P = z, y, x``) or 2D (``P = rows, columns``) model, with an explicit
``numpy.random.Generator``, so a sample stays a function of its seed. The image is the
normalised CT in [0, 1]. In order: a spatial transform (zoom and an in-plane rotation, the
same for image and targets), noise, blur, intensity scale and shift, low-resolution
simulation, gamma, and a left-right flip.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from .samplers import Sample

# Landmark channels (left, top, right, bottom, center) after a left-right flip: left <-> right.
LANDMARK_FLIP_X = (2, 1, 0, 3, 4)


@dataclass(frozen=True)
class Augmentation:
    """What is drawn per sample; every probability and amplitude 0 switches its step off.

    Intensity scale ``1 ± scale`` and shift ``± shift`` (image units); Gaussian noise of std up
    to ``noise``; with probability ``blur``, a Gaussian blur of ``blur_sigma`` (range, voxels) in
    the last two axes; with probability ``low_resolution``, down-sampling of the last two axes by a
    factor in ``low_resolution_factor`` (range) and back (linear); gamma ``exp(± gamma)`` on the
    image; with probability ``spatial``, a zoom ``1 ± zoom`` of every axis and a rotation of
    ``± rotate_degrees`` in the last two axes (image and regression linear, segmentation linear
    then thresholded at 0.5, edges extended); a left-right flip with probability ``flip_x``
    (landmark channels swapped).
    """

    scale: float = 0.1
    shift: float = 0.05
    noise: float = 0.02
    flip_x: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    low_resolution: float = 0.0
    low_resolution_factor: tuple[float, float] = (1.0, 3.0)
    spatial: float = 0.0
    zoom: float = 0.0
    rotate_degrees: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Augmentation:
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown augmentation fields: {', '.join(sorted(set(data) - known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, seg, reg = sample
        if self.spatial and rng.uniform() < self.spatial:
            image, seg, reg = _spatial(image, seg, reg, self.zoom, self.rotate_degrees, rng)
        if self.noise > 0:
            image = image + rng.normal(0.0, rng.uniform(0.0, self.noise), image.shape).astype(np.float32)
        if self.blur and rng.uniform() < self.blur:
            image = _blur(image, rng.uniform(*self.blur_sigma))
        image = image * np.float32(1.0 + rng.uniform(-self.scale, self.scale))
        image += np.float32(rng.uniform(-self.shift, self.shift))
        if self.low_resolution and rng.uniform() < self.low_resolution:
            image = _low_resolution(image, rng.uniform(*self.low_resolution_factor))
        if self.gamma:
            image = np.clip(image, 0.0, None) ** np.float32(np.exp(rng.uniform(-self.gamma, self.gamma)))
        if rng.uniform() < self.flip_x:
            image, seg, reg = (np.ascontiguousarray(a[..., ::-1]) for a in (image, seg, reg))
            if reg.shape[0] == len(LANDMARK_FLIP_X):
                reg = reg[list(LANDMARK_FLIP_X)]
        return image.astype(np.float32, copy=False), seg, reg


def _spatial(image: np.ndarray, seg: np.ndarray, reg: np.ndarray, zoom: float, degrees: float,
             rng: np.random.Generator) -> Sample:
    """One zoom (all spatial axes) and in-plane rotation (last two axes) applied to every channel."""
    spatial = image.ndim - 1
    factor = 1.0 + rng.uniform(-zoom, zoom)
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    matrix = np.eye(spatial) / factor
    c, s = np.cos(angle), np.sin(angle)
    matrix[-2:, -2:] = np.array([[c, -s], [s, c]]) / factor
    centre = (np.asarray(image.shape[1:]) - 1) / 2.0
    offset = centre - matrix @ centre

    def warp(channels: np.ndarray) -> np.ndarray:
        return np.stack([ndimage.affine_transform(ch, matrix, offset, order=1, mode="nearest") for ch in channels])

    warped_seg = (warp(seg) >= 0.5).astype(np.float32)
    return warp(image).astype(np.float32), warped_seg, warp(reg).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` voxels in the last two axes."""
    sigmas = (0.0,) * (image.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(image, sigmas).astype(np.float32)


def _low_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """Down-sampling of the last two axes by ``factor`` and back, linear both ways."""
    if factor <= 1.0:
        return image
    shape = image.shape
    small = [1.0] * (image.ndim - 2) + [1.0 / factor, 1.0 / factor]
    coarse = ndimage.zoom(image, small, order=1, grid_mode=False)
    back = [n / c for n, c in zip(shape, coarse.shape)]
    return ndimage.zoom(coarse, back, order=1, grid_mode=False).astype(np.float32)
