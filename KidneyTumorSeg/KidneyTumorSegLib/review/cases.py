"""The cases of a `batch` output folder as `review` lists them: flagged for review first.

A finished case leaves ``<case>.json`` (its report) and ``<case>.nii.gz`` (its label map) in the
folder, and with ``batch --uncertainty`` ``<case>.uncertainty.nii.gz``. Reports of every version
are read defensively: a field a report lacks is shown as unknown, never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli.batch import label_path, uncertainty_path
from ..cli.cases import find_cases
from ..locate_result import RasBox

SIDES = ("left", "right")


@dataclass(frozen=True)
class ReviewCase:
    """One finished case of the folder: where its files are and what its report says.

    ``kidney_ml`` / ``tumor_ml`` map "left" and "right" (the patient's) to mL, or are empty when
    the report holds no per-side volumes; ``flagged`` is the report's review flag (None when the
    report has none); ``crop`` the stage-2 crop in RAS mm.
    """

    name: str
    report: Path
    labels: Path
    image: Path | None
    truth: Path | None
    uncertainty: Path | None
    flagged: bool | None
    score: float | None
    kidney_ml: dict[str, float]
    tumor_ml: dict[str, float]
    crop: RasBox | None


def read_cases(folder: Path, images: Path | None = None, truth: Path | None = None) -> list[ReviewCase]:
    """Every case of ``folder`` with a report and a label map, in review order (:func:`review_order`).

    The CT is the report's ``image`` when that file exists, else the case of the same name in
    ``images`` (image files or KiTS19 case folders); the truth is the case in ``truth``, else the
    ``segmentation.nii.gz`` beside a KiTS19 ``imaging.nii.gz``.
    """
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder not found")
    image_files = find_cases(images) if images is not None else {}
    truth_files = find_cases(truth, image_name="segmentation.nii.gz") if truth is not None else {}
    cases = []
    for path in sorted(folder.glob("*.json")):
        report = _read_report(path)
        if report is None:
            continue
        name = report.get("case") if isinstance(report.get("case"), str) else path.name[: -len(".json")]
        if not label_path(folder, name).is_file():
            continue
        image = _existing(report.get("image")) or image_files.get(name)
        cases.append(ReviewCase(
            name=name, report=path, labels=label_path(folder, name), image=image,
            truth=truth_files.get(name) or _kits_truth(image),
            uncertainty=uncertainty_path(folder, name) if uncertainty_path(folder, name).is_file() else None,
            flagged=_review_flag(report), score=_review_score(report),
            kidney_ml=_per_side(report, "kidney_ml"), tumor_ml=_per_side(report, "tumor_ml"),
            crop=_crop(report)))
    return review_order(cases)


def review_order(cases: list[ReviewCase]) -> list[ReviewCase]:
    """Flagged cases first, then the others, then those whose report holds no flag; within each,
    the highest review score (most doubtful) first, cases without a score after, by name."""
    def key(case: ReviewCase) -> tuple:
        group = 0 if case.flagged else 2 if case.flagged is None else 1
        return group, case.score is None, -(case.score or 0.0), case.name
    return sorted(cases, key=key)


def _read_report(path: Path) -> dict[str, Any] | None:
    """A case report (it holds ``measurements``), or None for any other JSON file of the folder."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("measurements"), dict) else None


def _existing(path: Any) -> Path | None:
    return Path(path) if isinstance(path, str) and Path(path).is_file() else None


def _kits_truth(image: Path | None) -> Path | None:
    if image is None or image.name != "imaging.nii.gz":
        return None
    truth = image.with_name("segmentation.nii.gz")
    return truth if truth.is_file() else None


def _review_flag(report: dict[str, Any]) -> bool | None:
    flag = report.get("review")
    if isinstance(flag, dict):  # a report that nests its review
        flag = flag.get("review")
    if not isinstance(flag, bool):
        flag = (report.get("uncertainty") or {}).get("review") if isinstance(report.get("uncertainty"), dict) else None
    return flag if isinstance(flag, bool) else None


def _review_score(report: dict[str, Any]) -> float | None:
    for holder in (report.get("uncertainty"), report.get("review")):
        if isinstance(holder, dict) and isinstance(holder.get("score"), (int, float)):
            return float(holder["score"])
    return None


def _per_side(report: dict[str, Any], field: str) -> dict[str, float]:
    volumes = report["measurements"].get(field)
    if not isinstance(volumes, dict):
        return {}
    return {side: float(volumes[side]) for side in SIDES if isinstance(volumes.get(side), (int, float))}


def _crop(report: dict[str, Any]) -> RasBox | None:
    crop = report.get("crop")
    try:
        return RasBox.from_corners(crop["ras"])
    except (TypeError, KeyError, ValueError):
        return None
