"""How visible are the training phantoms' tumors? Contrast statistics, and two voxel classifiers
that read only smoothed intensity, scored on validation phantoms the way the tumor models are.

A floor on what the tumor models could learn from these phantoms: if a small classifier on a
handful of intensity features separates tumor from kidney, the phantoms are not what limits the
networks. Both classifiers are a 32-unit MLP trained on voxels inside kidney and tumor of the
training cache (a random sample per case), with the threshold chosen for Dice on those voxels:

- ``local``: Gaussian-smoothed intensity at 0, 2, 4, 8 and 16 mm, the centre-minus-surround
  differences against 16 mm, and the local standard deviation at 4 mm; what a window sees
  without knowing where the kidney is.
- ``kidney_referenced``: the same plus each smoothed intensity minus the median of the case's
  true kidney and tumor (an oracle context: the tumor read against its own kidney).

Scores are those of whole-crop validation (training_tools.validation): pooled Dice, precision and
recall inside kidney and tumor, and the median share of healthy kidney called tumor.

    python benchmarks/tumor_visibility.py --train-cache TRAIN --val-cache VAL --out visibility.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from KidneyTumorSegLib.networks.registry import ROLES
from KidneyTumorSegLib.settings import LABEL_KIDNEY, LABEL_TUMOR, WORKING_SPACING_ZYX
from training_tools.cache import CachedCase, open_cache
from training_tools.validation import case_counts, summarize

SMOOTHING_MM = (0.0, 2.0, 4.0, 8.0, 16.0)
SURROUND_MM = 16.0
TEXTURE_MM = 4.0
VARIANTS = ("local", "kidney_referenced")
SAMPLES_PER_CASE = 20000
STEPS, HIDDEN = 600, 32


def _smooth(image: np.ndarray, mm: float) -> np.ndarray:
    if mm == 0.0:
        return image
    return ndimage.gaussian_filter(image, [mm / s for s in WORKING_SPACING_ZYX])


def case_features(case: CachedCase) -> dict[str, np.ndarray]:
    """Features of the voxels inside kidney and tumor ``[n, f]`` per variant, float32, in raster order."""
    image = np.asarray(case.image, np.float32)
    inside = np.asarray(case.labels) > 0
    smooth = [_smooth(image, mm)[inside] for mm in SMOOTHING_MM]
    surround = _smooth(image, SURROUND_MM)[inside]
    mean, square = _smooth(image, TEXTURE_MM), _smooth(image * image, TEXTURE_MM)
    texture = np.sqrt(np.maximum(square - mean * mean, 0.0))[inside]
    local = np.stack(smooth + [s - surround for s in smooth[:-1]] + [texture], 1)
    reference = float(np.median(image[inside]))
    referenced = np.concatenate([local, np.stack([s - reference for s in smooth], 1)], 1)
    return {"local": local.astype(np.float32), "kidney_referenced": referenced.astype(np.float32)}


def tumor_contrast(case: CachedCase) -> float | None:
    """|mean tumor - mean kidney| / SD of kidney, in the normalised image (None without tumor)."""
    image, labels = np.asarray(case.image, np.float32), np.asarray(case.labels)
    tumor, kidney = image[labels == LABEL_TUMOR], image[labels == LABEL_KIDNEY]
    if not tumor.size or not kidney.size:
        return None
    return float(abs(tumor.mean() - kidney.mean()) / max(kidney.std(), 1e-6))


def train_classifier(features: np.ndarray, truth: np.ndarray, seed: int) -> tuple[torch.nn.Module, float]:
    """A standardised MLP over ``features [n, f]`` and its Dice-best threshold on them."""
    torch.manual_seed(seed)
    mean, std = features.mean(0), features.std(0) + 1e-6
    network = torch.nn.Sequential(torch.nn.Linear(features.shape[1], HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
    classifier = torch.nn.Sequential(_Standardise(mean, std), network)
    x, y = torch.from_numpy(features), torch.from_numpy(truth.astype(np.float32))
    optimiser = torch.optim.Adam(network.parameters(), 1e-2)
    for _ in range(STEPS):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(classifier(x)[:, 0], y).backward()
        optimiser.step()
    with torch.no_grad():
        p = torch.sigmoid(classifier(x)[:, 0]).numpy()
    def dice(t: float) -> float:
        called = p >= t
        return 2.0 * float((called & truth).sum()) / max(int(called.sum() + truth.sum()), 1)
    return classifier, max(np.arange(0.05, 0.951, 0.05), key=dice)


class _Standardise(torch.nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-cache", required=True)
    parser.add_argument("--val-cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    train_cases = [c for c in open_cache(args.train_cache) if c.has_kidney]
    sampled: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    truths, contrasts = [], []
    for case in train_cases:
        features = case_features(case)
        labels = np.asarray(case.labels)
        truth = labels[labels > 0] == LABEL_TUMOR
        pick = rng.choice(truth.size, min(truth.size, SAMPLES_PER_CASE), replace=False)
        for variant in VARIANTS:
            sampled[variant].append(features[variant][pick])
        truths.append(truth[pick])
        contrast = tumor_contrast(case)
        if contrast is not None:
            contrasts.append(contrast)
    truth = np.concatenate(truths)
    classifiers = {v: train_classifier(np.concatenate(sampled[v]), truth, args.seed) for v in VARIANTS}
    spec = ROLES["T-vnet"]  # scored as a 3D tumor model: inside kidney and tumor
    counts: dict[str, list] = {v: [] for v in VARIANTS}
    per_case = []
    for case in (c for c in open_cache(args.val_cache) if c.has_kidney):
        features, inside = case_features(case), np.asarray(case.labels) > 0
        row = {"case": case.case_id, "healthy": bool(case.meta.get("source", {}).get("healthy", False)),
               "tumor_contrast": tumor_contrast(case)}
        for variant, (classifier, threshold) in classifiers.items():
            probability = np.zeros(inside.shape, np.float32)
            with torch.no_grad():
                probability[inside] = torch.sigmoid(classifier(torch.from_numpy(features[variant]))[:, 0]).numpy()
            called = (probability >= threshold).astype(np.float32)  # 0/1, so validation's 0.5 keeps exactly these
            counted = case_counts(called, spec, case)
            counts[variant].append(counted)
            row[variant] = summarize([counted], tumor=True)
        per_case.append(row)
    result = {
        "what": "voxel classifiers on smoothed intensity, trained on the training phantoms inside kidney and tumor, "
                "scored on whole crops of validation phantoms as the tumor models' validation scores them",
        "train_cache": Path(args.train_cache).name, "val_cache": Path(args.val_cache).name,
        "training_cases": len(train_cases), "training_tumor_cases": len(contrasts),
        "training_tumor_contrast_sd": {"median": float(np.median(contrasts)),
                                       "share_above_1": float(np.mean(np.array(contrasts) > 1.0)),
                                       "share_above_2": float(np.mean(np.array(contrasts) > 2.0))},
        "thresholds": {v: float(t) for v, (_, t) in classifiers.items()},
        "validation": {v: summarize(counts[v], tumor=True) for v in VARIANTS},
        "per_case": per_case,
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("training_tumor_contrast_sd", "thresholds", "validation")}, indent=1))


if __name__ == "__main__":
    main()
