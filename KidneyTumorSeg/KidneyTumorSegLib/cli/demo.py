"""`demo`: the shipped sample through the shipped bundle, with a QA picture and Dice against its truth."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ..bundle import default_bundle_path
from ..imageio import read_image
from ..measurements import measure
from ..metrics import kits_dice
from .segment import add_model_options, run_segment

logger = logging.getLogger(__name__)


def sample_case_path() -> Path:
    """The shipped sample: ``KidneyTumorSeg/Resources/Sample/case_sample`` (phantom CT + its truth)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Sample" / "case_sample"


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="run the shipped sample through the shipped bundle",
                                 description="Segment the shipped sample with the shipped demo bundle; writes the label map, report, QA picture and uncertainty map, and prints Dice against the sample's truth. A rerun replaces the outputs of an earlier demo in its folder (other files of those names are kept unless --overwrite).")
    parser.add_argument("--out", type=Path, default=Path("kidneytumorseg-demo"), help="output folder (default ./kidneytumorseg-demo)")
    add_model_options(parser)
    parser.set_defaults(handler=run_demo)


def made_by_demo(report_path: Path, image: Path) -> bool:
    """Whether ``report_path`` is the report of an earlier demo: a segment report of ``image``."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(report, dict) and isinstance(report.get("image"), str) and Path(report["image"]) == image


def run_demo(args: argparse.Namespace) -> int:
    sample = sample_case_path()
    args.out.mkdir(parents=True, exist_ok=True)
    args.image = sample / "imaging.nii.gz"
    args.output = args.out / "segmentation.nii.gz"
    args.report = args.out / "report.json"
    args.qa = args.out / "qa.png"
    args.uncertainty = args.out / "uncertainty.nii.gz"
    args.review_mask = None
    args.box = None
    args.truth = sample / "segmentation.nii.gz"  # its tumor count and volume go beside the result's in the QA picture
    args.bundle = args.bundle or default_bundle_path()
    if made_by_demo(args.report, args.image):  # the demo owns its folder: its earlier outputs are replaced
        args.overwrite = True
    run_segment(args)
    predicted = read_image(args.output)
    truth = np.asarray(read_image(args.truth).array, np.uint8)
    scores = kits_dice(np.asarray(predicted.array, np.uint8), truth)
    report = json.loads(args.report.read_text(encoding="utf-8"))
    truth_measured = measure(truth, predicted.affine)
    tumors = {"result": {"count": report["measurements"]["tumor_count"], "ml": report["measurements"]["tumor_ml"]["total"]},
              "truth": {"count": truth_measured["tumor_count"], "ml": round(truth_measured["tumor_ml"]["total"], 3)}}
    summary = {"dice": scores, "tumors": tumors, "seconds": report["seconds"]["total"], "peak_rss_mb": report["peak_rss_mb"],
               "outputs": [str(args.output), str(args.report), str(args.qa), str(args.uncertainty)]}
    print(json.dumps(summary, indent=2))
    return 0
