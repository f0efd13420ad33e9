"""`evaluate`: KiTS19 Dice (and surface metrics) of predictions against ground truth."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ..imageio import read_image
from ..metrics import evaluate_case, summarise
from .cases import find_cases


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="KiTS19 Dice of predictions against ground truth",
                                 description="Compare predicted label maps with ground truth: two files, or two folders (cases matched by name).")
    parser.add_argument("prediction", type=Path, help="label map, or folder of them")
    parser.add_argument("truth", type=Path, help="ground-truth label map, or folder (files or KiTS19 case folders)")
    parser.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    parser.add_argument("--tolerance-mm", type=float, default=None, help="surface Dice tolerance (default 2 mm)")
    parser.set_defaults(handler=run_evaluate)


def pairs(prediction: Path, truth: Path) -> dict[str, tuple[Path, Path]]:
    """Matched (prediction, truth) files by case name."""
    if prediction.is_file() and truth.is_file():
        return {prediction.name: (prediction, truth)}
    if prediction.is_dir() and truth.is_dir():
        predicted = find_cases(prediction, image_name="segmentation.nii.gz")
        expected = find_cases(truth, image_name="segmentation.nii.gz")
        matched = {name: (predicted[name], expected[name]) for name in predicted if name in expected}
        if not matched:
            raise ValueError(f"no case names in common between {prediction} and {truth}")
        return matched
    raise ValueError("give two files or two folders")


def evaluate_pair(prediction: Path, truth: Path, tolerance_mm: float | None) -> dict:
    predicted, expected = read_image(prediction), read_image(truth)
    if predicted.array.shape != expected.array.shape:
        raise ValueError(f"{prediction.name}: shape {predicted.array.shape} differs from the truth's {expected.array.shape}")
    return evaluate_case(np.asarray(predicted.array, np.uint8), np.asarray(expected.array, np.uint8), expected.spacing, tolerance_mm)


def _share(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None or not math.isfinite(value) else f"{value:>{width}.3f}"


def run_evaluate(args: argparse.Namespace) -> int:
    rows = []
    for name, (prediction, truth) in pairs(args.prediction, args.truth).items():
        rows.append({"case": name, **evaluate_pair(prediction, truth, args.tolerance_mm)})
    summary = summarise(rows)
    if args.json:
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()} for row in rows]
        print(json.dumps({**summary, "cases": clean}, indent=2))
    else:
        print("tumor precision: pooled over all cases' voxels in the last row; healthy called tumor: the share of the "
              "truth's healthy kidney labelled tumor, median over cases in the last row")
        print(f"{'case':<24}{'kidney':>9}{'tumor':>9}{'mean':>9}{'tumor precision':>17}{'healthy called tumor':>22}")
        for row in rows:
            print(f"{row['case']:<24}{row['kidney_dice']:>9.4f}{row['tumor_dice']:>9.4f}{row['mean_dice']:>9.4f}"
                  f"{_share(row['tumor_precision'], 17)}{_share(row['healthy_called_tumor'], 22)}")
        print(f"{'mean':<24}{summary['kidney_dice']:>9.4f}{summary['tumor_dice']:>9.4f}{summary['mean_dice']:>9.4f}"
              f"{_share(summary['tumor_precision_pooled'], 17)}{_share(summary['median_healthy_called_tumor'], 22)}")
    return 0
