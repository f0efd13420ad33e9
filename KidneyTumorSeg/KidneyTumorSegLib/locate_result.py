"""What ``locate`` found, as the Slicer module shows it: RAS boxes and landmark points.

The command line writes stage 1's boxes as JSON (``report.stage1_json``); this module reads that
JSON back, and builds the same view from an in-process :class:`Stage1Result`. Boxes are
axis-aligned in RAS because the working frame is.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import Box
from .geometry import WorkingFrame, index_to_world
from .stage1 import Stage1Result

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class RasBox:
    """An axis-aligned box in RAS (mm): ``low`` and ``high`` corners of its outer voxel edges."""

    low: Vector
    high: Vector

    def __post_init__(self) -> None:
        if any(h < l for l, h in zip(self.low, self.high)):
            raise ValueError(f"box corners are not low-high: {self.low} / {self.high}")

    @classmethod
    def from_corners(cls, corners: Any) -> RasBox:
        """From two opposite corners ``[[x, y, z], [x, y, z]]`` in any order."""
        points = np.asarray(corners, dtype=float)
        if points.shape != (2, 3) or not np.all(np.isfinite(points)):
            raise ValueError(f"a RAS box needs two finite corners [[x, y, z], [x, y, z]], got {corners!r}")
        return cls(_vector(points.min(axis=0)), _vector(points.max(axis=0)))

    @classmethod
    def from_box(cls, box: Box, affine: np.ndarray) -> RasBox:
        """The outer voxel edges of a working-frame ``box`` ``[z, y, x]`` on the grid of ``affine``."""
        return cls.from_corners(box.edge_corners_ras(affine))

    def to_box(self, frame: WorkingFrame) -> Box:
        """The working-frame voxels ``[z, y, x]`` whose centres lie in this box (clipped)."""
        return Box.from_ras_bounds(np.array(self.low), np.array(self.high), frame.affine, frame.shape)

    @property
    def center(self) -> Vector:
        return _vector((np.array(self.low) + np.array(self.high)) / 2.0)

    @property
    def size(self) -> Vector:
        return _vector(np.array(self.high) - np.array(self.low))

    def same_as(self, other: RasBox | None, tolerance_mm: float = 0.5) -> bool:
        """Whether ``other`` has the same corners within ``tolerance_mm`` (False for None)."""
        if other is None:
            return False
        corners = np.array([self.low, self.high]) - np.array([other.low, other.high])
        return bool(np.abs(corners).max() <= tolerance_mm)

    def to_json(self) -> dict[str, list[list[float]]]:
        """``{"ras": [[xlo, ylo, zlo], [xhi, yhi, zhi]]}``: what ``segment --box`` reads."""
        return {"ras": [list(self.low), list(self.high)]}


@dataclass(frozen=True)
class LandmarkPoint:
    """One landmark: its ``name`` (left, top, right, bottom, center), RAS position (mm) and heat-map value."""

    name: str
    ras: Vector
    value: float


@dataclass(frozen=True)
class LocateOutcome:
    """Stage 1's boxes in RAS (segmentation / landmark box may be None), landmarks and decisions."""

    segmentation_box: RasBox | None
    landmark_box: RasBox | None
    crop_box: RasBox
    landmarks: tuple[LandmarkPoint, ...]
    decisions: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocateOutcome:
        """Parse the JSON ``locate`` writes; raises ValueError when it is malformed."""
        try:
            boxes = data["boxes"]
            crop = boxes["crop"]
        except (KeyError, TypeError):
            raise ValueError("locate output has no crop box ('boxes' -> 'crop')") from None
        if crop is None:
            raise ValueError("locate output has no crop box")
        landmarks = tuple(
            LandmarkPoint(str(point["name"]), _vector(point["ras"]), float(point.get("value", 0.0)))
            for point in data.get("landmarks", [])
        )
        return cls(_optional_box(boxes.get("segmentation")), _optional_box(boxes.get("landmarks")),
                   RasBox.from_corners(crop["ras"]), landmarks, tuple(str(d) for d in data.get("decisions", [])))

    @classmethod
    def read(cls, path: str | os.PathLike) -> LocateOutcome:
        """Read and parse a ``locate`` JSON file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot read the locate output ({error})") from error
        return cls.from_json(data)

    @classmethod
    def from_stage1(cls, result: Stage1Result, frame: WorkingFrame) -> LocateOutcome:
        """The same view of an in-process stage-1 result (working-frame boxes and points)."""
        def ras(box: Box | None) -> RasBox | None:
            return None if box is None else RasBox.from_box(box, frame.affine)

        points = index_to_world(np.array([lm.zyx for lm in result.landmarks], float).reshape(-1, 3), frame.affine)
        landmarks = tuple(LandmarkPoint(lm.name, _vector(p), lm.value) for lm, p in zip(result.landmarks, points))
        return cls(ras(result.segmentation_box), ras(result.landmark_box), RasBox.from_box(result.crop_box, frame.affine),
                   landmarks, result.decisions)


def _optional_box(data: dict[str, Any] | None) -> RasBox | None:
    return None if data is None else RasBox.from_corners(data["ras"])


def _vector(values: Any) -> Vector:
    x, y, z = (float(v) for v in values)
    return (x, y, z)
