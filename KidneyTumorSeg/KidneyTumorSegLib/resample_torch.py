"""Working-frame resampling in torch, on the CPU or a GPU: the same result as
:func:`geometry.to_working_frame` (linear or nearest) within float rounding.

An axis-aligned input (KiTS19's I,P,L, RAS, LPS, ...) is interpolated one axis at a time, straight
from the array as read (no reordering copy): on this project's 2-core CPU preparing a 234 x 512 x 512
case takes 0.5 s, against 1.4 s for copying it to C order and running ``grid_sample``. An oblique
input goes through ``grid_sample`` in slabs."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import AxisMap, WorkingFrame, axis_map


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
    """Resample an input array ``[i, j, k]`` (any memory order) onto the working grid ``[z, y, x]``
    on ``device``. ``order`` 1 = linear, 0 = nearest. Returns a float32 tensor on ``device``.

    Axis-aligned inputs: separable, and the input moves to ``device`` in its own dtype. Oblique
    inputs: ``grid_sample`` in slabs of ``slab`` working slices, needing the input as float32 and
    the sampling grid of one slab (12 bytes per voxel of it) besides the output.
    """
    if array.shape[:3] != frame.source_shape:
        raise ValueError(f"array shape {array.shape} does not match the frame's input grid {frame.source_shape}")
    mapping = axis_map(frame)
    if mapping is not None:
        return _separable(torch.from_numpy(_positive_strides(array)).to(device), mapping, frame.shape, order)
    return _grid_sampled(array, frame, device, order, slab)


def _positive_strides(array: np.ndarray) -> np.ndarray:
    """``array``, copied only if a flipped view gave it negative strides (torch refuses those)."""
    return array if all(stride >= 0 for stride in array.strides) else np.ascontiguousarray(array)


def _separable(source: torch.Tensor, mapping: AxisMap, shape: tuple[int, int, int], order: int) -> torch.Tensor:
    """Interpolate ``source`` ``[i, j, k]`` onto ``shape`` ``[z, y, x]`` along one axis at a time,
    the most shrinking axis first so that later passes see less data. Indices beyond the input
    clamp to its edge (``grid_sample``'s border mode)."""
    volume = source.permute(*mapping.source_axes)  # a view in working axis order
    for axis in sorted(range(3), key=lambda a: shape[a] / volume.shape[a]):
        length = volume.shape[axis]
        position = torch.arange(shape[axis], dtype=torch.float64, device=source.device)
        position = (position * mapping.scale[axis] + mapping.offset[axis]).clamp_(0, length - 1)
        broadcast = [1, 1, 1]
        broadcast[axis] = -1
        if order == 0:
            volume = volume.index_select(axis, torch.floor(position + 0.5).long()).float()
            continue
        low = position.floor().long()
        weight = (position - low).float().view(broadcast)
        high = (low + 1).clamp_(max=length - 1)
        volume = volume.index_select(axis, low).float().lerp_(volume.index_select(axis, high).float(), weight)
    return volume.contiguous()  # float32: every pass above converts


def _grid_sampled(array: np.ndarray, frame: WorkingFrame, device: torch.device | str, order: int,
                  slab: int) -> torch.Tensor:
    """``grid_sample`` of ``array`` ``[i, j, k]`` onto the working grid, ``slab`` working slices at a time."""
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
