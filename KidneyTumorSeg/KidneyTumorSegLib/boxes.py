"""Axis-aligned voxel boxes: from masks, ×4 scaling, margins, clipping, and world coordinates."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import index_to_world, world_to_index

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """Inclusive voxel ranges ``start[a] … stop[a]`` on each array axis ``a`` (``[z, y, x]`` in the working frame)."""

    start: Triple
    stop: Triple

    def __post_init__(self) -> None:
        if any(b < a for a, b in zip(self.start, self.stop)):
            raise ValueError(f"empty box: start {self.start} > stop {self.stop}")

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Box | None:
        """Bounding box of the non-zero voxels of a 3D ``mask``, or None when it is empty."""
        ranges = []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hit = np.flatnonzero(np.any(mask, axis=other))
            if hit.size == 0:
                return None
            ranges.append((int(hit[0]), int(hit[-1])))
        return cls(tuple(r[0] for r in ranges), tuple(r[1] for r in ranges))

    @classmethod
    def from_points(cls, points: np.ndarray) -> Box | None:
        """Extent of integer points ``[N, 3]``, or None for no points."""
        points = np.asarray(points).reshape(-1, 3)
        if len(points) == 0:
            return None
        return cls(tuple(int(v) for v in points.min(axis=0)), tuple(int(v) for v in points.max(axis=0)))

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> Box:
        """The box covering a whole grid of ``shape``."""
        return cls((0, 0, 0), tuple(int(s) - 1 for s in shape[:3]))

    @property
    def size(self) -> Triple:
        """Number of voxels along each axis."""
        return tuple(b - a + 1 for a, b in zip(self.start, self.stop))

    @property
    def volume(self) -> int:
        """Number of voxels inside the box."""
        return int(np.prod(self.size))

    @property
    def width(self) -> int:
        """Transverse width: the extent along x (the last working-frame axis)."""
        return self.size[2]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Numpy slices selecting the box."""
        return tuple(slice(a, b + 1) for a, b in zip(self.start, self.stop))

    def scaled_up(self, factor: int, shape: tuple[int, ...]) -> Box:
        """Map a box on the ×``factor`` down-sampled grid back: ``[a, b] -> [f·a, f·b + f − 1]``, clipped to ``shape``."""
        return Box(tuple(factor * a for a in self.start), tuple(factor * b + factor - 1 for b in self.stop)).clipped(shape)

    def expanded(self, total_growth: Triple) -> Box:
        """Grow by ``total_growth[a] // 2`` voxels on each side of axis ``a`` (not clipped)."""
        half = [g // 2 for g in total_growth]
        return Box(tuple(a - h for a, h in zip(self.start, half)), tuple(b + h for b, h in zip(self.stop, half)))

    def clipped(self, shape: tuple[int, ...]) -> Box:
        """Intersection with a grid of ``shape``; raises ValueError when nothing is left."""
        start = tuple(max(0, a) for a in self.start)
        stop = tuple(min(int(s) - 1, b) for b, s in zip(self.stop, shape))
        if any(b < a for a, b in zip(start, stop)):
            raise ValueError(f"box {self.start}-{self.stop} lies outside the image {tuple(shape)}")
        return Box(start, stop)

    def intersection(self, other: Box) -> Box | None:
        """The voxels both boxes hold, or None when they do not overlap."""
        start = tuple(max(a, c) for a, c in zip(self.start, other.start))
        stop = tuple(min(b, d) for b, d in zip(self.stop, other.stop))
        return None if any(b < a for a, b in zip(start, stop)) else Box(start, stop)

    def describe(self, spacing: tuple[float, float, float]) -> str:
        """``"Z × Y × X = N voxels (a × b × c mm)"`` for voxels of ``spacing`` (mm, same axis order)."""
        mm = " × ".join(f"{n * s:.0f}" for n, s in zip(self.size, spacing))
        return f"{' × '.join(str(n) for n in self.size)} = {self.volume} voxels ({mm} mm)"

    def contains(self, other: Box) -> bool:
        """Whether ``other`` lies inside this box."""
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))

    def edge_corners_ras(self, affine: np.ndarray) -> np.ndarray:
        """The box's outer voxel edges as two opposite RAS corners ``[2, 3]`` (mm), sorted low-high per axis."""
        corners = _corners(np.array(self.start) - 0.5, np.array(self.stop) + 0.5)
        world = index_to_world(corners, affine)
        return np.stack([world.min(axis=0), world.max(axis=0)])

    def centre_corners_ras(self, affine: np.ndarray) -> np.ndarray:
        """RAS of the first and last voxel centres ``[2, 3]`` (mm)."""
        return index_to_world(np.array([self.start, self.stop], float), affine)

    def transformed(self, mapping: np.ndarray, shape: tuple[int, ...]) -> Box:
        """The smallest box on another grid holding this box's voxels.

        ``mapping`` takes this grid's voxel indices to the other grid's (4 x 4). The result holds
        every voxel of the other grid that overlaps this box's voxels (their outer edges), so
        every voxel whose nearest voxel here lies in the box; it is clipped to ``shape``.
        """
        corners = _corners(np.array(self.start) - 0.5, np.array(self.stop) + 0.5)
        mapped = (mapping @ np.c_[corners, np.ones(8)].T)[:3].T
        # Voxel v of the other grid spans [v - 0.5, v + 0.5]: the first one reaching past the low
        # edge and the last one starting before the high edge (a shared edge does not count).
        low = np.floor(mapped.min(axis=0) + 0.5 + 1e-6).astype(int)
        high = np.ceil(mapped.max(axis=0) - 0.5 - 1e-6).astype(int)
        return Box(tuple(int(v) for v in low), tuple(int(v) for v in np.maximum(high, low))).clipped(shape)

    @classmethod
    def from_ras_bounds(cls, low_ras: np.ndarray, high_ras: np.ndarray, affine: np.ndarray, shape: tuple[int, ...]) -> Box:
        """Voxels of the grid (``affine``, ``shape``) whose centres lie in an axis-aligned RAS box, clipped."""
        corners = _corners(np.asarray(low_ras, float), np.asarray(high_ras, float))
        index = world_to_index(corners, affine)
        low = np.ceil(index.min(axis=0) - 1e-6).astype(int)
        high = np.floor(index.max(axis=0) + 1e-6).astype(int)
        return cls(tuple(int(v) for v in low), tuple(int(v) for v in np.maximum(high, low))).clipped(shape)

    def to_json(self) -> dict:
        """``{"start": [z, y, x], "stop": [z, y, x]}`` (inclusive)."""
        return {"start": list(self.start), "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: dict) -> Box:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(int(v) for v in data["start"]), tuple(int(v) for v in data["stop"]))


def _corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 8 corners ``[8, 3]`` of the axis-aligned box ``low``-``high``."""
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])], float)
