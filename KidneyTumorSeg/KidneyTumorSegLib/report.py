"""JSON views of cascade results: boxes in the input's voxels and in RAS, landmarks, reports, and
what a result must say about itself (no kidney found, made by a demo bundle)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .boxes import Box
from .geometry import WorkingFrame, index_to_world
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


@dataclass(frozen=True)
class GivenCrop:
    """A crop box read from a boxes JSON. ``box``: on the working frame; ``echo``: the box as
    given, for the report (``ijk`` as given, clipped to the image; ``ras`` as given, or the edges
    of those input voxels); ``clipped_from``: the given ``ijk`` when it reached outside the image."""

    box: Box
    echo: dict[str, Any]
    clipped_from: list[list[int]] | None = None


def box_from_json(data: Any, frame: WorkingFrame) -> Box:
    """The working-frame crop box of a boxes JSON (:func:`crop_from_json`)."""
    return crop_from_json(data, frame).box


def crop_from_json(data: Any, frame: WorkingFrame) -> GivenCrop:
    """The crop box of a boxes JSON: ``{"boxes": {"crop": B}}`` or a bare ``B``.

    ``B["ras"]`` (edge corners, mm) or ``B["ijk"]`` (input voxels); when both are present they must
    hold the same input voxels within :data:`AGREEMENT_VOXELS`. Raises ValueError (one line) for a
    malformed box, two that disagree, or one wholly outside the image.
    """
    if not isinstance(data, dict):
        raise ValueError("box file must hold a JSON object ({'boxes': {'crop': {...}}} or {'ras': ...})")
    boxes = data.get("boxes") if "boxes" in data else {"crop": data}
    box = boxes.get("crop") if isinstance(boxes, dict) else None
    if not isinstance(box, dict):
        raise ValueError("box file has no crop box (expected {'boxes': {'crop': {...}}} or {'ras': ...})")
    has_ras, has_ijk = box.get("ras") is not None, box.get("ijk") is not None
    if not (has_ras or has_ijk):
        raise ValueError("box has neither 'ras' nor 'ijk'")
    try:
        from_ras = _box_from_ras(box["ras"], frame) if has_ras else None
        on_input = _input_box_from_ijk(box["ijk"], frame) if has_ijk else None
    except ValueError as error:
        if "lies outside the image" in str(error):
            raise ValueError("the crop box lies wholly outside the image") from None
        raise
    if from_ras is not None and on_input is not None:
        _check_agreement(box, from_ras, frame)
    given = None if on_input is None else [[int(a), int(b)] for a, b in zip(on_input.start, on_input.stop)]
    clipped_from = None if on_input is None or given == box["ijk"] else [list(r) for r in box["ijk"]]
    clipped = {} if clipped_from is None else {"clipped_from": clipped_from}
    if from_ras is not None:
        ijk = given if given is not None else box_json(from_ras, frame)["ijk"]
        return GivenCrop(from_ras, {"ijk": ijk, "ras": box["ras"], **clipped}, clipped_from)
    echo = {"ijk": given, "ras": on_input.edge_corners_ras(frame.source_affine).round(3).tolist(), **clipped}
    return GivenCrop(on_input.transformed(frame.source_to_working(), frame.shape), echo, clipped_from)


def _box_from_ras(corners: Any, frame: WorkingFrame) -> Box:
    """Working-frame voxels whose centres lie between two RAS corners (mm)."""
    points = _numbers(corners, (2, 3), "box 'ras' must be two finite corners [[x, y, z], [x, y, z]]")
    return Box.from_ras_bounds(points.min(axis=0), points.max(axis=0), frame.affine, frame.shape)


def _input_box_from_ijk(ranges: Any, frame: WorkingFrame) -> Box:
    """The input voxels of three inclusive index ranges, clipped to the image."""
    array = _numbers(ranges, (3, 2), "box 'ijk' must be three inclusive ranges [[i0, i1], [j0, j1], [k0, k1]]")
    if np.any(array != np.round(array)):
        shown = ", ".join(f"{value:g}" for value in array.ravel() if value != round(value))
        raise ValueError(f"box 'ijk' must hold whole voxel indices (integers), got {shown}")
    array = array.astype(int)
    if np.any(array[:, 1] < array[:, 0]):
        raise ValueError("box 'ijk' ranges must run low to high")
    return Box(tuple(array[:, 0]), tuple(array[:, 1])).clipped(frame.source_shape)


AGREEMENT_VOXELS = 1
"""'ijk' and 'ras' of one box may differ by this many input voxels at each end (rounding)."""


def _check_agreement(box: dict[str, Any], from_ras: Box, frame: WorkingFrame) -> None:
    """ValueError when a box's 'ras' corners hold other input voxels than its 'ijk' ranges
    (by more than :data:`AGREEMENT_VOXELS`): one of the two was edited, and which is unknown."""
    ras_on_input = box_json(from_ras, frame)["ijk"]
    given = np.asarray(box["ijk"], dtype=int)
    if ras_on_input is not None and np.abs(np.asarray(ras_on_input) - given).max() <= AGREEMENT_VOXELS:
        return
    raise ValueError(f"the crop box's 'ijk' {given.tolist()} and 'ras' {np.asarray(box['ras']).tolist()} disagree "
                     f"(the 'ras' corners hold input voxels {ras_on_input}); delete the one you did not edit")


def _numbers(values: Any, shape: tuple[int, int], message: str) -> np.ndarray:
    """``values`` as a finite float array of ``shape``; ValueError(``message``) otherwise."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise ValueError(message)
    return array


def rounded(data: Any, decimals: int = 3) -> Any:
    """``data`` (JSON-like) with every float rounded to ``decimals`` places."""
    if isinstance(data, float):
        return round(data, decimals)
    if isinstance(data, dict):
        return {key: rounded(value, decimals) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [rounded(value, decimals) for value in data]
    return data


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


def kidney_finding(sides: Mapping[str, Mapping[str, Any]], stage1: Stage1Result | None,
                   stage1_marked_kidney: bool | None) -> dict[str, Any]:
    """``{"kidney_found": ..., "stage1_decision": ...}`` of a result: whether a kidney was found on
    either side (``sides``: kidney_sides.side_findings), and in one sentence what stage 1 decided
    on the way: its rules' decisions when it chose the crop; else that the crop was given, and
    whether stage 1's segmentation head marked any kidney in the image (``stage1_marked_kidney``,
    None: not run)."""
    if stage1 is not None:
        parts = list(stage1.decisions)
    else:
        parts = ["the crop box was given, not chosen by stage 1"]
        if stage1_marked_kidney is not None:
            parts.append("stage 1 marked " + ("kidney" if stage1_marked_kidney else "no kidney voxel") + " in the image")
    return {"kidney_found": any(bool(side["kidney_found"]) for side in sides.values()), "stage1_decision": "; ".join(parts)}


def result_notes(report: Mapping[str, Any]) -> list[str]:
    """What a result must say wherever it is shown: that no kidney was found (and what stage 1
    decided), the per-kidney warnings, that a bundle lacking models made it, and that a demo bundle
    made it. ``report`` holds :func:`kidney_finding`'s fields, ``warnings`` and ``bundle``."""
    notes = []
    if report.get("kidney_found") is False:
        notes.append(f"No kidney found ({report.get('stage1_decision', '')})")
    notes += [warning[0].upper() + warning[1:] for warning in report.get("warnings") or ()]
    missing = (report.get("bundle") or {}).get("missing_roles")
    if missing:
        notes.append(f"Made without {', '.join(missing)} (a partial bundle)")
    if made_by_demo(report):
        notes.append(DEMO_NOTICE)
    return notes


def found_line(measurements: Mapping[str, Any]) -> str:
    """Kidney volume per side, tumor count and tumor volume of :func:`measurements.measure`'s dict,
    in one line: ``left kidney 150 mL, right kidney 140 mL; 2 tumors, 37 mL``."""
    kidney, tumor, count = measurements["kidney_ml"], measurements["tumor_ml"], measurements["tumor_count"]
    return (f"left kidney {kidney['left'] + tumor['left']:.0f} mL, right kidney {kidney['right'] + tumor['right']:.0f} mL; "
            f"{count} tumor{'' if count == 1 else 's'}, {tumor['total']:.0f} mL")


def made_by_demo(report: Mapping[str, Any]) -> bool:
    """Whether the report's bundle is a demo bundle (``"demo": true`` in its manifest)."""
    return bool((report.get("bundle") or {}).get("demo"))
