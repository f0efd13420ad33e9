"""What a box given by the user costs: over-segmentation under the user's box rule, as JSON.

On KiTS19-layout cases (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``, e.g. phantoms of
held-out masks), the cascade runs once with stage 1's own crop (the support rule applies) and then
with boxes a user might give:

- ``generous``: the true kidneys' box grown by ``--margin-mm`` on every side (a box dragged loosely
  around both kidneys), under the user's box rule (``authority``: stage 1's support does not apply)
  and under ``support`` (the rule stage 1's own crop gets);
- ``full``: the whole volume (``--box full``), under both rules.

Per run: kidney Dice (label > 0 against the truth > 0), precision, the volume labelled outside the
truth (mL, on the input grid), tumor Dice, and the seconds of stage 2.

    python benchmarks/user_box.py heldout/ --cases case_00090,case_00092,case_00095 --out user_box.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RULES = ("authority", "support")


def truth_box(truth_working: np.ndarray, margin_mm: float, spacing_zyx: tuple[float, float, float]):
    """The working-frame box of the truth's foreground ``[z, y, x]`` grown by ``margin_mm`` (clipped)."""
    from KidneyTumorSegLib.boxes import Box

    hits = np.argwhere(truth_working > 0)
    grow = np.ceil(margin_mm / np.asarray(spacing_zyx)).astype(int)
    start = np.maximum(hits.min(axis=0) - grow, 0)
    stop = np.minimum(hits.max(axis=0) + grow, np.asarray(truth_working.shape) - 1)
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in stop))


def scored(labels: np.ndarray, truth: np.ndarray, voxel_ml: float, seconds: float) -> dict:
    """Kidney Dice, precision, mL labelled outside the truth and tumor Dice of ``labels`` (input grid)."""
    from KidneyTumorSegLib.metrics import dice

    found, real = labels > 0, truth > 0
    overlap = int(np.count_nonzero(found & real))
    return {
        "kidney_dice": round(dice(found, real), 4),
        "precision": round(overlap / max(int(found.sum()), 1), 4),
        "outside_truth_ml": round(int(np.count_nonzero(found & ~real)) * voxel_ml, 1),
        "tumor_dice": round(dice(labels == 2, truth == 2), 4),
        "seconds": round(seconds, 1),
    }


def measure_case(folder: Path, bundle_path: Path | None, margin_mm: float, with_full: bool) -> dict:
    """Every run of one case (see the module docstring)."""
    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.bundle import default_bundle_path, load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.geometry import to_working_frame
    from KidneyTumorSegLib.imageio import read_image
    from KidneyTumorSegLib.settings import DEFAULT_SETTINGS

    bundle = load_bundle(bundle_path or default_bundle_path())
    image = read_image(folder / "imaging.nii.gz")
    truth = np.asarray(read_image(folder / "segmentation.nii.gz").array, np.uint8)
    voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    cascades = {rule: Cascade(bundle, InferenceOptions(device="cpu", uncertainty=False, settings=dataclasses.replace(
        DEFAULT_SETTINGS, stage1=dataclasses.replace(DEFAULT_SETTINGS.stage1, user_box_rule=rule)))) for rule in RULES}
    case = cascades["authority"].prepare(image)
    start = time.perf_counter()
    own = cascades["authority"].segment(image, case=case)
    runs = {"stage 1's crop": scored(own.labels, truth, voxel_ml, time.perf_counter() - start)}
    truth_working = to_working_frame(truth, case.frame, order=0)
    boxes = {"generous": truth_box(truth_working, margin_mm, case.frame.spacing)}
    if with_full:
        boxes["full"] = Box.full(case.frame.shape)
    for name, box in boxes.items():
        for rule in RULES:
            start = time.perf_counter()
            result = cascades[rule].segment(image, box, case=case)
            runs[f"{name} box, {rule}"] = scored(result.labels, truth, voxel_ml, time.perf_counter() - start)
    return {"case": folder.name, "truth_ml": round(int(np.count_nonzero(truth)) * voxel_ml, 1),
            "generous_box_working": boxes["generous"].to_json(), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="KiTS19-layout folder (case_XXXXX/imaging.nii.gz + segmentation.nii.gz)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: every case)")
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped demo bundle)")
    parser.add_argument("--margin-mm", type=float, default=30.0, help="growth of the generous box per side (default 30)")
    parser.add_argument("--no-full", action="store_true", help="leave out the whole-volume box (slow on the CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))
    import torch

    torch.set_num_threads(args.threads)
    names = args.cases.split(",") if args.cases else sorted(p.name for p in args.data.iterdir() if (p / "imaging.nii.gz").is_file())
    cases = [measure_case(args.data / name, args.bundle, args.margin_mm, not args.no_full) for name in names]
    runs = cases[0]["runs"].keys() if cases else []
    mean = {run: {key: round(float(np.mean([c["runs"][run][key] for c in cases])), 4)
                  for key in ("kidney_dice", "precision", "outside_truth_ml", "tumor_dice")} for run in runs}
    text = json.dumps({"margin_mm": args.margin_mm, "mean": mean, "cases": cases}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
