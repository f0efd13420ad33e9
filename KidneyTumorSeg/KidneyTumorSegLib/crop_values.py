"""Values computed over the stage-2 crop (the uncertainty map) onto the working frame and onto the
input grid, linearly, touching only the part of each grid that the crop covers (on the input grid,
only that part is returned)."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .boxes import Box
from .geometry import AxisMap, WorkingFrame, axis_map
from .resample_torch import _separable

_MARGIN = (2, 2, 2)  # total growth of the crop: one zero voxel on each side, so values fade to 0 past it
SLAB_SLICES = 64  # input planes along k resampled at once: bounds the memory beside the result (tens of MB)


def crop_to_frame(values: np.ndarray, crop: Box, shape: tuple[int, int, int]) -> np.ndarray:
    """``values`` ``[z, y, x]`` of ``crop`` pasted into a float32 working-frame volume of ``shape`` (0 outside)."""
    volume = np.zeros(shape, np.float32)
    volume[crop.slices] = values
    return volume


def crop_on_source(values: np.ndarray, crop: Box, frame: WorkingFrame, slab: int = SLAB_SLICES) -> tuple[np.ndarray, Box | None]:
    """``values`` ``[z, y, x]`` of ``crop`` (0 outside it) linearly resampled onto the input voxels
    near the crop.

    Returns float32 ``[i, j, k]`` in Fortran order (as NIfTI stores it) over the returned box of
    the input grid -- the input voxels the crop, grown by one zero voxel on each side, reaches; 0
    everywhere else on the input grid -- or an empty array and None when the crop holds no input
    voxel (a corner of an oblique input's frame). Axis-aligned inputs are resampled one axis at a
    time (as ``resample_torch`` prepares them), ``slab`` input planes along k at a time, each
    straight into its place: besides the result, memory holds the crop and one slab. Oblique
    inputs go through scipy.
    """
    if values.shape != crop.size:
        raise ValueError(f"values shape {values.shape} does not match the crop {crop.size}")
    grown = crop.expanded(_MARGIN).clipped(frame.shape)
    try:
        target = grown.transformed(frame.working_to_source(), frame.source_shape)
    except ValueError:
        return np.zeros((0, 0, 0), np.float32), None
    block = np.zeros(grown.size, np.float32)
    block[tuple(slice(a - g, b - g + 1) for a, b, g in zip(crop.start, crop.stop, grown.start))] = values
    # target-box index -> grown-block index
    mapping = np.linalg.inv(frame.affine @ _shift(grown.start)) @ frame.source_affine @ _shift(target.start)
    if axis_map(frame) is None:
        output = ndimage.affine_transform(block, mapping[:3, :3], offset=mapping[:3, 3], output_shape=target.size,
                                          order=1, mode="nearest", prefilter=False)
        return np.asfortranarray(output), target
    output = np.zeros(target.size[::-1], np.float32).T
    axes = [int(np.argmax(np.abs(mapping[:3, a]))) for a in range(3)]  # the block axis each input axis reads
    scale = [float(mapping[w, a]) for a, w in enumerate(axes)]
    offset = [float(mapping[w, 3]) for w in axes]
    planes = output.T  # [k, j, i] of the target box, C-contiguous rows
    for first in range(0, target.size[2], slab):
        count = min(slab, target.size[2] - first)
        # the block planes along axes[2] that these k planes read (linear: floor and ceil of their
        # positions; beyond the block they read its edge plane)
        ends = [scale[2] * k + offset[2] for k in (first, first + count - 1)]
        last = block.shape[axes[2]] - 1
        low = min(max(0, int(np.floor(min(ends)))), last)
        high = max(min(last, int(np.ceil(max(ends)))), low)
        part = block[tuple(slice(low, high + 1) if axis == axes[2] else slice(None) for axis in range(3))]
        per_axis = AxisMap((axes[2], axes[1], axes[0]), (scale[2], scale[1], scale[0]),
                           (offset[2] + scale[2] * first - low, offset[1], offset[0]))
        planes[first:first + count] = _separable(part, per_axis, (count, target.size[1], target.size[0]), order=1,
                                                   device=torch.device("cpu")).numpy()
    return output, target


def _shift(start: tuple[int, int, int]) -> np.ndarray:
    """4 x 4 map from a sub-grid's index to its parent grid's, the sub-grid starting at ``start``."""
    shift = np.eye(4)
    shift[:3, 3] = start
    return shift
