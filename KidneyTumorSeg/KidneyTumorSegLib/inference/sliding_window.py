"""Patch-wise 3D inference over a whole volume with Gaussian (or uniform) blending.

The predictor is any callable ``[B, 1, pz, py, px] -> [B, C, pz, py, px]`` returning final
values (probabilities after the sigmoid, raw regression); see ``model_runner.make_predictor``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
from typing import Callable, Sequence

import numpy as np
import torch

from .cancellation import CancelCallback, ProgressCallback, check_cancel
from .padding import pad, pad_widths, unpad_slices

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_SIGMA_SCALE = 1.0 / 8.0
MIN_IMPORTANCE = 1e-4
"""Floor of the importance map (its maximum is 1), so patch borders never weigh exactly 0."""


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis: first 0, last ``size - patch`` (flush with the end), evenly
    spaced with a step of at most ``patch * (1 - overlap)``. ``size`` must be >= ``patch``."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch})")
    span = size - patch
    if span == 0:
        return [0]
    step = max(patch * (1.0 - overlap), 1.0)
    count = math.ceil(span / step - 1e-9) + 1
    return [round(i * span / (count - 1)) for i in range(count)]


@functools.lru_cache(maxsize=32)
def gaussian_importance_map(
    patch_size: tuple[int, ...], sigma_scale: float = DEFAULT_SIGMA_SCALE
) -> np.ndarray:
    """Separable Gaussian over a patch (any number of axes), centred at ``(p - 1) / 2`` with
    sigma ``p * sigma_scale`` per axis, maximum 1, floor :data:`MIN_IMPORTANCE`. float32, shape
    ``patch_size``, read-only and cached by ``(patch_size, sigma_scale)``."""
    profiles = []
    for p in patch_size:
        offsets = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        profiles.append(np.exp(-0.5 * (offsets / (p * sigma_scale)) ** 2))
    weights = functools.reduce(np.multiply.outer, profiles)
    weights = np.maximum(weights / weights.max(), MIN_IMPORTANCE).astype(np.float32)
    weights.flags.writeable = False
    return weights


def _check_prediction(pred: torch.Tensor, batch: int, patch_size: tuple[int, ...]) -> None:
    if pred.ndim != 2 + len(patch_size) or pred.shape[0] != batch or \
            tuple(pred.shape[2:]) != patch_size:
        raise ValueError(
            f"predictor returned {tuple(pred.shape)}, expected [{batch}, C, *{patch_size}]"
        )


@torch.inference_mode()
def sliding_window_predict(
    volume: np.ndarray,
    predictor: Predictor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    gaussian: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    out_dtype: type[np.floating] = np.float32,
    accumulate_device: torch.device | str | None = None,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """Predict a whole ``[Z, Y, X]`` volume patch by patch; returns ``[C, Z, Y, X]`` ``out_dtype``.

    Axes smaller than the patch are zero-padded (evenly before / after) and cropped back. Patches
    are sent to ``device`` in batches of ``batch_size``; predictions are weighted by the importance
    map, summed in float32 on ``accumulate_device`` (default: ``device``) and divided by the summed
    weights. ``progress(done, total)`` is called after each batch; ``cancel()`` is polled before
    each batch and raises :class:`Cancelled` when it returns True.

    ``region`` (bool ``[Z, Y, X]``): only patches holding a region voxel run. Every region voxel
    gets exactly the value of a run without ``region`` (the patches covering it all run); voxels
    no kept patch covers are 0, and with no patch at all the result is zeros with 1 channel.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {volume.shape}")
    patch = tuple(int(p) for p in patch_size)
    widths = pad_widths(volume.shape, patch)
    padded = pad(np.asarray(volume, dtype=np.float32), widths)
    device = torch.device(device)
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else device
    image = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
    importance = (
        torch.from_numpy(gaussian_importance_map(patch).copy()) if gaussian
        else torch.ones(patch)
    ).to(acc_device)

    grid = list(itertools.product(*(
        patch_starts(size, p, overlap) for size, p in zip(padded.shape, patch)
    )))
    if region is not None:
        inside = pad(np.asarray(region, dtype=bool), widths)
        grid = [start for start in grid if inside[tuple(slice(a, a + p) for a, p in zip(start, patch))].any()]
        if not grid:
            return np.zeros((1, *volume.shape), dtype=out_dtype)
    total = len(grid)
    logger.debug("sliding window: volume %s, patch %s, %d patches", volume.shape, patch, total)
    summed: torch.Tensor | None = None
    weights = torch.zeros(padded.shape, dtype=torch.float32, device=acc_device)
    for first in range(0, total, batch_size):
        check_cancel(cancel)
        boxes = [tuple(slice(s, s + p) for s, p in zip(start, patch))
                 for start in grid[first:first + batch_size]]
        pred = predictor(torch.stack([image[box] for box in boxes])[:, None])
        _check_prediction(pred, len(boxes), patch)
        pred = pred.to(device=acc_device, dtype=torch.float32)
        if summed is None:
            summed = torch.zeros((pred.shape[1], *padded.shape), dtype=torch.float32,
                                 device=acc_device)
        for values, box in zip(pred, boxes):
            summed[(slice(None), *box)] += values * importance
            weights[box] += importance
        if progress is not None:
            progress(min(first + batch_size, total), total)
    summed /= weights.clamp_min_(1e-12)  # 0 where no kept patch reached (region runs only)
    result = summed[(slice(None), *unpad_slices(padded.shape, widths))]
    return result.cpu().numpy().astype(out_dtype, copy=False)
