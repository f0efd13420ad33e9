"""JSON views of cascade results: boxes in the input's voxels and in RAS, landmarks, reports, and
what a result must say about itself (no kidney found, made by a demo bundle)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .boxes import Box
from .geometry import WorkingFrame, index_to_world
from .settings import LABEL_BACKGROUND
from .stage1 import Stage1Result

DEMO_NOTICE = "Made with a DEMO bundle trained on synthetic phantoms: not for clinical use"


def box_json(box: Box | None, frame: WorkingFrame) -> dict[str, Any] | None:
    """A working-frame box as ``{"ijk": [[i0, i1], [j0, j1], [k0, k1]], "ras": [[lo], [hi]]}``.

    ``ijk``: inclusive voxel ranges of the input file (nibabel indexing) holding the box, None
    when the box holds no input voxel (a corner of an oblique input's working frame);
    ``ras``: opposite corners (mm) of the box's outer voxel edges, low-high per axis.
    """
    if box is None:
        return None
    try:
        on_input = box.transformed(frame.working_to_source(), frame.source_shape)
        ijk = [[a, b] for a, b in zip(on_input.start, on_input.stop)]
    except ValueError:  # wholly outside the input grid
        ijk = None
    return {"ijk": ijk, "ras": box.edge_corners_ras(frame.affine).round(3).tolist()}


def box_from_json(data: Any, frame: WorkingFrame) -> Box:
    """The working-frame crop box of a boxes JSON: ``{"boxes": {"crop": B}}`` or a bare ``B``.

    ``B["ras"]`` (edge corners, mm) is used when present, else ``B["ijk"]`` (input voxels).
    Raises ValueError (one line) for a malformed box or one wholly outside the image.
    """
    if not isinstance(data, dict):
        raise ValueError("box file must hold a JSON object ({'boxes': {'crop': {...}}} or {'ras': ...})")
    boxes = data.get("boxes") if "boxes" in data else {"crop": data}
    box = boxes.get("crop") if isinstance(boxes, dict) else None
    if not isinstance(box, dict):
        raise ValueError("box file has no crop box (expected {'boxes': {'crop': {...}}} or {'ras': ...})")
    try:
        if "ras" in box:
            corners = _numbers(box["ras"], float, (2, 3), "box 'ras' must be two finite corners [[x, y, z], [x, y, z]]")
            return Box.from_ras_bounds(corners.min(axis=0), corners.max(axis=0), frame.affine, frame.shape)
        if "ijk" in box:
            ranges = _numbers(box["ijk"], int, (3, 2), "box 'ijk' must be three inclusive ranges [[i0, i1], [j0, j1], [k0, k1]]")
            if np.any(ranges[:, 1] < ranges[:, 0]):
                raise ValueError("box 'ijk' ranges must run low to high")
            on_input = Box(tuple(ranges[:, 0]), tuple(ranges[:, 1])).clipped(frame.source_shape)
            return on_input.transformed(frame.source_to_working(), frame.shape)
    except ValueError as error:
        if "lies outside the image" in str(error):
            raise ValueError("the crop box lies wholly outside the image") from None
        raise
    raise ValueError("box has neither 'ras' nor 'ijk'")


def _numbers(values: Any, dtype: type, shape: tuple[int, int], message: str) -> np.ndarray:
    """``values`` as a finite ``dtype`` array of ``shape``; ValueError(``message``) otherwise."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if array.shape != shape or not np.all(np.isfinite(array)) or (dtype is int and np.any(array != np.round(array))):
        raise ValueError(message)
    return array.astype(dtype)


def stage1_json(result: Stage1Result, frame: WorkingFrame) -> dict[str, Any]:
    """What ``locate`` writes: the three boxes, the landmarks in RAS and the rule decisions."""
    points = np.array([landmark.zyx for landmark in result.landmarks], float).reshape(-1, 3)
    world = index_to_world(points, frame.affine)
    return {
        "boxes": {
            "segmentation": box_json(result.segmentation_box, frame),
            "landmarks": box_json(result.landmark_box, frame),
            "chosen": box_json(result.chosen_box, frame),
            "refined": box_json(result.refined_box, frame),
            "crop": box_json(result.crop_box, frame),
        },
        "landmarks": [
            {"name": landmark.name, "ras": world[n].round(3).tolist(), "value": round(landmark.value, 4)}
            for n, landmark in enumerate(result.landmarks)
        ],
        "decisions": list(result.decisions),
    }


def kidney_finding(labels: np.ndarray, stage1: Stage1Result | None, stage1_marked_kidney: bool | None) -> dict[str, Any]:
    """``{"kidney_found": ..., "stage1_decision": ...}`` of a result: whether ``labels`` (any grid,
    0/1/2) hold any kidney or tumor voxel, and in one sentence what stage 1 decided on the way: its
    rules' decisions when it chose the crop; else that the crop was given, and whether stage 1's
    segmentation head marked any kidney in the image (``stage1_marked_kidney``, None: not run)."""
    if stage1 is not None:
        parts = list(stage1.decisions)
    else:
        parts = ["the crop box was given, not chosen by stage 1"]
        if stage1_marked_kidney is not None:
            parts.append("stage 1 marked " + ("kidney" if stage1_marked_kidney else "no kidney voxel") + " in the image")
    return {"kidney_found": bool(np.any(np.asarray(labels) != LABEL_BACKGROUND)), "stage1_decision": "; ".join(parts)}


def result_notes(report: Mapping[str, Any]) -> list[str]:
    """What a result must say wherever it is shown: that no kidney was found (and what stage 1
    decided), and that a demo bundle made it. ``report`` holds :func:`kidney_finding`'s fields and
    ``bundle.demo``."""
    notes = []
    if report.get("kidney_found") is False:
        notes.append(f"No kidney found ({report.get('stage1_decision', '')})")
    if made_by_demo(report):
        notes.append(DEMO_NOTICE)
    return notes


def made_by_demo(report: Mapping[str, Any]) -> bool:
    """Whether the report's bundle is a demo bundle (``"demo": true`` in its manifest)."""
    return bool((report.get("bundle") or {}).get("demo"))
