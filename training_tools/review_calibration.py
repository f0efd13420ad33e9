"""Calibrate a bundle's review flag on validation phantoms, and check it on held-out ones.

Both read case reports written by ``kidneytumorseg batch`` (``<case>.json`` + ``<case>.nii.gz``; the
batch runs first when a results folder lacks them) beside the truth of KiTS19-layout folders
(``case_XXXXX/segmentation.nii.gz``). A case is *bad* when its kidney Dice is below
``kidney_below`` (0.9) or its tumor Dice below ``tumor_below`` (0.5) [D].

Calibration [D]: greedy forward selection of (measure, threshold) pairs (review_flag.MEASURES,
thresholds halfway between observed values), each step adding the pair that most raises Youden's
J (sensitivity + specificity - 1) of "any chosen measure reaches its threshold" for bad cases,
until none raises it. When no validation case is good (or none bad) by the tumor criterion, the
tumor criterion is left out and the calibration says so. The check reports, on other cases, the
share flagged, the mean Dice of flagged and unflagged cases, and the AUROC of the review score
for "tumor Dice < 0.5" and "kidney Dice < 0.9" (None where one class is empty).

    kidneytumorseg-train calibrate-review --data val/ val_short/ --results work/ --bundle B
    kidneytumorseg-train check-review --data heldout/ heldout_short/ --results work/ --bundle B --out check.json
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from KidneyTumorSegLib.imageio import read_image
from KidneyTumorSegLib.metrics import kits_dice
from KidneyTumorSegLib.review_flag import CALIBRATION_NAME, CALIBRATION_VERSION, MEASURES, flag_case, review_measures

logger = logging.getLogger(__name__)

KIDNEY_BELOW, TUMOR_BELOW = 0.9, 0.5


def run_batches(data: Sequence[Path], results: Path, bundle: Path) -> list[Path]:
    """``kidneytumorseg batch`` of each data folder into ``results/<folder name>`` (``--resume``:
    cases done before are kept); returns the result folders."""
    from KidneyTumorSegLib.cli.main import main

    folders = []
    for folder in data:
        out = results / folder.name
        code = main(["batch", str(folder), str(out), "--bundle", str(bundle), "--progress", "none", "--resume"])
        if code != 0:
            raise RuntimeError(f"batch of {folder} failed (exit code {code}); see {out}")
        folders.append(out)
    return folders


def case_rows(data: Sequence[Path], results: Sequence[Path]) -> list[dict[str, Any]]:
    """Per case of each (data, results) pair: name, kidney and tumor Dice against the truth, and
    every review measure of its report."""
    rows = []
    for truth_folder, result_folder in zip(data, results):
        for report_path in sorted(result_folder.glob("case_*.json")):
            case = report_path.name[: -len(".json")]
            truth_path = truth_folder / case / "segmentation.nii.gz"
            if not truth_path.is_file():
                continue
            report = json.loads(report_path.read_text(encoding="utf-8"))
            labels = np.asarray(read_image(result_folder / f"{case}.nii.gz").array, np.uint8)
            scores = kits_dice(labels, np.asarray(read_image(truth_path).array, np.uint8))
            rows.append({"case": f"{truth_folder.name}/{case}", "kidney_dice": scores["kidney_dice"],
                         "tumor_dice": scores["tumor_dice"], "measures": review_measures(report)})
    if not rows:
        raise ValueError("no case report with a truth found in " + ", ".join(str(r) for r in results))
    return rows


def youden(flagged: np.ndarray, bad: np.ndarray) -> float:
    """Sensitivity + specificity - 1 of boolean ``flagged`` for boolean ``bad`` (-1 where a class is empty)."""
    if bad.all() or not bad.any():
        return -1.0
    return float(flagged[bad].mean() + (~flagged[~bad]).mean() - 1.0)


def bad_cases(rows: Sequence[dict[str, Any]], kidney_below: float, tumor_below: float | None) -> np.ndarray:
    """Which cases are bad: kidney Dice below ``kidney_below``, or tumor Dice below ``tumor_below`` (None: not asked)."""
    kidney = np.array([r["kidney_dice"] < kidney_below for r in rows])
    if tumor_below is None:
        return kidney
    return kidney | np.array([r["tumor_dice"] < tumor_below for r in rows])


def calibrate(rows: Sequence[dict[str, Any]], kidney_below: float = KIDNEY_BELOW,
              tumor_below: float = TUMOR_BELOW) -> dict[str, Any]:
    """Thresholds of the measures that flag the bad cases of ``rows`` best (module docstring)."""
    tumor = np.array([r["tumor_dice"] < tumor_below for r in rows])
    target = f"kidney Dice < {kidney_below} or tumor Dice < {tumor_below}"
    used_tumor: float | None = tumor_below
    if tumor.all() or not tumor.any():
        used_tumor = None
        target = (f"kidney Dice < {kidney_below} (the tumor criterion is left out: "
                  f"{'every' if tumor.all() else 'no'} validation case has tumor Dice < {tumor_below})")
    bad = bad_cases(rows, kidney_below, used_tumor)
    if bad.all() or not bad.any():
        raise ValueError(f"cannot calibrate: {'every' if bad.any() else 'no'} validation case is bad ({target})")
    values = {name: np.array([r["measures"][name] for r in rows]) for name in MEASURES}
    chosen: dict[str, float] = {}
    flagged = np.zeros(len(rows), bool)
    best = youden(flagged, bad)
    while True:
        step = None
        for name, column in values.items():
            if name in chosen:
                continue
            levels = np.unique(column)
            for threshold in (levels[1:] + levels[:-1]) / 2.0:
                if threshold <= 0:
                    continue
                gain = youden(flagged | (column >= threshold), bad)
                if gain > best + 1e-9 or (step is not None and gain == step[0] and threshold > step[2] and name == step[1]):
                    best, step = gain, (gain, name, float(threshold))
        if step is None:
            break
        chosen[step[1]] = step[2]
        flagged |= values[step[1]] >= step[2]
    return {"thresholds": chosen, "target": target, "youden_j": best, "flagged_share": float(flagged.mean()),
            "bad_share": float(bad.mean()), "cases": len(rows)}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """P(a positive case scores above a negative one), ties counting half; None when a class is empty."""
    if positive.all() or not positive.any():
        return None
    above = (scores[positive][:, None] > scores[~positive][None, :]).mean()
    ties = (scores[positive][:, None] == scores[~positive][None, :]).mean()
    return float(above + 0.5 * ties)


def check(rows: Sequence[dict[str, Any]], thresholds: dict[str, float]) -> dict[str, Any]:
    """How the flag of ``thresholds`` sorts ``rows`` (module docstring)."""
    flags = [flag_case(r["measures"], thresholds) for r in rows]
    scores = np.array([score for score, _ in flags])
    flagged = np.array([bool(tripped) for _, tripped in flags])

    def mean(key: str, where: np.ndarray) -> float | None:
        return float(np.mean([r[key] for r, w in zip(rows, where) if w])) if where.any() else None

    kidney, tumor = np.array([r["kidney_dice"] for r in rows]), np.array([r["tumor_dice"] for r in rows])
    return {
        "cases": len(rows), "flagged_share": float(flagged.mean()),
        "mean_kidney_dice": {"flagged": mean("kidney_dice", flagged), "unflagged": mean("kidney_dice", ~flagged)},
        "mean_tumor_dice": {"flagged": mean("tumor_dice", flagged), "unflagged": mean("tumor_dice", ~flagged)},
        "auroc_tumor_dice_below_0.5": auroc(scores, tumor < TUMOR_BELOW),
        "auroc_kidney_dice_below_0.9": auroc(scores, kidney < KIDNEY_BELOW),
        "per_case": [{"case": r["case"], "kidney_dice": round(r["kidney_dice"], 4), "tumor_dice": round(r["tumor_dice"], 4),
                      "score": round(float(score), 4), "tripped": tripped}
                     for r, (score, tripped) in zip(rows, flags)],
    }


def calibration_file(result: dict[str, Any], bundle: Path, data: Sequence[Path]) -> dict[str, Any]:
    """The calibration JSON the engine reads (review_flag.load_calibration), with the command that
    remakes it (folder names only: no machine path)."""
    names = " ".join(f"{folder.name}/" for folder in data)
    command = f"kidneytumorseg-train calibrate-review --data {names} --results results/ --bundle {bundle.resolve().name}/"
    return {"format_version": CALIBRATION_VERSION, "bundle": bundle.resolve().name,
            "calibrated_on": f"{result['cases']} validation phantoms ({names.strip()})", "command": command,
            "target": result["target"], "thresholds": {k: round(v, 4) for k, v in result["thresholds"].items()},
            "validation": {"youden_j": round(result["youden_j"], 4), "flagged_share": round(result["flagged_share"], 4),
                           "bad_share": round(result["bad_share"], 4)},
            "measures": {name: MEASURES[name][0] for name in result["thresholds"]}}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=_finite) + "\n", encoding="utf-8")


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def default_calibration_path(bundle: Path) -> Path:
    return bundle / CALIBRATION_NAME
