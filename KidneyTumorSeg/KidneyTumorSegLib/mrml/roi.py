"""Boxes <-> ROI markups (``vtkMRMLMarkupsROINode``), axis-aligned in RAS like the working frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import vtk

from ..boxes import Box
from ..colours import BOX_COLOURS
from ..geometry import WorkingFrame
from ..locate_result import RasBox

ROI_NODE = "vtkMRMLMarkupsROINode"
Color = tuple[float, float, float]


@dataclass(frozen=True)
class RoiStyle:
    """How a box is shown: its colour and whether the user may move it."""

    color: Color
    locked: bool


SEGMENTATION_BOX = RoiStyle(color=BOX_COLOURS["segmentation"].rgb, locked=True)
LANDMARK_BOX = RoiStyle(color=BOX_COLOURS["landmarks"].rgb, locked=True)
CROP_BOX = RoiStyle(color=BOX_COLOURS["crop"].rgb, locked=False)  # what stage 2 sees, editable


def roi_ras_box(roi: Any) -> RasBox:
    """The RAS bounds (mm, world) of an ROI node; a rotated ROI gives its axis-aligned hull."""
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    return RasBox((bounds[0], bounds[2], bounds[4]), (bounds[1], bounds[3], bounds[5]))


def roi_working_box(roi: Any, frame: WorkingFrame) -> Box:
    """The working-frame voxels ``[z, y, x]`` whose centres lie inside the ROI (clipped to the frame)."""
    return roi_ras_box(roi).to_box(frame)


def set_roi_box(roi: Any, box: RasBox) -> None:
    """Make ``roi`` exactly the axis-aligned box ``box`` (no rotation)."""
    with _modifying(roi):
        roi.SetAndObserveObjectToNodeMatrix(vtk.vtkMatrix4x4())
        roi.SetCenter(*box.center)
        roi.SetSize(*box.size)


def style_roi(roi: Any, style: RoiStyle) -> None:
    """Colour, lock and handles of an ROI: a locked box shows no handles, an editable one no rotation."""
    roi.SetLocked(style.locked)
    if roi.GetDisplayNode() is None:
        roi.CreateDefaultDisplayNodes()
    display = roi.GetDisplayNode()
    display.SetColor(*style.color)
    display.SetSelectedColor(*style.color)
    display.SetHandlesInteractive(not style.locked)
    display.SetRotationHandleVisibility(False)
    display.SetFillOpacity(0.05 if style.locked else 0.15)


def show_roi(roi: Any | None, box: RasBox | None, scene: Any, name: str, style: RoiStyle) -> Any | None:
    """``roi`` set to ``box`` (a new ROI node when ``roi`` is None); None when there is no box.

    An existing ROI whose box is now None is removed from the scene.
    """
    if box is None:
        if roi is not None:
            scene.RemoveNode(roi)
        return None
    if roi is None:
        roi = scene.AddNewNodeByClass(ROI_NODE, name)
    style_roi(roi, style)
    set_roi_box(roi, box)
    return roi


def set_visible(node: Any | None, visible: bool) -> None:
    """Show or hide a displayable node in every view (no-op for None)."""
    if node is None:
        return
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility(visible)


class _modifying:
    """Batch the Modified events of a node (one redraw after several changes)."""

    def __init__(self, node: Any):
        self.node = node

    def __enter__(self) -> None:
        self.was = self.node.StartModify()

    def __exit__(self, *exc: object) -> None:
        self.node.EndModify(self.was)
