"""The MRML bridge on real MRML nodes (slicer-core): volumes, ROIs, landmarks, segmentations, tables."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from KidneyTumorSegLib.boxes import Box  # noqa: E402
from KidneyTumorSegLib.geometry import index_to_world, to_working_frame, working_frame_for  # noqa: E402
from KidneyTumorSegLib.imageio import Image  # noqa: E402
from KidneyTumorSegLib.locate_result import LandmarkPoint, LocateOutcome, RasBox  # noqa: E402
from KidneyTumorSegLib.measurements import measure  # noqa: E402
from KidneyTumorSegLib.mrml.landmarks import show_landmarks  # noqa: E402
from KidneyTumorSegLib.mrml.roi import CROP_BOX, LANDMARK_BOX, SEGMENTATION_BOX, roi_ras_box, roi_working_box, show_roi  # noqa: E402
from KidneyTumorSegLib.mrml.scene import application_scene, module_parameter_node, new_headless_scene  # noqa: E402
from KidneyTumorSegLib.mrml.segmentation import (  # noqa: E402
    KIDNEY, TUMOR, fill_segmentation, link_to_volume, new_segmentation_node, segment_id, segment_terminology, segmentation_labels,
    show_3d,
)
from KidneyTumorSegLib.mrml.table import fill_measurements_table, table_rows  # noqa: E402
from KidneyTumorSegLib.mrml.volumes import add_volume, image_from_volume, volume_affine, write_volume_nifti  # noqa: E402
from KidneyTumorSegLib.report import stage1_json  # noqa: E402
from KidneyTumorSegLib.stage1 import Landmark, Stage1Result  # noqa: E402

# A rotated grid: 20° about the S axis, then 10° about R, spacing 0.9 / 0.8 / 2.5 mm.
_ROTATION = (np.array([[np.cos(0.35), -np.sin(0.35), 0], [np.sin(0.35), np.cos(0.35), 0], [0, 0, 1]])
             @ np.array([[1, 0, 0], [0, np.cos(0.17), -np.sin(0.17)], [0, np.sin(0.17), np.cos(0.17)]]))
OBLIQUE_AFFINE = np.r_[np.c_[_ROTATION @ np.diag([0.9, 0.8, 2.5]), [-40.0, 25.0, 100.0]], [[0, 0, 0, 1]]]


@pytest.fixture
def headless():
    return new_headless_scene()


@pytest.fixture(scope="module")
def ipl_case(real_kits_crops) -> Image:
    """A real KiTS19 mask crop (I,P,L axes, 0.5 mm slices) as labels ``[i, j, k]``."""
    image = real_kits_crops["case_00022"] if "case_00022" in real_kits_crops else next(iter(real_kits_crops.values()))
    return Image(np.asarray(image.dataobj, dtype=np.uint8), image.affine)


def test_volume_round_trip_keeps_ijk_order_and_affine(headless, tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(7, 5, 3)).astype(np.int16)
    volume = add_volume(headless.scene, Image(array, OBLIQUE_AFFINE), "ct")
    back = image_from_volume(volume)
    assert back.array.dtype == np.int16 and np.array_equal(back.array, array)
    assert np.allclose(back.affine, OBLIQUE_AFFINE)
    assert np.array_equal(slicer.util.arrayFromVolume(volume), array.transpose(2, 1, 0))  # Slicer's own [k, j, i]
    written = nib.load(str(write_volume_nifti(volume, tmp_path / "ct.nii")))
    assert np.array_equal(np.asarray(written.dataobj), array)
    assert np.allclose(written.affine, OBLIQUE_AFFINE, atol=1e-5)


def test_volume_affine_includes_a_linear_parent_transform(headless):
    volume = add_volume(headless.scene, Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), "ct")
    transform = headless.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(volume_affine(volume)[:3, 3], [12.5, 0, 0])


@pytest.mark.parametrize("grid", ["kits19 I,P,L", "oblique"])
def test_working_boxes_become_rois_and_come_back(headless, ipl_case, grid):
    shape, affine = (ipl_case.array.shape, ipl_case.affine) if grid != "oblique" else ((60, 70, 40), OBLIQUE_AFFINE)
    frame = working_frame_for(shape, affine)
    boxes = [Box((0, 0, 0), (2, 3, 4)), Box.full(frame.shape),
             Box(tuple(s // 4 for s in frame.shape), tuple(s // 2 for s in frame.shape))]
    for box in boxes:
        roi = show_roi(None, RasBox.from_box(box, frame.affine), headless.scene, "box", CROP_BOX)
        assert roi_working_box(roi, frame) == box
        assert np.allclose(np.array([roi_ras_box(roi).low, roi_ras_box(roi).high]), box.edge_corners_ras(frame.affine))


def test_roi_covers_the_input_voxels_slicer_would_crop(headless, ipl_case):
    """An ROI from a working-frame box selects the same I,P,L input voxels in Slicer's crop logic
    as in the engine (Slicer keeps voxels wholly inside, the engine voxel centres inside)."""
    volume = add_volume(headless.scene, ipl_case, "ct")
    frame = working_frame_for(ipl_case.array.shape, ipl_case.affine)
    box = Box((3, 20, 30), (20, 100, 150))
    ras = RasBox.from_box(box, frame.affine)
    roi = show_roi(None, ras, headless.scene, "crop", CROP_BOX)
    extent = [0] * 6
    assert slicer.vtkSlicerCropVolumeLogic.GetVoxelBasedCropOutputExtent(roi, volume, extent, True)
    slicer_box = Box(tuple(extent[0::2]), tuple(extent[1::2]))
    engine_box = Box.from_ras_bounds(np.array(ras.low), np.array(ras.high), ipl_case.affine, ipl_case.array.shape)
    assert engine_box.contains(slicer_box)
    assert all(abs(a - b) <= 1 for a, b in zip(engine_box.start + engine_box.stop, slicer_box.start + slicer_box.stop))
    # I,P,L: the input's i axis is the working z axis (3 mm working vs 0.5 mm input slices).
    assert engine_box.size[0] == pytest.approx(box.size[0] * 3.0 / ipl_case.spacing[0], abs=1)


def _stage1_on(frame, labels_working) -> Stage1Result:
    seg = Box.from_mask(labels_working > 0)
    landmark_box = Box(seg.start, tuple(b - 4 for b in seg.stop))
    z = (seg.start[0] + seg.stop[0]) / 2
    landmarks = (Landmark("left", (z, 40.0, float(seg.start[2])), 0.9), Landmark("center", (z, 60.0, 70.0), 0.7))
    crop = seg.expanded((16, 128, 128)).clipped(frame.shape)
    return Stage1Result(seg, landmark_box, seg, None, crop, landmarks, ("widths agree",))


def test_locate_output_becomes_three_styled_rois_and_labelled_landmarks(headless, ipl_case):
    frame = working_frame_for(ipl_case.array.shape, ipl_case.affine)
    stage1 = _stage1_on(frame, to_working_frame(ipl_case.array, frame, order=0, dtype=np.uint8))
    outcome = LocateOutcome.from_json(stage1_json(stage1, frame))
    same = LocateOutcome.from_stage1(stage1, frame)
    assert np.allclose(outcome.crop_box.low, same.crop_box.low, atol=1e-3) and outcome.decisions == same.decisions
    scene = headless.scene
    rois = {style: show_roi(None, box, scene, name, style) for name, box, style in (
        ("seg", outcome.segmentation_box, SEGMENTATION_BOX), ("lm", outcome.landmark_box, LANDMARK_BOX), ("crop", outcome.crop_box, CROP_BOX))}
    assert roi_working_box(rois[SEGMENTATION_BOX], frame) == stage1.segmentation_box
    assert roi_working_box(rois[LANDMARK_BOX], frame) == stage1.landmark_box
    assert roi_working_box(rois[CROP_BOX], frame) == stage1.crop_box
    assert [rois[s].GetLocked() for s in (SEGMENTATION_BOX, LANDMARK_BOX, CROP_BOX)] == [1, 1, 0]
    assert len({tuple(round(c, 3) for c in rois[s].GetDisplayNode().GetSelectedColor()) for s in rois}) == 3
    points = show_landmarks(None, outcome.landmarks, scene, "landmarks")
    assert points.GetLocked() and points.GetNumberOfControlPoints() == 2
    assert [points.GetNthControlPointLabel(n) for n in range(2)] == ["left", "center"]
    expected = index_to_world(np.array([lm.zyx for lm in stage1.landmarks]), frame.affine)
    got = np.array([points.GetNthControlPointPositionWorld(n) for n in range(2)])
    assert np.allclose(got, expected, atol=1e-3)
    show_landmarks(points, [LandmarkPoint("top", (1.0, 2.0, 3.0), 0.5)], scene, "landmarks")  # re-locate: replaced
    assert points.GetNumberOfControlPoints() == 1 and points.GetNthControlPointLabel(0) == "top"
    assert show_roi(rois[SEGMENTATION_BOX], None, scene, "seg", SEGMENTATION_BOX) is None
    assert scene.GetNodeByID(rois[SEGMENTATION_BOX].GetID()) is None


def _entry(terminology: str):
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(terminology, entry)
    return entry


def test_segmentation_holds_kidney_and_tumor_with_snomed_terms_linked_to_the_ct(headless, ipl_case):
    scene = headless.scene
    ct = add_volume(scene, Image(ipl_case.array.astype(np.int16), ipl_case.affine), "case")
    node = new_segmentation_node(scene, "case segmentation")
    link_to_volume(node, ct)
    fill_segmentation(node, ipl_case.array, ipl_case.affine)
    labels, affine = segmentation_labels(node, ct)
    assert np.array_equal(labels, ipl_case.array) and np.allclose(affine, ipl_case.affine)
    kidney = node.GetSegmentation().GetSegment(segment_id(node, "Kidney"))
    tumor = node.GetSegmentation().GetSegment(segment_id(node, "Tumor"))
    assert node.GetSegmentation().GetNumberOfSegments() == 2
    k, t = _entry(segment_terminology(kidney)), _entry(segment_terminology(tumor))
    assert (k.GetCategoryObject().GetCodeValue(), k.GetTypeObject().GetCodeValue()) == ("123037004", "64033007")
    assert (t.GetCategoryObject().GetCodeValue(), t.GetTypeObject().GetCodeValue()) == ("49755003", "108369006")
    assert t.GetAnatomicRegionObject().GetCodeValue() == "64033007"
    assert all(o.GetCodingSchemeDesignator() == "SCT" for o in (k.GetCategoryObject(), k.GetTypeObject(), t.GetTypeObject()))
    assert np.allclose(kidney.GetColor(), KIDNEY.color) and np.allclose(tumor.GetColor(), TUMOR.color)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is ct
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct))


def test_refilling_replaces_kidney_and_tumor_and_keeps_other_segments(headless):
    scene = headless.scene
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1:4, 1:5, 2:6] = 1
    node = new_segmentation_node(scene, "seg")
    node.GetSegmentation().AddEmptySegment("", "Liver", [0.5, 0.3, 0.1])
    fill_segmentation(node, labels, np.eye(4))
    only_kidney = np.zeros_like(labels)
    only_kidney[2, 2, 2] = 2
    fill_segmentation(node, only_kidney, np.eye(4))
    names = sorted(node.GetSegmentation().GetNthSegment(n).GetName() for n in range(node.GetSegmentation().GetNumberOfSegments()))
    assert names == ["Kidney", "Liver", "Tumor"]
    assert np.array_equal(segmentation_labels(node)[0], only_kidney)


def test_labels_outside_kidney_and_tumor_are_refused(headless):
    with pytest.raises(ValueError, match="other than 0, 1, 2"):
        fill_segmentation(new_segmentation_node(headless.scene, "seg"), np.full((2, 2, 2), 3, np.uint8), np.eye(4))


def test_show_3d_builds_closed_surfaces_on_a_tiny_volume(headless):
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[4:7, 4:7, 4:7] = 2
    node = new_segmentation_node(headless.scene, "seg")
    fill_segmentation(node, labels, np.diag([0.8, 0.8, 3.0, 1.0]))
    show_3d(node)
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    for name in ("Kidney", "Tumor"):
        polydata = node.GetSegmentation().GetSegment(segment_id(node, name)).GetRepresentation(surface)
        assert polydata is not None and polydata.GetNumberOfPoints() > 0
    assert node.GetDisplayNode().GetVisibility3D()


def test_measurements_table_lists_volumes_per_side_count_and_largest_diameter(headless, ipl_case):
    measured = measure(ipl_case.array, ipl_case.affine)
    rows = {row[0]: row[1:] for row in table_rows(fill_measurements_table(headless.scene.AddNewNodeByClass("vtkMRMLTableNode"), measured))}
    assert rows["Kidney volume (mL)"] == pytest.approx([measured["kidney_ml"][s] for s in ("left", "right", "total")], abs=0.01)
    assert rows["Tumor volume (mL)"][2] == pytest.approx(measured["tumor_ml"]["total"], abs=0.01)
    assert rows["Tumor count"][2] == measured["tumor_count"] >= 1
    assert sum(rows["Tumor count"][:2]) == measured["tumor_count"]
    assert rows["Largest tumor diameter (mm)"][2] == pytest.approx(measured["largest_tumor_diameter_mm"], abs=0.01)


def test_parameter_node_is_a_module_singleton(headless):
    first = module_parameter_node(headless.scene, "KidneyTumorSeg")
    assert module_parameter_node(headless.scene, "KidneyTumorSeg") is first
    assert first.GetAttribute("ModuleName") == "KidneyTumorSeg"


def test_application_scene_sets_the_slicer_globals_outside_slicer():
    scene = application_scene()
    assert slicer.mrmlScene is scene and application_scene() is scene
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    reference = add_volume(scene, Image(labels, np.eye(4)), "reference")
    node = new_segmentation_node(scene, "globals")
    fill_segmentation(node, labels, np.eye(4))
    # slicer.util helpers find the segmentations logic through slicer.modules
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id(node, "Kidney"), reference)
    assert mask.sum() == 8
    scene.RemoveNode(node)
    scene.RemoveNode(reference)
