"""Zero padding to a minimum size or a multiple, split evenly before / after, and its inverse."""
from __future__ import annotations

import numpy as np


def pad_widths(shape: tuple[int, ...], target: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per-axis ``(before, after)`` widths growing ``shape`` to at least ``target``."""
    widths = []
    for size, want in zip(shape, target):
        extra = max(want - size, 0)
        widths.append((extra // 2, extra - extra // 2))
    return widths


def round_up(shape: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    """Each size rounded up to a multiple of ``divisor``."""
    return tuple(-(-size // divisor) * divisor for size in shape)


def pad(array: np.ndarray, widths: list[tuple[int, int]]) -> np.ndarray:
    """Zero-pad the trailing ``len(widths)`` axes; returns ``array`` itself when nothing to pad."""
    if not any(before or after for before, after in widths):
        return array
    lead = [(0, 0)] * (array.ndim - len(widths))
    return np.pad(array, lead + list(widths), mode="constant", constant_values=0)


def unpad_slices(shape: tuple[int, ...], widths: list[tuple[int, int]]) -> tuple[slice, ...]:
    """Slices of the trailing axes of a padded array (of padded ``shape``) that undo :func:`pad`."""
    return tuple(slice(before, size - after) for size, (before, after) in zip(shape, widths))
