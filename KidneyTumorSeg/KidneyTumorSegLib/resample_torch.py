"""Working-frame resampling in torch, on the CPU or a GPU: the same result as
:func:`geometry.to_working_frame` (linear or nearest) within float rounding.

An axis-aligned input (KiTS19's I,P,L, RAS, LPS, ...) is interpolated one axis at a time in its
own memory order (no reordering copy of the input; on the CPU the gathers go through numpy's
``take``): on this project's 2-core CPU a 600 x 512 x 512 int16 case takes about 0.3 s, against
1.0-1.4 s gathering in ``[z, y, x]`` order with torch's ``index_select``, with the same values
bit for bit. An oblique input goes through ``grid_sample`` in slabs."""
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
        return _separable(_positive_strides(array), mapping, frame.shape, order, torch.device(device))
    return _grid_sampled(array, frame, device, order, slab)


def _positive_strides(array: np.ndarray) -> np.ndarray:
    """``array``, copied only if a flipped view gave it negative strides (torch refuses those)."""
    return array if all(stride >= 0 for stride in array.strides) else np.ascontiguousarray(array)


def _gather(volume: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """``volume.index_select(axis, index)``; on the CPU through numpy's ``take``, which copies whole
    rows and planes and is 5-50x faster than torch's per-element path along the last axis."""
    if volume.device.type != "cpu":
        return volume.index_select(axis, index)
    return torch.from_numpy(np.take(volume.numpy(), index.numpy(), axis=axis))


def _separable(array: np.ndarray, mapping: AxisMap, shape: tuple[int, int, int], order: int,
               device: torch.device) -> torch.Tensor:
    """Interpolate ``array`` ``[i, j, k]`` onto ``shape`` ``[z, y, x]`` along one working axis at a
    time, the most shrinking axis first so that later passes see less data. Indices beyond the input
    clamp to its edge (``grid_sample``'s border mode).

    The passes run on the array in its own memory order (nibabel's Fortran order is ``[k, j, i]`` in
    C order), so each gathers contiguous runs; one copy at the end puts the result in ``[z, y, x]``
    C order. Every value is the same as gathering in ``[z, y, x]`` order (``lerp`` is elementwise).
    An integer input has no -0.0, inf or NaN, so where every weight of a pass is 0 (a slice spacing
    that divides the working one, e.g. 1 mm -> 3 mm) its upper neighbours are not read:
    ``lerp(low, high, 0)`` is exactly ``low`` then.
    """
    memory = sorted(range(3), key=lambda axis: -array.strides[axis])  # input axes, slowest in memory first
    volume = torch.from_numpy(array.transpose(memory)).to(device)
    memory_axis = [memory.index(axis) for axis in mapping.source_axes]  # working axis -> axis of ``volume``
    exact_zero_weight = not volume.is_floating_point()
    for axis in sorted(range(3), key=lambda a: shape[a] / volume.shape[memory_axis[a]]):
        along = memory_axis[axis]
        length = volume.shape[along]
        position = torch.arange(shape[axis], dtype=torch.float64, device=device)
        position = (position * mapping.scale[axis] + mapping.offset[axis]).clamp_(0, length - 1)
        if order == 0:
            volume = _gather(volume, along, torch.floor(position + 0.5).long()).float()
            continue
        low = position.floor().long()
        weight = (position - low).float()
        if exact_zero_weight and not weight.any():
            volume = _gather(volume, along, low).float()
            continue
        broadcast = [1, 1, 1]
        broadcast[along] = -1
        high = (low + 1).clamp_(max=length - 1)
        volume = _gather(volume, along, low).float().lerp_(_gather(volume, along, high).float(), weight.view(broadcast))
    return volume.permute(*memory_axis).contiguous()  # float32: every pass above converts


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
