"""Working-frame resampling with ``torch.nn.functional.grid_sample``: the same result as
:func:`geometry.to_working_frame` (linear or nearest), computed on a GPU when there is one."""
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


@torch.inference_mode()
def to_working_frame_torch(array: np.ndarray, frame: WorkingFrame, device: torch.device | str, order: int = 1) -> torch.Tensor:
    """Resample an input array ``[i, j, k]`` onto the working grid ``[z, y, x]`` on ``device``.

    ``order`` 1 = trilinear, 0 = nearest. Returns a float32 tensor on ``device``. Uses about
    16 bytes per working voxel of device memory (the sampling grid) plus the input as float32.
    """
    if array.shape[:3] != frame.source_shape:
        raise ValueError(f"array shape {array.shape} does not match the frame's input grid {frame.source_shape}")
    source = torch.from_numpy(np.ascontiguousarray(array)).to(device).float()[None, None]
    mapping = _reverse_axes(frame.working_to_source())  # working (x, y, z) -> source (k, j, i)
    theta = _index_to_normalized(frame.source_shape) @ mapping @ np.linalg.inv(_index_to_normalized(frame.shape))
    theta = torch.tensor(theta[:3], dtype=torch.float32, device=device)[None]
    grid = F.affine_grid(theta, [1, 1, *frame.shape], align_corners=True)
    mode = "bilinear" if order == 1 else "nearest"
    return F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=True)[0, 0]
