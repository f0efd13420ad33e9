"""Evaluate a bundle on the held-out cases of a fold: the whole cascade on each case's image,
metrics on the input grid (SPEC §4), a per-case CSV, a summary JSON and a box plot."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from KidneyTumorSegLib.bundle import load_bundle
from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
from KidneyTumorSegLib.imageio import read_image
from KidneyTumorSegLib.inference import pick_device
from KidneyTumorSegLib.metrics import TUMOR_COUNT_KEYS, evaluate_case, summarise
from KidneyTumorSegLib.stage1 import NoKidneyFound

from .cache import KitsCase, find_kits_cases, run_parallel, threads_per_worker
from .splits import split_cases
from .uncertainty_evaluation import PLOT_NAME, REVIEW_COLUMNS, plot_uncertainty, summarise_uncertainty, uncertainty_row

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("kidney_dice", "tumor_dice", "mean_dice", "kidney_surface_dice", "tumor_surface_dice",
                  "kidney_hd95_mm", "tumor_hd95_mm", "tumor_precision", "tumor_recall", "healthy_called_tumor")
CSV_NAME, SUMMARY_NAME, BOXPLOT_NAME = "per_case.csv", "summary.json", "boxplot.png"


def evaluation_cases(data_dir: str | os.PathLike, fold: int | None, folds: int = 5, seed: int = 0) -> list[KitsCase]:
    """The cases of a KiTS19-layout folder held out by ``fold`` (every case for None)."""
    cases = find_kits_cases(data_dir)
    if not cases:
        raise FileNotFoundError(f"{data_dir}: no case_XXXXX/imaging.nii.gz + segmentation.nii.gz found")
    if fold is None:
        return cases
    _, held = split_cases([c.case_id for c in cases], fold, folds, seed)
    return [c for c in cases if c.case_id in held]


def evaluate_one(cascade: Cascade, case: KitsCase) -> dict[str, Any]:
    """All metrics of one case (label maps on the input grid, its own spacing), plus run time, and
    its review score and uncertainty histograms (uncertainty_evaluation) when the cascade gives them.

    A case where stage 1 finds no kidney scores as an empty prediction (``note`` says so).
    """
    image = read_image(case.imaging)
    truth = np.asarray(read_image(case.segmentation).array, dtype=np.uint8)
    start = time.perf_counter()
    note, result = "", None
    try:
        result = cascade.segment(image)
        labels = result.labels
    except NoKidneyFound:
        labels, note = np.zeros_like(truth), "stage 1 found no kidney"
        logger.warning("%s: %s, scored as an empty segmentation", case.case_id, note)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"case_id": case.case_id}
    row.update(evaluate_case(labels, truth, image.spacing))
    row["seconds"] = round(seconds, 2)
    row["note"] = note
    if result is not None and result.uncertainty is not None:
        row.update(uncertainty_row(result, image, truth))
    return row


_CASCADES: dict[tuple[str, InferenceOptions], Cascade] = {}  # one per bundle and options in each process


def _evaluate_job(job: tuple[KitsCase, str, InferenceOptions, int]) -> dict[str, Any]:
    case, bundle_path, options, threads = job
    key = (bundle_path, options)
    if key not in _CASCADES:
        torch.set_num_threads(threads)
        _CASCADES[key] = Cascade(load_bundle(bundle_path), options)
    row = evaluate_one(_CASCADES[key], case)
    logger.info("%s: kidney Dice %.4f, tumor Dice %.4f, healthy kidney called tumor %.3f (%.1f s)", case.case_id,
                row["kidney_dice"], row["tumor_dice"], row["healthy_called_tumor"], row["seconds"])
    return row


def evaluate_bundle(data_dir: str | os.PathLike, bundle_path: str | os.PathLike, out_dir: str | os.PathLike,
                    fold: int | None = 0, folds: int = 5, seed: int = 0,
                    options: InferenceOptions = InferenceOptions(), progress: bool = True,
                    workers: int = 1) -> dict[str, Any]:
    """Run the cascade of a bundle on the held-out cases, ``workers`` cases at a time (processes);
    writes ``per_case.csv``, ``summary.json``, ``boxplot.png`` and (with the uncertainty on)
    ``uncertainty.png`` into ``out_dir`` and returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = evaluation_cases(data_dir, fold, folds, seed)
    load_bundle(bundle_path)  # fail early on a bad bundle
    threads = threads_per_worker(workers, len(cases))
    jobs = [(case, str(bundle_path), options, threads) for case in cases]
    rows = sorted(run_parallel(_evaluate_job, jobs, workers, "evaluate", progress), key=lambda r: r["case_id"])
    write_rows(out_dir / CSV_NAME, rows)
    summary = summarise_rows(rows)
    summary.update(summarise_uncertainty(rows))
    summary.update({"bundle": Path(bundle_path).resolve().name, "data": Path(data_dir).resolve().name,  # no machine path
                    "fold": fold, "folds": folds, "split_seed": seed, "device": str(pick_device(options.device)),
                    "cases_evaluated": [r["case_id"] for r in rows]})
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    plot_boxes(rows, out_dir / BOXPLOT_NAME, f"{Path(bundle_path).name}: {len(rows)} cases")
    if any("wrong_counts" in r for r in rows):
        plot_uncertainty(rows, out_dir / PLOT_NAME, f"{Path(bundle_path).name}: {len(rows)} cases")
    return summary


def summarise_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """KiTS19 means (kidney, tumor, mean Dice), pooled tumor precision and recall, medians of every
    metric over finite values, mean seconds."""
    summary: dict[str, Any] = summarise(rows)
    for key in METRIC_COLUMNS:
        finite = [r[key] for r in rows if math.isfinite(r[key])]
        summary[f"median_{key}"] = float(np.median(finite)) if finite else None
    summary["mean_seconds"] = float(np.mean([r["seconds"] for r in rows]))
    return summary


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Per-case CSV: case_id, every metric, the tumor voxel counts, seconds, note, and the review summary when computed."""
    columns = ("case_id", *METRIC_COLUMNS, *TUMOR_COUNT_KEYS, "seconds", "note", *REVIEW_COLUMNS)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_boxes(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Box plot of kidney, tumor and mean Dice over cases, each case drawn as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("kidney_dice", "tumor_dice", "mean_dice")
    values = [[r[k] for r in rows] for k in keys]
    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.boxplot(values, showmeans=True)
    axis.set_xticks(range(1, len(keys) + 1), ["kidney", "tumor", "mean"])
    for position, column in enumerate(values, 1):
        axis.scatter(np.full(len(column), position) + np.linspace(-0.08, 0.08, len(column)), column, s=9, alpha=0.6)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("Dice")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
