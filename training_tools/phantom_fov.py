"""The field of view of a training phantom: how much body is in the volume, and where it ends.

Real scans run from the lower chest to the pelvis, are truncated at random levels, sometimes
cut through a kidney or hold none, and their in-plane field of view may cut the body. A
training phantom is painted on its label map padded with empty slices above and below, then
a window of it is kept: short scans (a few centimetres around the kidneys) among them. Arrays are
``[z, y, x]`` (I, P, L).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training_tools.phantom_style import PhantomStyle

MIN_SLICES = 8  # the shortest window kept
FIELDS_OF_VIEW = ("mask", "drawn", "short")  # what a held-out phantom case holds (phantoms.make_phantom_case)


@dataclass(frozen=True)
class FieldOfView:
    """Empty slices added above (``pad_before``) and below (``pad_after``) the mask, then the
    window ``keep`` (z, y, x slices of the padded volume) kept."""

    pad_before: int
    pad_after: int
    keep: tuple[slice, slice, slice]

    def pad(self, labels: np.ndarray) -> np.ndarray:
        """The label map with the empty slices added."""
        return np.pad(labels, ((self.pad_before, self.pad_after), (0, 0), (0, 0)))


def _labelled_range(labels: np.ndarray, axis: int) -> tuple[int, int]:
    hits = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis)))
    return int(hits[0]), int(hits[-1])


def _in_plane(n: int, spacing: float, low: int, high: int, style: PhantomStyle, rng: np.random.Generator) -> slice:
    """A window of ``fov_mm`` along one in-plane axis that holds ``low..high`` when it can."""
    width = min(n, max(int(rng.uniform(*style.fov_mm) / spacing), high - low + 1))
    first = int(rng.integers(max(0, high - width + 1), min(low, n - width) + 1))
    return slice(first, first + width)


def _slices(n: int, low: int, high: int, spacing: float, style: PhantomStyle, rng: np.random.Generator) -> slice:
    """The z window: holds ``low..high``, cuts into it, misses it (when there is room), or is a
    short window (``short_mm``) centred somewhere in it."""
    draw = rng.uniform()
    if draw < style.no_kidney:
        room = [(0, low - 1), (high + 1, n - 1)]
        room = [(a, b) for a, b in room if b - a + 1 >= MIN_SLICES]
        if room:
            a, b = room[int(rng.integers(len(room)))]
            length = int(rng.integers(MIN_SLICES, b - a + 2))
            first = int(rng.integers(a, b - length + 2))
            return slice(first, first + length)
    if draw < style.no_kidney + style.cut_kidney and high - low >= 4:
        middle = (low + high) // 2
        if rng.uniform() < 0.5:
            return slice(int(rng.integers(low + 1, middle + 1)), int(rng.integers(high + 1, n + 1)))
        return slice(int(rng.integers(0, low + 1)), int(rng.integers(middle + 1, high + 1)))
    if draw < style.no_kidney + style.cut_kidney + style.short_window:
        length = max(MIN_SLICES, int(rng.uniform(*style.short_mm) / spacing))
        first = min(max(int(rng.integers(low, high + 1)) - length // 2, 0), max(n - length, 0))
        return slice(first, min(first + length, n))
    return slice(int(rng.integers(0, low + 1)), int(rng.integers(high + 1, n + 1)))


def draw_field_of_view(
    labels: np.ndarray, spacing: tuple[float, float, float], style: PhantomStyle, rng: np.random.Generator
) -> FieldOfView:
    """Padding and window for a ``[z, y, x]`` label map with kidney voxels (``spacing`` mm)."""
    before, after = (int(rng.uniform(*style.extend_mm) / spacing[0]) for _ in range(2))
    z_low, z_high = _labelled_range(labels, 0)
    keep_z = _slices(labels.shape[0] + before + after, z_low + before, z_high + before, spacing[0], style, rng)
    keep_yx = [_in_plane(labels.shape[a], spacing[a], *_labelled_range(labels, a), style, rng) for a in (1, 2)]
    return FieldOfView(before, after, (keep_z, *keep_yx))
