"""Everything the KidneyTumorSeg panel decides, without Qt: parameters, states, Locate / Segment /
Cancel, and what each does to the scene.

States: no input -> ready -> locating -> located -> segmenting -> done, or cancelled / failed
from either run. Both runs go out of process through an injected :class:`ProcessRunner`; nodes
are created only when a run has finished and its output was read, so a cancelled or failed run
leaves the scene as it was. The Qt widget, the console API and the tests all drive this class.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .colours import BOX_COLOURS
from .imageio import Image, read_image
from .kidney_sides import per_side_lines
from .locate_result import LocateOutcome, RasBox
from .mrml.landmarks import show_landmarks
from .mrml.roi import CROP_BOX, LANDMARK_BOX, SEGMENTATION_BOX, roi_ras_box, set_visible, show_roi
from .mrml.scene import node_ids
from .mrml.segmentation import (
    fill_review, fill_segmentation, has_segments, link_to_volume, new_segmentation_node, set_review_attributes, show_3d,
)
from .mrml.table import TABLE_NODE, fill_measurements_table
from .mrml.uncertainty import set_overlay, show_uncertainty
from .mrml.volumes import volume_affine, write_volume_nifti
from .process import CliCommand, DoneEvent, ProcessRunner, ProgressEvent, RunOptions, parse_line
from .report import DEMO_NOTICE, made_by_demo
from .settings import DEFAULT_SETTINGS
from .uncertainty import uncertainty_from_bytes

logger = logging.getLogger(__name__)

Confirm = Callable[[str], bool]


class State(enum.Enum):
    NO_INPUT = "no input"
    READY = "ready"
    LOCATING = "locating"
    LOCATED = "located"
    SEGMENTING = "segmenting"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


RUNNING = (State.LOCATING, State.SEGMENTING)
_STAGE_NAMES = {"stage1": "Locating the kidneys", "stage2": "Segmenting", "batch": "Case"}


def _node() -> Any:
    return field(default=None, metadata={"node": True})


@dataclass
class Parameters:
    """The panel's state. Node fields are stored as node references of the parameter node, the
    others as string parameters, both under the field's name, so they are saved with the scene."""

    input_volume: Any = _node()
    crop_roi: Any = _node()
    segmentation_roi: Any = _node()
    landmark_roi: Any = _node()
    landmarks: Any = _node()
    output_segmentation: Any = _node()
    results_table: Any = _node()
    uncertainty_volume: Any = _node()
    review_segmentation: Any = _node()
    bundle_path: str = ""
    device: str = "auto"
    members: tuple[str, ...] = ()
    overlap: float = 0.25
    min_tumor_pixels: int = DEFAULT_SETTINGS.fusion.min_tumor_component_pixels
    keep_all_components: bool = not DEFAULT_SETTINGS.stage1.support_components
    allow_partial: bool = False
    show_segmentation_box: bool = True
    show_landmark_box: bool = True
    show_landmarks: bool = True
    show_3d: bool = True
    show_uncertainty: bool = True

    def save(self, node: Any) -> None:
        """Write every field to a ``vtkMRMLScriptedModuleNode`` (one Modified event)."""
        was = node.StartModify()
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("node"):
                node.SetNodeReferenceID(item.name, None if value is None else value.GetID())
            else:
                node.SetParameter(item.name, _to_text(value))
        node.EndModify(was)

    @classmethod
    def load(cls, node: Any) -> Parameters:
        """Read the fields from a parameter node; missing or unreadable ones keep their defaults."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.metadata.get("node"):
                values[item.name] = node.GetNodeReference(item.name)
            elif node.GetParameter(item.name):
                try:
                    values[item.name] = _from_text(node.GetParameter(item.name), type(item.default))
                except ValueError:
                    logger.warning("parameter %s: ignoring unreadable value %r", item.name, node.GetParameter(item.name))
        return cls(**values)

    def run_options(self) -> RunOptions:
        return RunOptions(self.bundle_path, self.device, self.members, self.overlap, self.min_tumor_pixels,
                          self.keep_all_components, self.allow_partial)


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _from_text(text: str, kind: type) -> Any:
    if kind is bool:
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if kind is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return kind(text)


@dataclass
class _Job:
    kind: State
    volume: Any
    folder: Path
    output: Path
    report: Path | None = None
    uncertainty: Path | None = None
    review_mask: Path | None = None


def _refuse(message: str) -> bool:
    return False


class Controller:
    """Drives Locate, Segment and Cancel on one scene.

    ``parameter_node``: a ``vtkMRMLScriptedModuleNode`` holding :class:`Parameters` (None keeps
    them in memory, for console use). ``confirm(question)`` asks before an existing segmentation
    is replaced (the default refuses). ``on_change()`` is called after every state or progress
    change. Callbacks of the runner arrive through :meth:`poll`.

    After a segmentation, :attr:`review` is its review summary (the flag's score and verdict,
    review_flag.py, with the disputed volume of uncertainty.CaseReview), else None.
    """

    def __init__(self, scene: Any, parameter_node: Any | None, runner: ProcessRunner, command: CliCommand | None = None,
                 confirm: Confirm = _refuse, on_change: Callable[[], None] | None = None):
        self.scene = scene
        self.parameter_node = parameter_node
        self.runner = runner
        self.command = command or CliCommand()
        self.confirm = confirm
        self.on_change = on_change or (lambda: None)
        self._memory = Parameters()
        self._job: _Job | None = None
        self._outcome: State | None = None
        self._work_dir: Path | None = None
        self._input_cache: tuple[tuple, Path] | None = None
        self.fraction = 0.0
        self.message = ""
        self.error = ""
        self.decisions: tuple[str, ...] = ()
        self.measurements: dict[str, Any] | None = None
        self.report: dict[str, Any] = {}
        self._bundle_used = ""

    # -- parameters --------------------------------------------------------------------------
    @property
    def parameters(self) -> Parameters:
        return self._memory if self.parameter_node is None else Parameters.load(self.parameter_node)

    def update(self, **changes: Any) -> Parameters:
        """Change parameters. A new input volume forgets the located boxes (hidden, kept in the
        scene) and the output nodes, so the next result goes into new nodes."""
        current = self.parameters
        new = dataclasses.replace(current, **changes)
        if not _same_node(new.input_volume, current.input_volume):
            if self.running:
                raise RuntimeError("the input cannot change while a run is in progress")
            for node in (current.crop_roi, current.segmentation_roi, current.landmark_roi, current.landmarks):
                set_visible(node, False)
            set_overlay(current.uncertainty_volume, False)
            new = dataclasses.replace(new, crop_roi=None, segmentation_roi=None, landmark_roi=None, landmarks=None,
                                      output_segmentation=None, results_table=None, uncertainty_volume=None,
                                      review_segmentation=None)
            self._outcome, self.decisions, self.measurements, self.report = None, (), None, {}
        self._store(new)
        self._show_markups(new)
        if new.show_uncertainty != current.show_uncertainty:
            set_overlay(new.uncertainty_volume, new.show_uncertainty, new.input_volume)
        self.message = ""
        self.on_change()
        return new

    def _store(self, parameters: Parameters) -> None:
        if self.parameter_node is None:
            self._memory = parameters
        else:
            parameters.save(self.parameter_node)

    def _show_markups(self, p: Parameters) -> None:
        set_visible(p.segmentation_roi, p.show_segmentation_box)
        set_visible(p.landmark_roi, p.show_landmark_box)
        set_visible(p.landmarks, p.show_landmarks)

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        if self._job is not None:
            return self._job.kind
        p = self.parameters
        if p.input_volume is None:
            return State.NO_INPUT
        if self._outcome is not None:
            return self._outcome
        return State.LOCATED if p.crop_roi is not None else State.READY

    @property
    def review(self) -> dict[str, Any] | None:
        """The last segmentation's review summary, None before one."""
        return case_review_summary(self.report)

    @property
    def running(self) -> bool:
        return self._job is not None

    @property
    def can_run(self) -> bool:
        """Whether Locate and Segment may start now."""
        return not self.running and self.parameters.input_volume is not None

    def status(self) -> str:
        """One line for the panel's status label."""
        state = self.state
        if state in RUNNING or self.message:
            return self.message
        if state is State.DONE:
            return _summary(self.report)
        return {
            State.NO_INPUT: "Select a CT volume.",
            State.READY: "Ready: Locate shows stage 1's boxes; Segment runs the whole cascade.",
            State.LOCATED: f"Located: drag the {BOX_COLOURS['crop'].name} crop box if needed, then Segment.",
            State.CANCELLED: "Cancelled: the scene was left as it was.",
            State.FAILED: f"Failed: {self.error}",
        }[state]

    # -- runs ----------------------------------------------------------------------------------
    def locate(self) -> bool:
        """Start stage 1 on the input volume; False when it cannot start now."""
        if not self.can_run:
            return False
        p = self.parameters
        folder = self._job_folder()
        job = _Job(State.LOCATING, p.input_volume, folder, folder / "boxes.json")
        return self._start(job, lambda image: self.command.locate(image, job.output, p.run_options()))

    def segment(self) -> bool:
        """Start stage 2 inside the current crop ROI, or the whole cascade when nothing was located.

        Asks before replacing the segments of an existing output segmentation; False when it
        cannot start or the user declined.
        """
        if not self.can_run:
            return False
        p = self.parameters
        target = p.output_segmentation
        if target is not None and has_segments(target):
            if not self.confirm(f"Replace the segments of '{target.GetName()}' with the new result?"):
                self.message = "Not started: the existing segmentation was kept. Choose 'Create new' to keep both."
                self.on_change()
                return False
        folder = self._job_folder()
        job = _Job(State.SEGMENTING, p.input_volume, folder, folder / "labels.nii.gz", folder / "report.json",
                   folder / "uncertainty.nii.gz", folder / "review.nii.gz")
        box, rule = None, "authority"
        if p.crop_roi is not None:
            box = folder / "box.json"
            box.write_text(json.dumps(roi_ras_box(p.crop_roi).to_json()), encoding="utf-8")
            rule = "support" if crop_is_stage1s(p.crop_roi) else "authority"
        return self._start(job, lambda image: self.command.segment(image, job.output, p.run_options(), box, job.report,
                                                                   job.uncertainty, job.review_mask, rule))

    def _start(self, job: _Job, argv_for: Callable[[Path], list[str]]) -> bool:
        self._job, self._outcome, self.error = job, None, ""
        self.fraction, self.message = 0.0, "Writing the input volume…"
        self.on_change()
        try:
            argv = argv_for(self._input_file(job.volume))
            self.runner.start(argv, self._on_line, lambda code, stderr: self._on_finished(job, code, stderr))
        except Exception as error:  # a missing Python, an unwritable temp folder, ...
            self._end(job, State.FAILED, str(error))
            return False
        self.message = "Starting…"
        self.on_change()
        return True

    def cancel(self) -> None:
        """Stop the run and its process tree; nothing of it reaches the scene."""
        job = self._job
        if job is None:
            return
        self.runner.cancel()
        self._end(job, State.CANCELLED)

    def node_removed(self, node: Any) -> None:
        """Tell the controller that ``node`` left the scene: a run on it is cancelled (its results
        would be built against a volume that is gone)."""
        job = self._job
        if job is not None and node is not None and _same_node(node, job.volume):
            self.runner.cancel()
            self._end(job, State.CANCELLED, message=f"Cancelled: the input volume '{job.volume.GetName()}' was removed "
                                                    "from the scene.")

    def poll(self) -> bool:
        """Deliver the runner's pending output; True while a run is in progress."""
        self.runner.poll()
        return self.running

    def wait(self, idle: Callable[[], None] | None = None, interval_s: float = 0.05) -> State:
        """Block until the run ends (``idle`` runs between polls); returns the final state."""
        while self.poll():
            if idle is not None:
                idle()
            time.sleep(interval_s)
        return self.state

    def bundle_to_remember(self) -> str:
        """The bundle folder of the run that just succeeded, once; "" after a failure, a cancel or
        with the shipped bundle. The panel adds it to the folder box's history."""
        bundle, self._bundle_used = self._bundle_used, ""
        return bundle

    def close(self) -> None:
        """Cancel any run and delete the temporary files."""
        self.cancel()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir, self._input_cache = None, None

    # -- runner callbacks ------------------------------------------------------------------------
    def _on_line(self, line: str) -> None:
        event = parse_line(line)
        if isinstance(event, ProgressEvent):
            self.fraction = event.fraction
            self.message = f"{_STAGE_NAMES.get(event.stage, event.stage)}: {event.model} ({100 * event.fraction:.0f} %)"
            self.on_change()
        elif isinstance(event, DoneEvent):
            self.fraction = 1.0
            self.message = "Reading the result…"
            self.on_change()
        elif line.strip():
            logger.info("%s", line)

    def _on_finished(self, job: _Job, code: int, stderr: str) -> None:
        if job is not self._job:
            return  # a cancelled run's late report
        if code != 0:
            self._end(job, State.FAILED, _error_line(stderr, code))
            return
        if self.scene.GetNodeByID(job.volume.GetID()) is not job.volume:  # removed while the run went on
            error = f"the input volume '{job.volume.GetName()}' was removed from the scene: nothing was added"
            self._end(job, State.FAILED, error, message=f"Failed: {error}.")
            return
        before = node_ids(self.scene)
        try:
            if job.kind is State.LOCATING:
                self._show_located(job)
            else:
                self._show_result(job)
        except Exception as error:
            logger.exception("could not show the result")
            for node_id in node_ids(self.scene) - before:
                node = self.scene.GetNodeByID(node_id)
                if node is not None:
                    self.scene.RemoveNode(node)
            self._end(job, State.FAILED, f"could not read the result: {error}")
            return
        self._end(job, State.LOCATED if job.kind is State.LOCATING else State.DONE)

    def _end(self, job: _Job, outcome: State, error: str = "", message: str = "") -> None:
        """Finish ``job`` with ``outcome``; ``message`` is the status line until the next change (else
        the outcome's own)."""
        self._job, self._outcome, self.error, self.message = None, outcome, error, message
        self._bundle_used = self.parameters.bundle_path if outcome in (State.LOCATED, State.DONE) else ""
        shutil.rmtree(job.folder, ignore_errors=True)
        if error:
            logger.error("KidneyTumorSeg: %s", error)
        self.on_change()

    # -- results into the scene ------------------------------------------------------------------
    def _show_located(self, job: _Job) -> None:
        outcome = LocateOutcome.read(job.output)
        p = self.parameters
        name = job.volume.GetName()
        p = dataclasses.replace(
            p,
            segmentation_roi=show_roi(p.segmentation_roi, outcome.segmentation_box, self.scene, f"{name} segmentation box", SEGMENTATION_BOX),
            landmark_roi=show_roi(p.landmark_roi, outcome.landmark_box, self.scene, f"{name} landmark box", LANDMARK_BOX),
            crop_roi=mark_stage1_crop(show_roi(p.crop_roi, outcome.crop_box, self.scene, f"{name} crop box", CROP_BOX),
                                      outcome.crop_box),
            landmarks=show_landmarks(p.landmarks, outcome.landmarks, self.scene, f"{name} landmarks"),
        )
        self._store(p)
        self._show_markups(p)
        set_visible(p.crop_roi, True)
        self.decisions = outcome.decisions

    def _show_result(self, job: _Job) -> None:
        labels = read_image(job.output)
        report = json.loads(job.report.read_text(encoding="utf-8"))
        p = self.parameters
        name = job.volume.GetName()
        target = p.output_segmentation or new_segmentation_node(self.scene, f"{name} segmentation")
        link_to_volume(target, job.volume)
        fill_segmentation(target, labels.array, labels.affine)
        if p.show_3d:
            show_3d(target)
        review = case_review_summary(report)
        stored = read_image(job.uncertainty)  # uint8 over the input voxels near the crop (uncertainty_files.py)
        uncertainty = show_uncertainty(p.uncertainty_volume, Image(uncertainty_from_bytes(stored.array), stored.affine),
                                       self.scene, f"{name} uncertainty", job.volume, p.show_uncertainty)
        mask = read_image(job.review_mask)  # the disputed voxels, decided by the command line
        disputed = p.review_segmentation or new_segmentation_node(self.scene, f"{name} review")
        link_to_volume(disputed, job.volume)
        fill_review(disputed, mask.array, mask.affine)
        set_review_attributes(target, review)
        table = p.results_table or self.scene.AddNewNodeByClass(TABLE_NODE, f"{name} measurements")
        fill_measurements_table(table, report["measurements"], review, report.get("kidneys"))
        self._store(dataclasses.replace(p, output_segmentation=target, results_table=table, uncertainty_volume=uncertainty,
                                        review_segmentation=disputed))
        self.measurements, self.report = report["measurements"], report

    # -- temporary files -------------------------------------------------------------------------
    def _job_folder(self) -> Path:
        if self._work_dir is None or not self._work_dir.is_dir():
            self._work_dir, self._input_cache = Path(tempfile.mkdtemp(prefix="KidneyTumorSeg-")), None
        return Path(tempfile.mkdtemp(prefix="run-", dir=self._work_dir))

    def _input_file(self, volume: Any) -> Path:
        """The volume as NIfTI for the command line; written once while the volume is unchanged."""
        if volume.GetImageData() is None:
            raise ValueError(f"volume '{volume.GetName()}' has no voxels")
        key = (volume.GetID(), volume.GetImageData().GetMTime(), tuple(volume_affine(volume).ravel()))
        if self._input_cache is not None and self._input_cache[0] == key and self._input_cache[1].is_file():
            return self._input_cache[1]
        path = write_volume_nifti(volume, self._work_dir / "input.nii")
        self._input_cache = (key, path)
        return path


STAGE1_CROP_ATTRIBUTE = "KidneyTumorSeg.stage1Crop"
"""ROI node attribute: the RAS corners of the crop stage 1 chose, as JSON, set by Locate."""


def mark_stage1_crop(roi: Any, box: RasBox) -> Any:
    """Remember on ``roi`` the crop stage 1 chose (``box``), so Segment knows whether it was moved."""
    roi.SetAttribute(STAGE1_CROP_ATTRIBUTE, json.dumps(box.to_json()))
    return roi


def crop_is_stage1s(roi: Any) -> bool:
    """Whether ``roi`` still holds the crop stage 1 chose. A box dragged or resized by the user, or an
    ROI of the user's own, is the user's box: stage 1's support does not veto what stage 2 finds in it."""
    stored = roi.GetAttribute(STAGE1_CROP_ATTRIBUTE)
    if not stored:
        return False
    try:
        located = RasBox.from_corners(json.loads(stored)["ras"])
    except (ValueError, KeyError, TypeError):
        return False
    return roi_ras_box(roi).same_as(located)


def _same_node(a: Any, b: Any) -> bool:
    return a is b or (a is not None and b is not None and a.GetID() == b.GetID())


def _summary(report: dict[str, Any]) -> str:
    """The status line of a finished segmentation: what it found, or that it found nothing, and
    whether a demo bundle made it."""
    if report.get("kidney_found") is False:
        text = (f"Done: no kidney found, the segmentation is empty ({report.get('stage1_decision', '')}). "
                "Drag the crop box over the kidneys and Segment again.")
    else:
        measurements = report["measurements"]
        sides = "; ".join(per_side_lines(report["kidneys"])) if "kidneys" in report else \
            f"kidneys {measurements['kidney_ml']['total']:.0f} mL"
        text = (f"Done: {sides}; {measurements['tumor_count']} tumor(s), "
                f"largest {measurements['largest_tumor_diameter_mm']:.0f} mm (see the results table).")
        for warning in report.get("warnings") or ():
            text += f" Warning: {warning}."
    review = case_review_summary(report)
    if review is not None:
        tripped = (report.get("review_flag") or {}).get("tripped")
        verdict = f"needs review: {'; '.join(tripped)}" if review["review"] and tripped else \
            "needs review" if review["review"] else "no review flag"
        text = f"{text} Review score {review['score']:.2f}, {verdict} ({review['disputed_ml']:.0f} mL disputed)."
    return f"{text} {DEMO_NOTICE}." if made_by_demo(report) else text


def case_review_summary(report: dict[str, Any]) -> dict[str, Any] | None:
    """The report's uncertainty summary (``CaseReview.to_json``) with the review flag's score and
    verdict in place of the uncertainty's own (review_flag.py); None without an uncertainty."""
    review = report.get("uncertainty")
    if review is None:
        return None
    flag = report.get("review_flag")
    return review if flag is None else {**review, "score": flag["score"], "review": bool(report.get("review"))}


def _error_line(stderr: str, code: int) -> str:
    """The command line's one-line error message, else its last line, else the exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1] if lines else f"the command failed (exit code {code})"
