"""The working frame (SPEC §0): resampling any input grid onto it and results back.

The working frame is an axis-aligned grid with spacing ``WORKING_SPACING_ZYX`` and array axes
pointing Inferior, Posterior, Left (``[z, y, x]``), covering the input's voxel centres. An input
that is axis-aligned (any permutation or flip of the world axes: KiTS19's I,P,L, RAS, LPS, ...)
is first reoriented with nibabel's orientation tools (a view, no copy) and resampled separably;
an oblique input goes through a general affine resampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel.orientations as nio
import numpy as np
from scipy import ndimage

from .settings import WORKING_AXCODES, WORKING_SPACING_ZYX

_AXIS_ALIGNED_TOLERANCE = 1e-4


@dataclass(frozen=True)
class WorkingFrame:
    """A working-frame grid and the input grid it was made for.

    ``shape``/``affine``: the working grid ``[z, y, x]`` and its voxel -> RAS affine.
    ``source_shape``/``source_affine``: the input grid ``[i, j, k]`` as nibabel indexes it.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Working voxel size ``(z, y, x)`` in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def working_to_source(self) -> np.ndarray:
        """4 x 4 map from working voxel indices to input voxel indices."""
        return np.linalg.inv(self.source_affine) @ self.affine

    def source_to_working(self) -> np.ndarray:
        """4 x 4 map from input voxel indices to working voxel indices."""
        return np.linalg.inv(self.affine) @ self.source_affine


def working_frame_for(
    source_shape: tuple[int, ...],
    source_affine: np.ndarray,
    spacing_zyx: tuple[float, float, float] = WORKING_SPACING_ZYX,
    axcodes: tuple[str, str, str] = WORKING_AXCODES,
) -> WorkingFrame:
    """The working grid that covers the voxel centres of an input grid ``[i, j, k]``.

    Its first voxel sits at the input corner that is most (Superior, Anterior, Right) -- for a
    KiTS19 I,P,L file that is the input's own first voxel -- and it holds every working voxel
    centre inside the input's voxel-centre hull along each working axis.
    """
    directions = nio.inv_ornt_aff(nio.axcodes2ornt(axcodes), (1, 1, 1))[:3, :3]
    # inv_ornt_aff maps an I,P,L index to RAS; its columns are the unit directions of z, y, x.
    columns = np.stack([directions[:, a] * spacing_zyx[a] for a in range(3)], axis=1)
    corners = _grid_corners(source_shape)
    world = (source_affine @ corners.T)[:3]
    along = np.linalg.inv(columns) @ world  # corners in working index units
    low, high = along.min(axis=1), along.max(axis=1)
    shape = tuple(int(np.floor(h - l + 1e-4)) + 1 for l, h in zip(low, high))
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = columns @ low
    return WorkingFrame(shape, affine, tuple(int(s) for s in source_shape[:3]), np.asarray(source_affine, float))


def _grid_corners(shape: tuple[int, ...]) -> np.ndarray:
    """The 8 corner voxel centres of a grid as homogeneous index rows, shape [8, 4]."""
    last = [s - 1 for s in shape[:3]]
    return np.array([[i, j, k, 1.0] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])


def _reorientation(from_affine: np.ndarray, to_affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the axes of ``from_affine`` to those of ``to_affine``."""
    return nio.ornt_transform(nio.io_orientation(from_affine), nio.io_orientation(to_affine))


def _is_axis_aligned(affine: np.ndarray) -> bool:
    """Whether each voxel axis of ``affine`` is parallel to one world axis."""
    matrix = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.all((np.abs(matrix) < _AXIS_ALIGNED_TOLERANCE) | (np.abs(matrix) > 1 - _AXIS_ALIGNED_TOLERANCE)))


@dataclass(frozen=True)
class AxisMap:
    """An axis-aligned input grid seen from the working grid, one working axis at a time:
    working index ``n`` along axis ``a`` reads input axis ``source_axes[a]`` at index
    ``scale[a] * n + offset[a]`` (a negative scale is a flip)."""

    source_axes: tuple[int, int, int]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]


def axis_map(frame: WorkingFrame) -> AxisMap | None:
    """The per-axis index map of an axis-aligned input (any permutation or flip), None for an oblique one."""
    if not _is_axis_aligned(frame.source_affine):
        return None
    mapping = frame.working_to_source()
    axes = tuple(int(np.argmax(np.abs(mapping[:3, a]))) for a in range(3))
    return AxisMap(axes, tuple(float(mapping[s, a]) for a, s in enumerate(axes)),
                   tuple(float(mapping[s, 3]) for s in axes))


def to_working_frame(array: np.ndarray, frame: WorkingFrame, order: int, dtype: np.dtype = np.float32) -> np.ndarray:
    """Resample an input array ``[i, j, k]`` onto the working grid ``[z, y, x]``.

    ``order`` 1 (linear) for CT, 0 (nearest) for labels. Axis-aligned inputs are reoriented
    as a view and resampled with a diagonal (separable) transform; oblique ones generally.
    """
    if array.shape[:3] != frame.source_shape:
        raise ValueError(f"array shape {array.shape} does not match the frame's input grid {frame.source_shape}")
    output = np.empty(frame.shape, dtype=dtype)
    if _is_axis_aligned(frame.source_affine):
        transform = _reorientation(frame.source_affine, frame.affine)
        reoriented = nio.apply_orientation(array, transform)
        reoriented_affine = frame.source_affine @ nio.inv_ornt_aff(transform, array.shape)
        mapping = np.linalg.inv(reoriented_affine) @ frame.affine
        ndimage.affine_transform(
            reoriented, np.diag(mapping)[:3], offset=mapping[:3, 3], output_shape=frame.shape,
            output=output, order=order, mode="nearest", prefilter=False,
        )
    else:
        mapping = frame.working_to_source()
        ndimage.affine_transform(
            array, mapping[:3, :3], offset=mapping[:3, 3], output_shape=frame.shape,
            output=output, order=order, mode="nearest", prefilter=False,
        )
    return output


def labels_to_source(labels_zyx: np.ndarray, frame: WorkingFrame) -> np.ndarray:
    """Nearest-neighbour resampling of a working-frame label map back onto the input grid ``[i, j, k]``.

    Axis-aligned inputs use per-axis index look-ups (exact nearest neighbour, no interpolation
    kernel) over the input voxels that fall in the bounding box of the non-zero labels -- the
    rest stay 0 -- and come back in Fortran order, NIfTI's own, so writing them copies nothing.
    Oblique inputs use a general order-0 affine resampling.
    """
    if labels_zyx.shape != frame.shape:
        raise ValueError(f"labels shape {labels_zyx.shape} does not match the working frame {frame.shape}")
    if not _is_axis_aligned(frame.source_affine):
        mapping = frame.source_to_working()
        return ndimage.affine_transform(
            labels_zyx, mapping[:3, :3], offset=mapping[:3, 3], output_shape=frame.source_shape,
            order=0, mode="nearest", prefilter=False,
        )
    source = np.zeros(frame.source_shape, dtype=labels_zyx.dtype, order="F")
    bounds = _nonzero_bounds(labels_zyx)
    if bounds is None:
        return source
    transform = _reorientation(frame.source_affine, frame.affine)
    reoriented = nio.apply_orientation(source, transform)  # a view of ``source`` with the working axes
    reoriented_affine = frame.source_affine @ nio.inv_ornt_aff(transform, frame.source_shape)
    mapping = np.linalg.inv(frame.affine) @ reoriented_affine  # reoriented index -> working index (diagonal, > 0)
    block, target = labels_zyx[tuple(slice(low, high + 1) for low, high in bounds)], []
    for axis in (2, 1, 0):  # one axis at a time, the slice axis last (whole-slice copies): 5x np.ix_'s speed
        low, high = bounds[axis]
        index = np.floor(np.arange(reoriented.shape[axis]) * mapping[axis, axis] + mapping[axis, 3] + 0.5)
        index = np.clip(index, 0, frame.shape[axis] - 1).astype(np.intp)  # non-decreasing
        first, stop = np.searchsorted(index, low), np.searchsorted(index, high, side="right")
        block = block.take(index[first:stop] - low, axis=axis)
        target.insert(0, slice(first, stop))
    reoriented[tuple(target)] = block
    return source


def _nonzero_bounds(volume: np.ndarray) -> list[tuple[int, int]] | None:
    """Inclusive ``(first, last)`` index of the non-zero voxels along each axis, None when all are 0."""
    planes = np.flatnonzero(volume.any(axis=(1, 2)))
    if planes.size == 0:
        return None
    inside = volume[planes[0]:planes[-1] + 1].any(axis=0)
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    return [(int(planes[0]), int(planes[-1])), (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))]


def world_to_index(points_ras: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS points ``[N, 3]`` (mm) to continuous voxel indices ``[N, 3]`` of the grid of ``affine``."""
    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    return (np.linalg.inv(affine) @ np.c_[points, np.ones(len(points))].T)[:3].T


def index_to_world(indices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices ``[N, 3]`` of the grid of ``affine`` to RAS points ``[N, 3]`` (mm)."""
    indices = np.asarray(indices, dtype=np.float64).reshape(-1, 3)
    return (affine @ np.c_[indices, np.ones(len(indices))].T)[:3].T
