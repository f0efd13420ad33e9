"""The case's review flag: which of a result's own signals say a clinician should look.

Each *measure* is a number read off the report (higher = more doubtful). A bundle's calibration
file (``review_calibration.json`` in the bundle folder, written by ``kidneytumorseg-train
calibrate-review`` on validation phantoms) gives a threshold for the measures it chose; a case is
flagged when any measure reaches its threshold, and its *review score* is the largest
``value / threshold``, so the flagged cases are exactly those scoring ≥ 1 and ``--triage`` puts
them first. A bundle without a calibration file keeps the uncalibrated rule: the disputed share
(uncertainty.py) against ``uncertainty.review_score_threshold``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .settings import DEFAULT_SETTINGS, MethodSettings

CALIBRATION_NAME = "review_calibration.json"
CALIBRATION_VERSION = 1


def _volume(report: Mapping[str, Any], side: str) -> float:
    measured = report["measurements"]
    return float(measured["kidney_ml"][side]) + float(measured["tumor_ml"][side])


def _disputed_share(report: Mapping[str, Any]) -> float:
    return float((report.get("uncertainty") or {}).get("score") or 0.0)


def _tumor_share(report: Mapping[str, Any]) -> float:
    total = _volume(report, "total")
    return float(report["measurements"]["tumor_ml"]["total"]) / total if total > 0 else 0.0


def _side_imbalance(report: Mapping[str, Any]) -> float:
    left, right = _volume(report, "left"), _volume(report, "right")
    return 1.0 - min(left, right) / max(left, right) if max(left, right) > 0 else 0.0


def _tumor_disagreement(report: Mapping[str, Any]) -> float:
    agreement = (report.get("uncertainty") or {}).get("tumor_agreement")
    return 0.0 if agreement is None else 1.0 - float(agreement)


MEASURES: dict[str, tuple[str, Callable[[Mapping[str, Any]], float]]] = {
    "disputed_share": ("share of the labelled region where the models disagree", _disputed_share),
    "tumor_share": ("share of the labelled volume called tumor", _tumor_share),
    "tumor_count": ("number of separate tumors", lambda report: float(report["measurements"]["tumor_count"])),
    "labelled_ml": ("kidney and tumor volume, both sides (mL)", lambda report: _volume(report, "total")),
    "side_imbalance": ("1 - smaller / larger kidney volume (1: a side is missing)", _side_imbalance),
    "tumor_disagreement": ("share of the tumor not every tumor model votes for", _tumor_disagreement),
}
"""Every measure the flag may use: name -> (what it is, in words; how it is read off a report)."""


def review_measures(report: Mapping[str, Any]) -> dict[str, float]:
    """Every measure of a report (``measurements`` and ``uncertainty`` as segment writes them)."""
    return {name: read(report) for name, (_, read) in MEASURES.items()}


def load_calibration(bundle_path: str | Path | None) -> dict[str, Any] | None:
    """The calibration of the bundle at ``bundle_path`` (its ``review_calibration.json``), None when
    it has none. ValueError (one line) for a malformed file or a measure this version does not know."""
    if bundle_path is None:
        return None
    path = Path(bundle_path) / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        thresholds = {str(name): float(value) for name, value in data["thresholds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: malformed review calibration ({error})") from None
    unknown = set(thresholds) - set(MEASURES)
    if data.get("format_version") != CALIBRATION_VERSION or unknown or not all(v > 0 and math.isfinite(v) for v in thresholds.values()):
        raise ValueError(f"{path}: review calibration of format {data.get('format_version')!r} with measures "
                         f"{sorted(thresholds)} is not one this version reads (format {CALIBRATION_VERSION}, positive "
                         f"thresholds of {', '.join(MEASURES)})")
    return {**data, "thresholds": thresholds}


def flag_case(measures: Mapping[str, float], thresholds: Mapping[str, float]) -> tuple[float, list[str]]:
    """The review score (largest ``value / threshold``; 0 without thresholds) and the measures that
    reach their threshold, most exceeded first."""
    ratios = {name: measures[name] / threshold for name, threshold in thresholds.items()}
    tripped = sorted((name for name, ratio in ratios.items() if ratio >= 1.0), key=lambda name: -ratios[name])
    return max(ratios.values(), default=0.0), tripped


def review_flag(report: Mapping[str, Any], calibration: Mapping[str, Any] | None,
                settings: MethodSettings = DEFAULT_SETTINGS) -> dict[str, Any]:
    """``{"review": bool, "score": ..., "tripped": [sentences], "measures": {...}, "thresholds": {...},
    "calibration": where the thresholds come from}`` of one report."""
    measures = review_measures(report)
    if calibration is None:
        thresholds = {"disputed_share": settings.uncertainty.review_score_threshold}
        source = "none: the uncalibrated rule (disputed share >= uncertainty.review_score_threshold)"
    else:
        thresholds = dict(calibration["thresholds"])
        source = f"{CALIBRATION_NAME} of the bundle ({calibration.get('calibrated_on', 'unknown data')})"
    score, tripped = flag_case(measures, thresholds)
    reasons = [f"{MEASURES[name][0]} {measures[name]:.3g} >= {thresholds[name]:.3g}" for name in tripped]
    return {"review": bool(tripped), "score": score, "tripped": reasons, "measures": measures,
            "thresholds": thresholds, "calibration": source}
