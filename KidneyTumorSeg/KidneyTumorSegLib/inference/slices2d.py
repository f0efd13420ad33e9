"""Slice-wise inference of a 2D network over a 3D volume (the 2.5D tumor models).

axial slices are ``volume[z]`` ``[Y, X]``, coronal ``volume[:, y]`` ``[Z, X]``, sagittal
``volume[:, :, x]`` ``[Z, Y]``; the result is stacked back in ``[C, Z, Y, X]`` order.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from .cancellation import CancelCallback, ProgressCallback, check_cancel
from .padding import pad, pad_widths, round_up, unpad_slices

logger = logging.getLogger(__name__)

Predictor2D = Callable[[torch.Tensor], torch.Tensor]
SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Array axis of a ``[Z, Y, X]`` volume that each slicing direction steps along."""


@torch.inference_mode()
def predict_along_axis(
    volume: np.ndarray,
    predictor2d: Predictor2D,
    axis: str,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    divisor: int = 16,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    out_dtype: type[np.floating] = np.float32,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """Run ``predictor2d`` (``[B, 1, H, W] -> [B, C, H, W]``) on every slice of a ``[Z, Y, X]``
    volume along ``axis``; returns ``[C, Z, Y, X]`` ``out_dtype``.

    Slices are zero-padded (evenly before / after) to multiples of ``divisor`` -- the networks
    are fully convolutional, so no larger patch is needed -- and cropped back.
    ``progress(done, total)`` counts slices; ``cancel()`` is polled before each batch.
    ``region`` (bool ``[Z, Y, X]``): only slices holding a region voxel run (each slice is
    predicted alone, so their values are exact); the others are 0.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {volume.shape}")
    if axis not in SLICE_AXES:
        raise ValueError(f"axis must be one of {sorted(SLICE_AXES)}, got {axis!r}")
    array_axis = SLICE_AXES[axis]
    slices = np.moveaxis(np.asarray(volume, dtype=np.float32), array_axis, 0)  # [N, H, W]
    plane = slices.shape[1:]
    widths = pad_widths(plane, round_up(plane, divisor))
    padded = pad(slices, widths)
    crop = (slice(None), slice(None), *unpad_slices(padded.shape[1:], widths))
    if region is None:
        chosen = np.arange(slices.shape[0])
    else:
        chosen = np.flatnonzero(np.moveaxis(np.asarray(region, bool), array_axis, 0).reshape(slices.shape[0], -1).any(axis=1))
    stack = torch.from_numpy(np.ascontiguousarray(padded[chosen])).to(torch.device(device))
    total = stack.shape[0]
    logger.debug("%s slices: %d of %s padded to %s", axis, total, plane, padded.shape[1:])
    out: np.ndarray | None = None  # [N, C, H, W]
    for first in range(0, total, batch_size):
        check_cancel(cancel)
        batch = stack[first:first + batch_size, None]
        pred = predictor2d(batch)
        if pred.ndim != 4 or pred.shape[0] != batch.shape[0] or pred.shape[2:] != batch.shape[2:]:
            raise ValueError(f"predictor returned {tuple(pred.shape)} for {tuple(batch.shape)}")
        if out is None:
            out = np.zeros((slices.shape[0], pred.shape[1], *plane), dtype=out_dtype)
        out[chosen[first:first + batch.shape[0]]] = pred[crop].float().cpu().numpy()
        if progress is not None:
            progress(first + batch.shape[0], total)
    if out is None:  # no slice chosen
        out = np.zeros((slices.shape[0], 1, *plane), dtype=out_dtype)
    # [N, C, H, W] -> [C, N, H, W] -> slice axis back to its place in [C, Z, Y, X]
    return np.ascontiguousarray(np.moveaxis(np.moveaxis(out, 1, 0), 1, array_axis + 1))
