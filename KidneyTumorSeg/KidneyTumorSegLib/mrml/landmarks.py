"""Stage 1's landmarks as a labelled, locked point list (``vtkMRMLMarkupsFiducialNode``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import vtk

from ..colours import LANDMARK_COLOUR
from ..locate_result import LandmarkPoint

POINT_LIST_NODE = "vtkMRMLMarkupsFiducialNode"


def show_landmarks(node: Any | None, points: Sequence[LandmarkPoint], scene: Any, name: str) -> Any:
    """``node`` (a new point list when None) holding one locked control point per landmark.

    Each point is labelled with the landmark's name; its description holds the heat-map value.
    """
    if node is None:
        node = scene.AddNewNodeByClass(POINT_LIST_NODE, name)
    was = node.StartModify()
    node.RemoveAllControlPoints()
    for point in points:
        index = node.AddControlPoint(vtk.vtkVector3d(*point.ras), point.name)
        node.SetNthControlPointDescription(index, f"heat-map peak {point.value:.2f}")
        node.SetNthControlPointLocked(index, True)
    node.SetLocked(True)
    node.EndModify(was)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*LANDMARK_COLOUR.rgb)
    display.SetSelectedColor(*LANDMARK_COLOUR.rgb)
    display.SetPointLabelsVisibility(True)
    return node

