"""`batch`: every case of a folder through the cascade; failures are reported and skipped."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from pathlib import Path

from ..cascade import Cascade
from ..imageio import atomic_output, read_image, write_label_map
from ..measurements import measure
from ..report import kidney_finding
from ..validation import check_ct
from .cases import find_cases
from .segment import add_model_options, inference_options, open_bundle

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
SUMMARY_FIELDS = ("case", "status", "seconds", "kidney_found", "kidney_ml", "tumor_ml", "tumor_count", "largest_tumor_diameter_mm",
                  "error")


def add_batch_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("batch", help="segment every case of a folder", description="Segment every CT of a folder (image files or KiTS19 case folders); writes <case>.nii.gz, <case>.json and summary.csv.")
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="skip cases whose output exists")
    add_model_options(parser)
    parser.set_defaults(handler=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    cases = find_cases(args.input_dir)
    if not cases:
        raise ValueError(f"{args.input_dir}: no images found (.nii.gz, .nii, .nrrd, or case folders with imaging.nii.gz)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(args.output_dir, os.W_OK):
        raise PermissionError(f"{args.output_dir}: output folder is not writable")
    bundle = open_bundle(args)
    cascade = Cascade(bundle, inference_options(args))
    rows = []
    for number, (name, path) in enumerate(cases.items(), start=1):
        output = args.output_dir / f"{name}.nii.gz"
        if output.exists() and (args.resume or not args.overwrite):
            status = "skipped (done)" if args.resume else "skipped (exists; use --overwrite or --resume)"
            rows.append({"case": name, "status": status})
            continue
        start = time.perf_counter()
        try:
            image = read_image(path)
            check_ct(image, force=args.force)
            case = cascade.prepare(image)
            result = cascade.segment(image, case=case)
            measured = measure(result.labels, image.affine)
            finding = kidney_finding(result.labels, result.stage1, None if case.support_down is None else bool(case.support_down.any()))
            if not finding["kidney_found"]:
                logger.warning("%s: no kidney found (%s)", name, finding["stage1_decision"])
            write_label_map(output, result.labels, image.affine, overwrite=args.overwrite)
            with atomic_output(args.output_dir / f"{name}.json", overwrite=True) as report:
                report.write_text(json.dumps({**finding, "bundle": {"demo": bundle.is_demo}, "measurements": measured,
                                              "seconds": result.timings}, indent=2), encoding="utf-8")
            rows.append({"case": name, "status": "ok", "seconds": round(time.perf_counter() - start, 2), "kidney_found": finding["kidney_found"],
                         "kidney_ml": round(measured["kidney_ml"]["total"], 2), "tumor_ml": round(measured["tumor_ml"]["total"], 2),
                         "tumor_count": measured["tumor_count"], "largest_tumor_diameter_mm": round(measured["largest_tumor_diameter_mm"], 1)})
        except Exception as error:  # a failing case is reported and the batch goes on
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.error("%s: failed: %s", name, message)
            rows.append({"case": name, "status": "failed", "seconds": round(time.perf_counter() - start, 2), "error": message})
        if args.progress == "json":
            print(json.dumps({"type": "progress", "fraction": number / len(cases), "stage": "batch", "model": name}), flush=True)
        else:
            logger.info("[%d/%d] %s: %s", number, len(cases), name, rows[-1]["status"])
    write_summary(args.output_dir / SUMMARY_NAME, rows)
    if args.progress == "json":
        print(json.dumps({"type": "done", "output": str(args.output_dir)}), flush=True)
    failed = [row for row in rows if row["status"] == "failed"]
    for row in failed:
        logger.error("failed: %s: %s", row["case"], row["error"])
    logger.info("%d cases: %d ok, %d failed, %d skipped", len(rows), sum(r["status"] == "ok" for r in rows), len(failed),
                sum(r["status"].startswith("skipped") for r in rows))
    return 1 if failed else 0


def write_summary(path: Path, rows: list[dict]) -> None:
    """One CSV row per case (all statuses), written atomically."""
    with atomic_output(path, overwrite=True) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
