"""``calibrate-review`` and ``check-review``: the review flag's calibration on validation phantoms
and its check on held-out ones (review_calibration.py)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="KiTS19-layout phantom folders (case_XXXXX/imaging.nii.gz + segmentation.nii.gz)")
    parser.add_argument("--results", type=Path, required=True,
                        help="folder of the batch results, one sub-folder per data folder (made or resumed here)")
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped demo bundle)")


def add_review_commands(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate-review", help="calibrate a bundle's review flag on validation phantoms",
        description="Run the bundle on validation phantoms (never the held-out ones), choose the review measures and "
                    "thresholds that flag the cases with kidney Dice < 0.9 or tumor Dice < 0.5, and write them to the "
                    "bundle's review_calibration.json, which the engine reads.")
    _add_common(calibrate)
    calibrate.add_argument("--out", type=Path, default=None,
                           help="calibration file (default: review_calibration.json in the bundle folder)")
    calibrate.set_defaults(run=_cmd_calibrate)
    checking = commands.add_parser(
        "check-review", help="how a bundle's review flag sorts held-out phantoms",
        description="Run the bundle on held-out phantoms and report the share flagged, the mean Dice of flagged and "
                    "unflagged cases, and the AUROC of the review score for tumor Dice < 0.5 and kidney Dice < 0.9.")
    _add_common(checking)
    checking.add_argument("--out", type=Path, default=None, help="write the JSON here too (default: stdout only)")
    checking.set_defaults(run=_cmd_check)


def _bundle(args: argparse.Namespace) -> Path:
    from KidneyTumorSegLib.bundle import default_bundle_path

    return args.bundle or default_bundle_path()


def _rows(args: argparse.Namespace) -> list[dict]:
    from training_tools.review_calibration import case_rows, run_batches

    return case_rows(args.data, run_batches(args.data, args.results, _bundle(args)))


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from training_tools.review_calibration import calibrate, calibration_file, default_calibration_path, write_json

    bundle = _bundle(args)
    result = calibrate(_rows(args))
    out = args.out or default_calibration_path(bundle)
    write_json(out, calibration_file(result, bundle, args.data))
    logger.info("review flag: %s on %d cases (J %.3f, flags %.0f %%); wrote %s", result["thresholds"], result["cases"],
                result["youden_j"], 100 * result["flagged_share"], out)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from KidneyTumorSegLib.review_flag import load_calibration
    from training_tools.review_calibration import check, write_json

    calibration = load_calibration(_bundle(args))
    if calibration is None:
        logger.error("%s has no review calibration: run calibrate-review first", _bundle(args))
        return 1
    result = {"thresholds": calibration["thresholds"], **check(_rows(args), calibration["thresholds"])}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0
