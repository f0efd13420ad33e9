"""Label maps -> segmentation nodes with segments Kidney and Tumor, SNOMED CT terms and standard colours.

Terminology strings use Slicer's serialised ``vtkSlicerTerminologyEntry`` form
``context~category~type~type modifier~anatomic context~region~region modifier``, each code
``scheme^value^meaning``. They are stored in the segment's terminology tag, which every Slicer
version reads (``vtkSegment.SetTerminology`` only exists from Slicer 5.10). Kidney comes from Slicer's General Anatomy list; the tumor is a
Neoplasm (morphologically altered structure) in the kidney, from the DICOM master list, which
DICOM SEG export writes as the segment's property category, type and anatomic region.

DICOM SEG export (Slicer's ``DICOMSegmentationPlugin``) writes every segment of the node, visible or
not, and calls a segment "MANUAL" unless its ``DICOM.SegmentAlgorithmType`` tag says otherwise: the
cascade's segments carry ``AUTOMATIC`` and the algorithm's name, and the voxels the ensemble
disputes go into a segmentation node of their own (:func:`fill_review`), never into the result's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk

from ..colours import LABEL_COLOURS
from ..settings import LABEL_KIDNEY, LABEL_TUMOR
from .volumes import array_to_matrix, image_data_from_array, matrix_to_array, volume_array

SEGMENTATION_NODE = "vtkMRMLSegmentationNode"
_IMPORT_PREFIX = "KidneyTumorSegLabel"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class SegmentSpec:
    """A segment the cascade produces: name, label value, terminology and colour (RGB in [0, 1])."""

    name: str
    label: int
    terminology: str
    color: tuple[float, float, float]


KIDNEY = SegmentSpec(
    "Kidney", LABEL_KIDNEY,
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~^^"
    f"~{_ANATOMIC_CONTEXT}~^^~^^",
    LABEL_COLOURS[LABEL_KIDNEY].rgb,
)
TUMOR = SegmentSpec(
    "Tumor", LABEL_TUMOR,
    "Segmentation category and type - DICOM master list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
    f"~{_ANATOMIC_CONTEXT}~SCT^64033007^Kidney~^^",
    LABEL_COLOURS[LABEL_TUMOR].rgb,
)
SEGMENTS = (KIDNEY, TUMOR)
REVIEW_SEGMENT = "Review"  # where the ensemble disagrees: not anatomy, so no terminology; hidden until asked for
REVIEW_COLOR = (1.0, 0.0, 1.0)
REVIEW_ATTRIBUTE_PREFIX = "KidneyTumorSeg."
# Segment tags DICOM SEG export reads (SegmentAlgorithmType: MANUAL, SEMIAUTOMATIC or AUTOMATIC;
# SegmentAlgorithmName: a DICOM LO value, at most 64 characters).
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"
ALGORITHM_TYPE = "AUTOMATIC"
ALGORITHM_NAME = "KidneyTumorSeg KiTS19 cascaded fusion FCNs"


def oriented_image(array: np.ndarray, affine: np.ndarray) -> Any:
    """A ``vtkOrientedImageData`` with a copy of ``array`` ``[i, j, k]`` and voxel -> RAS ``affine``."""
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(image_data_from_array(array))
    image.SetImageToWorldMatrix(array_to_matrix(affine))
    return image


def segment_id(node: Any, name: str) -> str | None:
    """The ID of the segment called ``name``, or None."""
    found = node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return found or None


def has_segments(node: Any) -> bool:
    """Whether a segmentation node holds any segment (replacing it needs the user's consent)."""
    return node.GetSegmentation().GetNumberOfSegments() > 0


def fill_segmentation(node: Any, labels: np.ndarray, affine: np.ndarray) -> None:
    """Put Kidney and Tumor of ``labels`` ``[i, j, k]`` (0/1/2, voxel -> RAS ``affine``) into ``node``.

    Existing Kidney and Tumor segments are replaced, other segments are kept; both segments
    exist afterwards, empty when their label is absent. The label map's grid becomes the
    reference geometry unless ``node`` already has one (e.g. from :func:`link_to_volume`).
    """
    labels = np.asarray(labels)
    if labels.size and labels.max() > max(s.label for s in SEGMENTS):
        raise ValueError(f"labels hold values other than 0, 1, 2 (max {labels.max()})")
    segmentation = node.GetSegmentation()
    geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    image = oriented_image(labels.astype(np.uint8, copy=False), affine)
    if not segmentation.GetConversionParameter(geometry_name):
        segmentation.SetConversionParameter(geometry_name, slicer.vtkSegmentationConverter.SerializeImageGeometry(image))
    was = node.StartModify()
    try:
        for spec in SEGMENTS:
            existing = segment_id(node, spec.name)
            if existing:
                segmentation.RemoveSegment(existing)
        before = set(_segment_ids(node))
        if labels.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, node, _IMPORT_PREFIX):
            raise RuntimeError("Slicer could not import the label map into the segmentation")
        imported = {segmentation.GetSegment(i).GetLabelValue(): i for i in _segment_ids(node) if i not in before}
        for spec in SEGMENTS:
            identifier = imported.get(spec.label) or segmentation.AddEmptySegment("", spec.name, list(spec.color))
            _describe(segmentation.GetSegment(identifier), spec)
    finally:
        node.EndModify(was)


def fill_review(node: Any, disputed: np.ndarray, affine: np.ndarray) -> str:
    """Make ``node`` (a segmentation node of its own, not the result's) hold one segment "Review":
    the disputed voxels ``[i, j, k]`` (bool or 0/1, voxel -> RAS ``affine``), tagged as the cascade's
    automatic output. Earlier segments of ``node`` are removed; the node is hidden in every view
    until the user shows it. Returns the segment's ID."""
    disputed = np.asarray(disputed)
    segmentation = node.GetSegmentation()
    was = node.StartModify()
    try:
        segmentation.RemoveAllSegments()
        image = oriented_image(disputed.astype(np.uint8, copy=False), affine)
        if disputed.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, node, _IMPORT_PREFIX):
            raise RuntimeError("Slicer could not import the disputed voxels into the segmentation")
        identifier = segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments() else \
            segmentation.AddEmptySegment("", REVIEW_SEGMENT, list(REVIEW_COLOR))
        segment = segmentation.GetSegment(identifier)
        segment.SetName(REVIEW_SEGMENT)
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*REVIEW_COLOR)
        segment.SetColorAutoGenerated(False)
        _tag_algorithm(segment)
    finally:
        node.EndModify(was)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility(False)
    return identifier


def set_review_attributes(node: Any, review: dict[str, Any]) -> None:
    """Keep a case's review (``CaseReview.to_json``) with its segmentation, saved with the scene:
    attributes ``KidneyTumorSeg.ReviewScore``, ``KidneyTumorSeg.NeedsReview`` (true / false) and
    ``KidneyTumorSeg.DisputedVolumeML``."""
    node.SetAttribute(f"{REVIEW_ATTRIBUTE_PREFIX}ReviewScore", str(review["score"]))
    node.SetAttribute(f"{REVIEW_ATTRIBUTE_PREFIX}NeedsReview", "true" if review["review"] else "false")
    node.SetAttribute(f"{REVIEW_ATTRIBUTE_PREFIX}DisputedVolumeML", str(review["disputed_ml"]))


def new_segmentation_node(scene: Any, name: str) -> Any:
    """An empty segmentation node in ``scene``, with its display node."""
    node = scene.AddNewNodeByClass(SEGMENTATION_NODE, name)
    node.CreateDefaultDisplayNodes()
    return node


def link_to_volume(node: Any, volume: Any) -> None:
    """Tie a segmentation to its CT: reference geometry, reference-image role, and the CT's study
    in the subject hierarchy (what DICOM SEG export looks for)."""
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume.GetID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if hierarchy is None:
        return
    volume_item = hierarchy.GetItemByDataNode(volume)
    segmentation_item = hierarchy.GetItemByDataNode(node)
    if volume_item and segmentation_item:
        hierarchy.SetItemParent(segmentation_item, hierarchy.GetItemParent(volume_item))


def show_3d(node: Any) -> None:
    """Build closed surfaces so the segments appear in the 3D views (seconds on a full CT)."""
    node.CreateClosedSurfaceRepresentation()
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility3D(True)


def reference_grid(node: Any, reference: Any | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape ``[i, j, k]`` and voxel -> RAS affine of the grid labels are exported on: the
    ``reference`` volume's, or else the segmentation's reference geometry."""
    if reference is not None:
        matrix = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(matrix)
        return tuple(int(n) for n in reference.GetImageData().GetDimensions()), matrix_to_array(matrix)
    geometry = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    matrix, extent = vtk.vtkMatrix4x4(), [0] * 6
    if not geometry or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, matrix, extent):
        raise ValueError(f"segmentation '{node.GetName()}' has no reference geometry")
    affine = matrix_to_array(matrix)
    affine[:3, 3] = affine[:3, :3] @ np.array(extent[::2], float) + affine[:3, 3]
    return tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)), affine


def segmentation_labels(node: Any, reference: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Kidney and Tumor of a segmentation as labels ``[i, j, k]`` (uint8 0/1/2) and their affine,
    on the grid of :func:`reference_grid`. Uses a temporary label-map node in the
    segmentation's scene, removed before returning.
    """
    shape, affine = reference_grid(node, reference)
    labels = np.zeros(shape, np.uint8)
    scene = node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "KidneyTumorSeg export")
    try:
        for spec in SEGMENTS:
            identifier = segment_id(node, spec.name)
            if identifier is None or _is_empty(node, identifier):
                continue
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    node, [identifier], labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
                raise RuntimeError(f"Slicer could not export segment '{spec.name}'")
            mask = volume_array(labelmap) > 0
            if mask.shape != labels.shape:
                raise RuntimeError(f"segment '{spec.name}' exported on {mask.shape}, expected {labels.shape}")
            labels[mask] = spec.label
        return labels, affine
    finally:
        scene.RemoveNode(labelmap)


def _is_empty(node: Any, identifier: str) -> bool:
    segment = node.GetSegmentation().GetSegment(identifier)
    representation = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if representation is None:
        return True
    extent = representation.GetExtent()
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def _describe(segment: Any, spec: SegmentSpec) -> None:
    segment.SetName(spec.name)
    segment.SetNameAutoGenerated(False)
    segment.SetColor(*spec.color)
    segment.SetColorAutoGenerated(False)
    segment.SetLabelValue(spec.label)
    segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
    _tag_algorithm(segment)


def _tag_algorithm(segment: Any) -> None:
    segment.SetTag(ALGORITHM_TYPE_TAG, ALGORITHM_TYPE)
    segment.SetTag(ALGORITHM_NAME_TAG, ALGORITHM_NAME)


def segment_tag(segment: Any, name: str) -> str:
    """The value of a ``vtkSegment``'s tag ``name`` ("" when it has none)."""
    value = vtk.reference("")
    segment.GetTag(name, value)
    return str(value)


def segment_terminology(segment: Any) -> str:
    """The serialised terminology entry of a ``vtkSegment`` ("" when it has none)."""
    return segment_tag(segment, segment.GetTerminologyEntryTagName())


def _segment_ids(node: Any) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]

