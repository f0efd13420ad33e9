"""Working-frame resampling with ``torch.nn.functional.grid_sample``: the same result as
:func:`geometry.to_working_frame` (linear or nearest) within float rounding, on the CPU or a GPU
(about twice as fast as scipy on the CPU)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import WorkingFrame


def _index_to_normalized(shape: tuple[int, ...]) -> np.ndarray:
    """4 x 4 map from voxel indices (reversed axis order, as grid_sample reads them) to [-1, 1]."""
    scale = [2.0 / max(n - 1, 1) for n in reversed(shape)]
    matrix = np.diag([*scale, 1.0])
    matrix[:3, 3] = -1.0
    return matrix


def _reverse_axes(mapping: np.ndarray) -> np.ndarray:
    """The same 4 x 4 index map with the three axes in reverse order (z, y, x -> x, y, z)."""
    order = [2, 1, 0, 3]
    return mapping[np.ix_(order, order)]


SLAB_SLICES = 16  # working slices sampled at once: bounds the sampling grid's memory


def _slab_starts(depth: int, slab: int) -> list[int]:
    """First working slice of each slab; no slab is a single slice (affine_grid treats those apart)."""
    starts = list(range(0, depth, slab))
    if len(starts) > 1 and depth - starts[-1] == 1:
        starts.pop()
    return starts


@torch.inference_mode()
def to_working_frame_torch(array: np.ndarray, frame: WorkingFrame, device: torch.device | str, order: int = 1,
                           slab: int = SLAB_SLICES) -> torch.Tensor:
    """Resample an input array ``[i, j, k]`` onto the working grid ``[z, y, x]`` on ``device``.

    ``order`` 1 = trilinear, 0 = nearest. Returns a float32 tensor on ``device``. Works in slabs
    of ``slab`` working slices: besides the input as float32 and the output, it needs the
    sampling grid of one slab only (12 bytes per voxel of it).
    """
    if array.shape[:3] != frame.source_shape:
        raise ValueError(f"array shape {array.shape} does not match the frame's input grid {frame.source_shape}")
    source = torch.from_numpy(np.ascontiguousarray(array)).to(device).float()[None, None]
    to_source = _index_to_normalized(frame.source_shape) @ _reverse_axes(frame.working_to_source())  # (x, y, z) -> [-1, 1]
    mode = "bilinear" if order == 1 else "nearest"
    depth = frame.shape[0]
    starts = _slab_starts(depth, slab)
    out = torch.empty(frame.shape, dtype=torch.float32, device=device)
    for start, stop in zip(starts, [*starts[1:], depth]):
        shape = (stop - start, *frame.shape[1:])
        shift = np.eye(4)
        shift[2, 3] = start  # slab index z -> working index z
        theta = to_source @ shift @ np.linalg.inv(_index_to_normalized(shape))
        theta = torch.tensor(theta[:3], dtype=torch.float32, device=device)[None]
        grid = F.affine_grid(theta, [1, 1, *shape], align_corners=True)
        out[start:stop] = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=True)[0, 0]
    return out
