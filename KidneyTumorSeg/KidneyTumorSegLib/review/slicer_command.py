"""The command that opens a case in 3D Slicer for correction: the CT, the label map as a
segmentation with segments Kidney and Tumor in the module's colours, and the crop box as an
editable ROI, with the Segment Editor open."""
from __future__ import annotations

import json
import shlex

from ..colours import BOX_COLOURS, LABEL_COLOURS
from .cases import ReviewCase

SLICER_EXECUTABLE = "Slicer"


def slicer_code(case: ReviewCase) -> str:
    """Python that Slicer runs (``--python-code``) to load ``case`` ready for the Segment Editor."""
    segments = ", ".join(f"{label}: ({_text(colour.name.capitalize())}, ({_rounded(colour.rgb)}))"
                         for label, colour in LABEL_COLOURS.items())
    lines = [
        "import slicer",
        f"labels = slicer.util.loadLabelVolume({_text(case.labels.resolve())})",
        f'segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", {_text(case.name)})',
        "slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, segmentation)",
        "slicer.mrmlScene.RemoveNode(labels)",
        f"segments = {{{segments}}}",
        "for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):",
        "    segment = segmentation.GetSegmentation().GetNthSegment(index)",
        "    name, colour = segments.get(segment.GetLabelValue(), (segment.GetName(), segment.GetColor()))",
        "    segment.SetName(name); segment.SetColor(*colour)",
    ]
    if case.image is not None:
        lines += [f"ct = slicer.util.loadVolume({_text(case.image.resolve())})",
                  "segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)",
                  "slicer.util.setSliceViewerLayers(background=ct, fit=True)"]
    if case.crop is not None:
        lines += ['roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Crop")',
                  f"roi.SetCenter({_rounded(case.crop.center)}); roi.SetSize({_rounded(case.crop.size)})",
                  f"roi.GetDisplayNode().SetColor({_rounded(BOX_COLOURS['crop'].rgb)})"]
    lines.append('slicer.util.selectModule("SegmentEditor")')
    return "\n".join(lines)


def slicer_command(case: ReviewCase) -> str:
    """The shell command (POSIX quoting) that opens ``case`` in Slicer."""
    return f"{SLICER_EXECUTABLE} --python-code {shlex.quote(slicer_code(case))}"


def _text(value: object) -> str:
    """A Python string literal in double quotes (JSON's escaping is valid Python)."""
    return json.dumps(str(value))


def _rounded(values: tuple[float, ...]) -> str:
    return ", ".join(f"{value:.3f}" for value in values)
