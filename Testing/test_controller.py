"""The panel's controller on real MRML nodes (slicer-core), with a fake process runner.

The fake runner plays the command line in-process with the engine's own JSON writers: ``locate``
writes stage 1's boxes for the case, ``segment`` labels the case inside the ``--box`` it was given.
The "CT" encodes its labels (HU = 100 · label − 100), so each output is known exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from KidneyTumorSegLib.boxes import Box  # noqa: E402
from KidneyTumorSegLib.controller import Controller, Parameters, State  # noqa: E402
from KidneyTumorSegLib.geometry import labels_to_source, to_working_frame, working_frame_for  # noqa: E402
from KidneyTumorSegLib.imageio import Image, read_image, write_image, write_label_map  # noqa: E402
from KidneyTumorSegLib.locate_result import RasBox  # noqa: E402
from KidneyTumorSegLib.measurements import measure  # noqa: E402
from KidneyTumorSegLib.mrml.roi import roi_ras_box, roi_working_box, set_roi_box  # noqa: E402
from KidneyTumorSegLib.mrml.scene import module_parameter_node, new_headless_scene, node_ids  # noqa: E402
from KidneyTumorSegLib.mrml.segmentation import (  # noqa: E402
    ALGORITHM_NAME, segment_id, segment_tag, segment_terminology, segmentation_labels,
)
from KidneyTumorSegLib.mrml.table import table_rows  # noqa: E402
from KidneyTumorSegLib.mrml.volumes import add_volume, volume_affine, volume_array  # noqa: E402
from KidneyTumorSegLib.kidney_sides import side_findings, side_warnings  # noqa: E402
from KidneyTumorSegLib.report import DEMO_NOTICE, box_from_json, kidney_finding, stage1_json  # noqa: E402
from KidneyTumorSegLib.stage1 import Landmark, Stage1Result  # noqa: E402
from KidneyTumorSegLib.uncertainty import EnsembleUncertainty, case_review, uncertainty_to_bytes  # noqa: E402


class FakeRunner:
    """A :class:`ProcessRunner` whose command the test plays: ``emit`` lines, then ``finish``."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.starts = 0
        self.cancels = 0
        self.running = False
        self._events: list[tuple] = []
        self._late: tuple | None = None

    def start(self, argv, on_line, on_finished) -> None:
        assert not self.running
        self.argv, self.on_line, self.on_finished = list(argv), on_line, on_finished
        self.starts += 1
        self.running = True

    def emit(self, data: dict) -> None:
        self._events.append(("line", json.dumps(data)))

    def finish(self, code: int = 0, stderr: str = "") -> None:
        self._events.append(("finished", code, stderr))

    def poll(self) -> bool:
        while self._events:
            event = self._events.pop(0)
            if event[0] == "line":
                self.on_line(event[1])
            else:
                self.running = False
                self.on_finished(event[1], event[2])
        return self.running

    def cancel(self) -> None:
        self.cancels += 1
        self.running = False
        self._late = (self.on_finished, self._events)  # a killed process may still report late
        self._events = []

    def report_late(self) -> None:
        on_finished, _ = self._late
        on_finished(-15, "Terminated")

    def option(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    @property
    def command(self) -> str:
        return self.argv[3]


def fake_uncertainty(labels: np.ndarray) -> np.ndarray:
    """What the fake command line calls uncertain: tumor 0.6 (disputed), kidney 0.1, else 0."""
    return np.select([labels == 2, labels == 1], [0.6, 0.1], 0.0).astype(np.float32)


def near_labels(labels: np.ndarray, affine: np.ndarray) -> tuple[Box, np.ndarray]:
    """The box one voxel around the labelled voxels (the whole grid when none), and its voxel -> RAS affine."""
    found = Box.from_mask(labels > 0)
    box = Box.full(labels.shape) if found is None else found.expanded((2, 2, 2)).clipped(labels.shape)
    shift = np.eye(4)
    shift[:3, 3] = box.start
    return box, affine @ shift


def labels_of(image: Image) -> np.ndarray:
    return np.rint((image.array.astype(np.float32) + 100) / 100).astype(np.uint8)


def fake_stage1(labels: np.ndarray, affine: np.ndarray):
    frame = working_frame_for(labels.shape, affine)
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    seg = Box.from_mask(working > 0)
    z = (seg.start[0] + seg.stop[0]) / 2
    landmarks = tuple(Landmark(name, (z, float(y), float(x)), 0.8) for name, y, x in (
        ("left", (seg.start[1] + seg.stop[1]) / 2, seg.stop[2]), ("right", (seg.start[1] + seg.stop[1]) / 2, seg.start[2]),
        ("center", (seg.start[1] + seg.stop[1]) / 2, (seg.start[2] + seg.stop[2]) / 2)))
    landmark_box = Box((seg.start[0], seg.start[1] + 2, seg.start[2]), seg.stop)
    crop = seg.expanded((4, 16, 16)).clipped(frame.shape)
    return frame, working, Stage1Result(seg, landmark_box, seg, None, crop, landmarks, ("widths agree: segmentation box used",))


def play(runner: FakeRunner, code: int = 0, demo: bool = False) -> None:
    """Do what the command line would do for the runner's command (with a ``demo`` bundle or not),
    then report its end."""
    image = read_image(runner.argv[4])
    labels = labels_of(image)
    frame, working, stage1 = fake_stage1(labels, image.affine)
    output = Path(runner.option("-o"))
    runner.emit({"type": "progress", "fraction": 0.5, "stage": "stage1", "model": "stage1"})
    if runner.command == "locate":
        output.write_text(json.dumps(stage1_json(stage1, frame)))
    else:
        box_file = runner.option("--box")
        crop = stage1.crop_box if box_file is None else box_from_json(json.loads(Path(box_file).read_text()), frame)
        inside = np.zeros(frame.shape, np.uint8)
        inside[crop.slices] = working[crop.slices]
        result = labels_to_source(inside, frame)
        write_label_map(output, result, image.affine)
        measured = measure(result, image.affine)
        sides = side_findings(measured, None)
        finding = kidney_finding(sides, stage1 if box_file is None else None, bool(labels.any()))
        uncertainty = fake_uncertainty(result)
        review = case_review(EnsembleUncertainty(uncertainty, None), result, abs(np.linalg.det(image.affine[:3, :3])) / 1000)
        near, near_affine = near_labels(result, image.affine)  # as the command line writes them: the voxels near the crop
        write_image(Path(runner.option("--uncertainty")), uncertainty_to_bytes(uncertainty[near.slices]), near_affine)
        write_label_map(Path(runner.option("--review-mask")), uncertainty[near.slices] >= review.disputed_threshold, near_affine)
        report = {"measurements": measured, "kidneys": sides, "warnings": side_warnings(sides), **finding,
                  "bundle": {"demo": demo}, "review": review.review,
                  "uncertainty": review.to_json()}
        Path(runner.option("--report")).write_text(json.dumps(report))
    runner.emit({"type": "done", "output": str(output)})
    runner.finish(code)


@pytest.fixture(scope="module")
def case(real_kits_crops) -> Image:
    """A real KiTS19 crop (I,P,L), every second in-plane voxel, as labels ``[i, j, k]``."""
    image = real_kits_crops["case_00002"] if "case_00002" in real_kits_crops else next(iter(real_kits_crops.values()))
    labels = np.asarray(image.dataobj, dtype=np.uint8)[:, ::2, ::2]
    return Image(np.ascontiguousarray(labels), image.affine @ np.diag([1.0, 2.0, 2.0, 1.0]))


@pytest.fixture
def setup(case):
    headless = new_headless_scene()
    scene = headless.scene
    volume = add_volume(scene, Image(case.array.astype(np.int16) * 100 - 100, case.affine), "case")
    runner = FakeRunner()
    questions: list[str] = []
    answers = {"value": False}

    def confirm(question: str) -> bool:
        questions.append(question)
        return answers["value"]

    controller = Controller(scene, module_parameter_node(scene, "KidneyTumorSeg"), runner, confirm=confirm)
    yield headless, volume, runner, controller, questions, answers
    controller.close()


def scene_state(controller: Controller) -> tuple:
    node = controller.parameter_node
    return node_ids(controller.scene), {name: node.GetParameter(name) for name in node.GetParameterNames()}


def locate(controller: Controller, runner: FakeRunner) -> None:
    assert controller.locate()
    play(runner)
    controller.poll()
    assert controller.state is State.LOCATED


def test_locate_drag_segment_on_real_nodes(setup, case):
    headless, volume, runner, controller, _, _ = setup
    assert controller.state is State.NO_INPUT and not controller.locate()
    controller.update(input_volume=volume)
    assert controller.state is State.READY

    assert controller.locate() and controller.state is State.LOCATING and runner.command == "locate"
    assert np.array_equal(read_image(runner.argv[4]).array, case.array.astype(np.int16) * 100 - 100)  # the CT as written
    runner.emit({"type": "progress", "fraction": 0.25, "stage": "stage1", "model": "stage1"})
    controller.poll()
    assert controller.fraction == 0.25 and "Locating" in controller.status()
    play(runner)
    controller.poll()
    assert controller.state is State.LOCATED and controller.decisions == ("widths agree: segmentation box used",)

    p = controller.parameters
    frame, working, stage1 = fake_stage1(case.array, case.affine)
    assert roi_working_box(p.crop_roi, frame) == stage1.crop_box
    assert roi_working_box(p.segmentation_roi, frame) == stage1.segmentation_box
    assert roi_working_box(p.landmark_roi, frame) == stage1.landmark_box
    assert (p.segmentation_roi.GetLocked(), p.landmark_roi.GetLocked(), p.crop_roi.GetLocked()) == (1, 1, 0)
    labels = [p.landmarks.GetNthControlPointLabel(n) for n in range(p.landmarks.GetNumberOfControlPoints())]
    assert labels == ["left", "right", "center"]

    # Segment with stage 1's crop as it was located: stage 1's support rule applies inside it.
    assert controller.segment() and runner.option("--box-rule") == "support"
    controller.cancel()

    # The clinician drags the crop box's right face (patient's right = low RAS x) inwards to the middle.
    located = roi_ras_box(p.crop_roi)
    middle = located.center[0]
    set_roi_box(p.crop_roi, RasBox((middle, *located.low[1:]), located.high))
    assert controller.segment() and controller.state is State.SEGMENTING and runner.command == "segment"
    assert runner.option("--box-rule") == "authority"  # a dragged box is the user's: stage 1's support does not veto it
    sent = json.loads(Path(runner.option("--box")).read_text())
    assert np.allclose(sent["ras"], [[middle, *located.low[1:]], list(located.high)])
    dragged = box_from_json(sent, frame)
    assert dragged != stage1.crop_box and dragged == roi_working_box(p.crop_roi, frame)
    play(runner)
    controller.poll()
    assert controller.state is State.DONE, controller.error

    p = controller.parameters
    expected_working = np.zeros(frame.shape, np.uint8)
    expected_working[dragged.slices] = working[dragged.slices]
    expected = labels_to_source(expected_working, frame)
    got, affine = segmentation_labels(p.output_segmentation, volume)
    assert np.array_equal(got, expected) and np.allclose(affine, case.affine)
    assert 0 < np.count_nonzero(expected) < np.count_nonzero(case.array)  # the drag cut one kidney out
    assert segment_id(p.output_segmentation, "Kidney") and segment_id(p.output_segmentation, "Tumor")
    assert "64033007" in segment_terminology(p.output_segmentation.GetSegmentation().GetSegment(segment_id(p.output_segmentation, "Kidney")))
    rows = {row[0]: row[1:] for row in table_rows(p.results_table)}
    assert rows["Kidney volume (mL)"][2] == pytest.approx(measure(expected, case.affine)["kidney_ml"]["total"], abs=0.01)
    assert controller.measurements["tumor_count"] == measure(expected, case.affine)["tumor_count"]


def test_segment_without_locate_runs_the_whole_cascade(setup, case):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume, show_3d=False)
    assert controller.segment()
    assert runner.option("--box") is None and runner.option("--report") is not None
    play(runner)
    controller.poll()
    assert controller.state is State.DONE
    frame, working, stage1 = fake_stage1(case.array, case.affine)
    expected = np.zeros(frame.shape, np.uint8)
    expected[stage1.crop_box.slices] = working[stage1.crop_box.slices]
    got = segmentation_labels(controller.parameters.output_segmentation, volume)[0]
    assert np.array_equal(got, labels_to_source(expected, frame)) and got.any()


def segment_mask(node, name: str, reference) -> np.ndarray:
    """One segment of ``node`` as a bool array ``[i, j, k]`` on ``reference``'s grid."""
    scene = node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            node, [segment_id(node, name)], labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        return volume_array(labelmap) > 0
    finally:
        scene.RemoveNode(labelmap)


def segment_names(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return sorted(segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments()))


def test_the_uncertainty_overlay_the_review_segment_and_the_score(setup, case):
    headless, volume, runner, controller, _, _ = setup
    scene = headless.scene
    view = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # a slice view's layers, as Slicer has three
    controller.update(input_volume=volume, show_3d=False)
    assert controller.segment() and runner.option("--uncertainty") is not None
    play(runner)
    controller.poll()
    assert controller.state is State.DONE, controller.error
    p = controller.parameters
    labels = segmentation_labels(p.output_segmentation, volume)[0]

    overlay = p.uncertainty_volume
    near, near_affine = near_labels(labels, case.affine)
    assert overlay.GetName() == "case uncertainty" and volume_array(overlay).shape == near.size  # only near the crop
    np.testing.assert_allclose(volume_array(overlay), fake_uncertainty(labels)[near.slices], atol=0.5 / 255)
    assert volume_array(overlay).dtype == np.float32 and np.allclose(volume_affine(overlay), near_affine)
    display = overlay.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeIron"  # Inferno is a colour file of the application
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (1.0, 0.5, 0)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.05)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(overlay)
    assert legend.GetVisibility() and legend.GetTitleText() == "Uncertainty"
    assert (view.GetForegroundVolumeID(), view.GetBackgroundVolumeID()) == (overlay.GetID(), volume.GetID())
    assert view.GetForegroundOpacity() == 0.5

    # The disputed voxels live in a node of their own, linked to the CT and hidden; the result holds
    # Kidney and Tumor only, so DICOM SEG export of it writes two segments, both AUTOMATIC.
    result, disputed = p.output_segmentation, p.review_segmentation
    assert disputed.GetName() == "case review" and not disputed.GetDisplayNode().GetVisibility()
    assert disputed.GetNodeReference(disputed.GetReferenceImageGeometryReferenceRole()) is volume
    assert np.array_equal(segment_mask(disputed, "Review", volume), labels == 2) and (labels == 2).any()
    assert segment_names(result) == ["Kidney", "Tumor"] and segment_names(disputed) == ["Review"]
    for node, name in ((result, "Kidney"), (result, "Tumor"), (disputed, "Review")):
        segment = node.GetSegmentation().GetSegment(segment_id(node, name))
        assert segment_tag(segment, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"
        assert segment_tag(segment, "DICOM.SegmentAlgorithmName") == ALGORITHM_NAME

    report = controller.review
    voxel_ml = abs(np.linalg.det(case.affine[:3, :3])) / 1000
    assert report["disputed_ml"] == pytest.approx(np.count_nonzero(labels == 2) * voxel_ml, abs=0.01)
    rows = {row[0]: row[1:] for row in table_rows(p.results_table)}
    assert rows["Review score (share disputed, 0-1)"][2] == pytest.approx(report["score"], abs=0.005)
    assert rows["Needs review (1 = yes)"][2] == float(report["review"])
    assert rows["Disputed volume (mL)"][2] == pytest.approx(report["disputed_ml"], abs=0.005)
    assert f"Review score {report['score']:.2f}" in controller.status()
    attributes = {name: p.output_segmentation.GetAttribute(f"KidneyTumorSeg.{name}") for name in ("ReviewScore", "NeedsReview", "DisputedVolumeML")}
    assert attributes == {"ReviewScore": str(report["score"]), "NeedsReview": "true" if report["review"] else "false",
                          "DisputedVolumeML": str(report["disputed_ml"])}

    controller.update(show_uncertainty=False)
    assert not view.GetForegroundVolumeID() and not legend.GetVisibility()
    controller.update(show_uncertainty=True)
    assert view.GetForegroundVolumeID() == overlay.GetID() and legend.GetVisibility()

    nodes = node_ids(scene)
    other = add_volume(scene, Image(case.array.astype(np.int16), case.affine), "other")
    controller.update(input_volume=other)
    assert controller.parameters.uncertainty_volume is None and controller.review is None
    assert controller.parameters.review_segmentation is None
    assert not view.GetForegroundVolumeID()  # the old case's overlay leaves the views
    assert node_ids(scene) - nodes == {other.GetID()}


@pytest.mark.parametrize("run", ["locate", "segment"])
def test_cancel_kills_the_run_and_leaves_the_scene_as_it_was(setup, run):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume)
    locate(controller, runner)
    before = scene_state(controller)
    crop_before = roi_ras_box(controller.parameters.crop_roi)
    assert getattr(controller, run)()
    job_folder = Path(runner.option("-o")).parent
    runner.emit({"type": "progress", "fraction": 0.4, "stage": "stage2", "model": "KT"})
    controller.poll()
    controller.cancel()
    assert runner.cancels == 1 and controller.state is State.CANCELLED and not controller.running
    runner.report_late()  # the killed process's exit arrives after the cancel: ignored
    controller.poll()
    assert controller.state is State.CANCELLED
    assert scene_state(controller) == before
    assert roi_ras_box(controller.parameters.crop_roi) == crop_before
    assert not job_folder.exists()
    assert controller.locate()  # a new run may start at once


@pytest.mark.parametrize("told", [True, False])
def test_removing_the_ct_during_a_run_cancels_it_or_refuses_its_results(setup, told):
    """The panel tells the controller when a node leaves the scene: the run is cancelled. Where
    nobody tells it (the console), the finished run's results are refused, not built on a volume
    that is gone."""
    headless, volume, runner, controller, _, _ = setup
    scene = headless.scene
    other = add_volume(scene, Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), "other")
    controller.update(input_volume=volume, show_3d=False)
    nodes = node_ids(scene)
    assert controller.segment()
    play(runner)  # the command line has written its outputs, not yet reported
    job_folder = Path(runner.option("-o")).parent
    controller.node_removed(other)  # another node leaving changes nothing
    assert controller.running and runner.cancels == 0
    scene.RemoveNode(volume)
    if told:
        controller.node_removed(volume)
        assert runner.cancels == 1 and controller.status().startswith("Cancelled: the input volume 'case' was removed")
    else:
        controller.poll()
        assert controller.status().startswith("Failed: the input volume 'case' was removed from the scene")
    assert controller.state is State.NO_INPUT  # the CT is gone: MRML dropped the reference to it
    assert not controller.running and node_ids(scene) == nodes - {volume.GetID()} and not job_folder.exists()
    controller.poll()  # a late report of the killed run changes nothing
    assert node_ids(scene) == nodes - {volume.GetID()}


def test_a_failed_run_reports_the_error_and_adds_nothing(setup):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume)
    before = scene_state(controller)
    assert controller.segment()
    runner.finish(1, "INFO: loading\nkidneytumorseg: error: bundle folder not found")
    controller.poll()
    assert controller.state is State.FAILED and controller.error == "bundle folder not found"
    assert "bundle folder not found" in controller.status()
    assert scene_state(controller) == before


def test_an_unreadable_result_is_a_failure_and_its_nodes_are_removed(setup):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume)
    before = scene_state(controller)
    assert controller.locate()
    Path(runner.option("-o")).write_text(json.dumps({"boxes": {"crop": None}}))
    runner.finish(0)
    controller.poll()
    assert controller.state is State.FAILED and "crop box" in controller.error
    assert scene_state(controller) == before


def test_an_existing_segmentation_is_replaced_only_after_confirmation(setup):
    _, volume, runner, controller, questions, answers = setup
    controller.update(input_volume=volume, show_3d=False)
    assert controller.segment()
    play(runner)
    controller.poll()
    first = controller.parameters.output_segmentation
    nodes = node_ids(controller.scene)
    assert not controller.segment()  # the user declines
    assert len(questions) == 1 and first.GetName() in questions[0] and runner.starts == 1
    assert controller.state is State.DONE and "kept" in controller.status()
    answers["value"] = True
    assert controller.segment()
    play(runner)
    controller.poll()
    assert controller.state is State.DONE and controller.parameters.output_segmentation is first
    assert node_ids(controller.scene) == nodes  # same segmentation and table nodes, refilled
    controller.update(output_segmentation=None)  # "Create new segmentation": no question
    assert controller.segment() and len(questions) == 2


def test_a_new_input_forgets_boxes_and_outputs(setup, case):
    headless, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume)
    locate(controller, runner)
    old = controller.parameters
    other = add_volume(headless.scene, Image(case.array.astype(np.int16), case.affine), "other")
    controller.update(input_volume=other)
    p = controller.parameters
    assert controller.state is State.READY
    assert (p.crop_roi, p.segmentation_roi, p.landmark_roi, p.landmarks, p.output_segmentation) == (None,) * 5
    assert not old.crop_roi.GetDisplayNode().GetVisibility()


def test_show_and_hide_boxes_and_landmarks(setup):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume)
    locate(controller, runner)
    controller.update(show_segmentation_box=False, show_landmarks=False)
    p = controller.parameters
    assert not p.segmentation_roi.GetDisplayNode().GetVisibility()
    assert p.landmark_roi.GetDisplayNode().GetVisibility() and p.crop_roi.GetDisplayNode().GetVisibility()
    assert not p.landmarks.GetDisplayNode().GetVisibility()
    locate(controller, runner)  # a new Locate keeps the user's choice
    assert not controller.parameters.segmentation_roi.GetDisplayNode().GetVisibility()


def test_options_reach_the_command_line(setup):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume, bundle_path="/models/kits", device="cpu", members=("KT", "K1"),
                      overlap=0.25, min_tumor_pixels=32)
    assert controller.segment()
    assert (runner.option("--bundle"), runner.option("--device"), runner.option("--members")) == ("/models/kits", "cpu", "KT,K1")
    assert float(runner.option("--overlap")) == 0.25 and runner.option("--min-tumor-pixels") == "32"
    assert "--progress" in runner.argv and runner.option("--progress") == "json"
    assert "--keep-all-components" not in runner.argv  # the support rule is on by default
    controller.update(keep_all_components=True)
    assert "--keep-all-components" in controller.parameters.run_options().argv()
    assert "--allow-partial" not in runner.argv  # a bundle lacking models is refused by default
    controller.update(allow_partial=True)
    assert "--allow-partial" in controller.parameters.run_options().argv()


def test_parameters_survive_saving_and_reloading_the_scene(setup, tmp_path):
    headless, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume, device="cpu", members=("KT", "K1"), overlap=0.25, min_tumor_pixels=32,
                      keep_all_components=True, show_landmark_box=False, show_3d=False, bundle_path=str(tmp_path / "my bundle"))
    locate(controller, runner)
    assert controller.segment()
    play(runner)
    controller.poll()
    saved = controller.parameters
    scene = headless.scene
    for node in (saved.input_volume, saved.crop_roi, saved.segmentation_roi, saved.landmark_roi, saved.landmarks,
                 saved.output_segmentation, saved.results_table):
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(tmp_path / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node)
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    reloaded = new_headless_scene()
    reloaded.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.scene.Connect()
    node = module_parameter_node(reloaded.scene, "KidneyTumorSeg")
    restored = Parameters.load(node)
    for name in ("bundle_path", "device", "members", "overlap", "min_tumor_pixels", "keep_all_components", "show_segmentation_box",
                 "show_landmark_box", "show_landmarks", "show_3d"):
        assert getattr(restored, name) == getattr(saved, name), name
    for name in ("input_volume", "crop_roi", "segmentation_roi", "landmark_roi", "landmarks", "output_segmentation", "results_table"):
        assert getattr(restored, name).GetName() == getattr(saved, name).GetName(), name
        assert getattr(restored, name).GetClassName() == getattr(saved, name).GetClassName(), name
    assert np.allclose(np.array([roi_ras_box(restored.crop_roi).low, roi_ras_box(restored.crop_roi).high]),
                       np.array([roi_ras_box(saved.crop_roi).low, roi_ras_box(saved.crop_roi).high]), atol=1e-3)
    assert restored.crop_roi.GetLocked() == 0 and restored.segmentation_roi.GetLocked() == 1
    assert restored.landmarks.GetNumberOfControlPoints() == 3
    assert np.array_equal(segmentation_labels(restored.output_segmentation, restored.input_volume)[0],
                          segmentation_labels(saved.output_segmentation, saved.input_volume)[0])
    assert Controller(reloaded.scene, node, FakeRunner()).state is State.LOCATED


def test_parameters_text_round_trip_and_bad_values(setup):
    headless, *_ = setup
    node = headless.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    Parameters(members=("KT",), overlap=0.75, show_3d=False).save(node)
    assert (node.GetParameter("members"), node.GetParameter("overlap"), node.GetParameter("show_3d")) == ("KT", "0.75", "false")
    node.SetParameter("min_tumor_pixels", "many")
    node.SetParameter("show_landmarks", "maybe")
    loaded = Parameters.load(node)
    assert loaded.members == ("KT",) and loaded.overlap == 0.75 and loaded.show_3d is False
    assert loaded.min_tumor_pixels == Parameters().min_tumor_pixels and loaded.show_landmarks is True


def test_console_controller_keeps_parameters_in_memory(case):
    headless = new_headless_scene()
    volume = add_volume(headless.scene, Image(case.array.astype(np.int16) * 100 - 100, case.affine), "case")
    runner = FakeRunner()
    controller = Controller(headless.scene, None, runner)
    controller.update(input_volume=volume, show_3d=False)
    before = node_ids(headless.scene)
    locate(controller, runner)
    assert controller.parameters.crop_roi is not None
    assert not any(headless.scene.GetNodeByID(i).IsA("vtkMRMLScriptedModuleNode") for i in node_ids(headless.scene) - before)
    controller.close()


def test_segment_folder_writes_a_slicer_segmentation_per_case(case, tmp_path):
    from KidneyTumorSegLib.folder_segmentation import segment_folder
    from KidneyTumorSegLib.mrml.segmentation_file import read_segmentation_file

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    small = Image(case.array[::4, ::2, ::2].astype(np.int16) * 100 - 100, case.affine @ np.diag([4.0, 2.0, 2.0, 1.0]))
    for name in ("case_00001", "case_00002"):
        (inputs / name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(small.array, small.affine), str(inputs / name / "imaging.nii.gz"))

    class BatchRunner(FakeRunner):
        def start(self, argv, on_line, on_finished) -> None:
            super().start(argv, on_line, on_finished)
            assert self.command == "batch" and argv[4:6] == [str(inputs), str(outputs)]
            for number, name in enumerate(("case_00001", "case_00002"), start=1):
                image = read_image(inputs / name / "imaging.nii.gz")
                write_label_map(outputs / f"{name}.nii.gz", labels_of(image), image.affine, overwrite=True)
                self.emit({"type": "progress", "fraction": number / 2, "stage": "batch", "model": name})
            self.finish(0)

    progress = []
    written = segment_folder(inputs, outputs, BatchRunner(), on_progress=lambda f, name: progress.append((f, name)))
    assert [p.name for p in written] == ["case_00001.seg.nrrd", "case_00002.seg.nrrd"]
    assert progress == [(0.5, "case_00001"), (1.0, "case_00002")]
    read = read_segmentation_file(written[0])
    assert np.array_equal(read.labels, labels_of(small)) and set(read.segments) == {"Kidney", "Tumor"}
    assert segment_folder(inputs, outputs, BatchRunner()) == []  # existing segmentations are kept

    class FailingRunner(FakeRunner):
        def start(self, argv, on_line, on_finished) -> None:
            super().start(argv, on_line, on_finished)
            self.finish(2, "kidneytumorseg: error: unrecognized arguments")

    with pytest.raises(RuntimeError, match="unrecognized arguments"):
        segment_folder(inputs, outputs, FailingRunner())


def test_a_bundle_folder_is_remembered_once_after_a_successful_run_only(setup, tmp_path):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume, bundle_path=str(tmp_path / "my bundle"), show_3d=False)
    assert controller.segment()
    runner.finish(1, "kidneytumorseg: error: bundle folder not found")
    controller.poll()
    assert controller.bundle_to_remember() == ""
    locate(controller, runner)
    assert controller.bundle_to_remember() == str(tmp_path / "my bundle") and controller.bundle_to_remember() == ""
    controller.update(bundle_path="")  # the shipped bundle: nothing to remember
    locate(controller, runner)
    assert controller.bundle_to_remember() == ""


def test_an_empty_result_says_so_with_stage_1s_decision(setup, case):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume, show_3d=False)
    locate(controller, runner)
    assert "green crop box" in controller.status()
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    corner = (bounds[0], bounds[2], bounds[4])  # a corner of the image, away from both kidneys
    set_roi_box(controller.parameters.crop_roi, RasBox(corner, tuple(v + 8 for v in corner)))
    assert controller.segment()
    play(runner)
    controller.poll()
    assert controller.state is State.DONE
    assert not segmentation_labels(controller.parameters.output_segmentation, volume)[0].any()
    status = controller.status()
    assert status.startswith("Done: no kidney found, the segmentation is empty")
    assert "the crop box was given" in status and DEMO_NOTICE not in status


def test_a_result_of_the_demo_bundle_is_named_a_demo(setup):
    _, volume, runner, controller, _, _ = setup
    controller.update(input_volume=volume, show_3d=False)
    assert controller.segment()
    play(runner, demo=True)
    controller.poll()
    assert controller.state is State.DONE and controller.status().startswith("Done: left kidney: found, ")
    assert controller.status().endswith(f"{DEMO_NOTICE}.")
