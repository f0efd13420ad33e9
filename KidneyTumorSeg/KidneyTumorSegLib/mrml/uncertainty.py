"""The ensemble's uncertainty as a volume node shown as a colour overlay on the CT in the slice
views: window 0-1, a colour bar, transparent where the models agree."""
from __future__ import annotations

from typing import Any

import slicer

from ..imageio import Image
from .volumes import VolumeData, set_volume_image

VOLUME_NODE = "vtkMRMLScalarVolumeNode"
SLICE_COMPOSITE_NODE = "vtkMRMLSliceCompositeNode"
# Slicer's Inferno colour table (a colour file, present in the application), else Iron (built in).
COLOUR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron")
OVERLAY_OPACITY = 0.5
TRANSPARENT_BELOW = 0.05  # uncertainty under this is not drawn: the CT shows where the models agree
LEGEND_TITLE = "Uncertainty"


def show_uncertainty(node: Any | None, image: Image | VolumeData, scene: Any, name: str, ct: Any, visible: bool = True) -> Any:
    """``node`` (a new scalar volume when None) holding ``image`` (float32 ``[i, j, k]`` in [0, 1])
    styled as an overlay, and shown over ``ct`` in every slice view when ``visible``; returns the node."""
    if node is None:
        node = scene.AddNewNodeByClass(VOLUME_NODE, name)
    set_volume_image(node, image)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    was = display.StartModify()
    colours = next((i for i in COLOUR_NODE_IDS if scene.GetNodeByID(i) is not None), COLOUR_NODE_IDS[-1])
    display.SetAndObserveColorNodeID(colours)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetAutoThreshold(False)
    display.SetThreshold(TRANSPARENT_BELOW, 1.0)
    display.SetApplyThreshold(True)
    display.EndModify(was)
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
    legend.SetTitleText(LEGEND_TITLE)
    set_overlay(node, visible, ct)
    return node


def set_overlay(node: Any | None, visible: bool, ct: Any | None = None) -> None:
    """Show ``node`` as the foreground layer of every slice view (over ``ct`` where a view has no
    background), or take it out of the views that show it; its colour bar follows."""
    if node is None:
        return
    scene = node.GetScene()
    for index in range(scene.GetNumberOfNodesByClass(SLICE_COMPOSITE_NODE)):
        composite = scene.GetNthNodeByClass(index, SLICE_COMPOSITE_NODE)
        if visible:
            if ct is not None and not composite.GetBackgroundVolumeID():
                composite.SetBackgroundVolumeID(ct.GetID())
            composite.SetForegroundVolumeID(node.GetID())
            composite.SetForegroundOpacity(OVERLAY_OPACITY)
        elif composite.GetForegroundVolumeID() == node.GetID():
            composite.SetForegroundVolumeID(None)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetVisibility(visible)
