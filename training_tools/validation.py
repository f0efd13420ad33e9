"""Validation as used (SPEC §2): each model run by the engine's own inference over whole crops.

A 3D stage-2 model runs the engine's sliding window (its overlap and Gaussian blending) over the
whole cached crop of each validation case, a 2D U-Net runs slice by slice along its axis, and
stage 1 runs over the whole x4 grid. The tumor models run where the engine runs them, inside
kidney and tumor (here the true ones: a perfect KT), and are scored there, as label assignment
uses them: a tumor voxel called kidney is a miss, a kidney voxel called tumor a false positive.
No patch a sampler drew takes part, so a model that learnt where in its window the tumor lies
scores as it will in use.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from KidneyTumorSegLib.cascade import InferenceOptions
from KidneyTumorSegLib.inference import make_predictor, predict_along_axis, sliding_window_predict
from KidneyTumorSegLib.networks.registry import RoleSpec, required_divisor
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS, LABEL_KIDNEY

from .cache import CachedCase
from .samplers import task_mask

VALIDATION_OVERLAP = InferenceOptions().overlap  # the engine's default sliding-window overlap
CHANNELS_LAST = InferenceOptions().channels_last  # and its memory layout (faster on the CPU)
THRESHOLD = DEFAULT_SETTINGS.geometry.probability_threshold
BATCH_3D, BATCH_2D = 2, 8


@dataclass(frozen=True)
class CaseCounts:
    """Voxel counts of one validation case: true positives, false positives, false negatives, and
    for tumor models the healthy kidney voxels (label 1) and how many of them were called tumor."""

    tp: int
    fp: int
    fn: int
    kidney: int = 0
    kidney_called_tumor: int = 0


def predict_case(network: nn.Module, spec: RoleSpec, case: CachedCase, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Probability map of ``network`` over a whole case as the engine runs it: the crop ``[z, y, x]``
    for stage-2 models (tumor models only on patches or slices touching kidney or tumor), the x4
    grid ``[z4, y4, x4]`` for stage 1; float32."""
    predictor = make_predictor(network, device, amp_dtype, "seg", channels_last=CHANNELS_LAST)
    if spec.downsample_factor > 1:
        volume = np.asarray(case.image_down, np.float32)
        return sliding_window_predict(volume, predictor, spec.patch_size, VALIDATION_OVERLAP, BATCH_3D, device)[0]
    volume = np.asarray(case.image, np.float32)
    region = np.asarray(case.labels) > 0 if spec.task == "tumor" else None
    if spec.architecture == "unet2d":
        divisor = required_divisor(spec.architecture, spec.network_params(1))
        return predict_along_axis(volume, predictor, spec.axis, BATCH_2D, device, divisor, region=region)[0]
    return sliding_window_predict(volume, predictor, spec.patch_size, VALIDATION_OVERLAP, BATCH_3D, device,
                                  region=region)[0]


def case_counts(probability: np.ndarray, spec: RoleSpec, case: CachedCase) -> CaseCounts:
    """Counts of ``probability >= 0.5`` against the case's truth for ``spec``'s task; tumor models
    are scored inside kidney and tumor only (where label assignment reads them)."""
    if spec.downsample_factor > 1:
        truth, called = np.asarray(case.foreground_down) > 0, probability >= THRESHOLD
        return _counts(called, truth)
    labels = np.asarray(case.labels)
    truth, called = task_mask(labels, spec.task) > 0, probability >= THRESHOLD
    if spec.task != "tumor":
        return _counts(called, truth)
    inside = labels > 0
    kidney = labels == LABEL_KIDNEY
    counts = _counts(called & inside, truth)
    return CaseCounts(counts.tp, counts.fp, counts.fn, int(kidney.sum()), int((called & kidney).sum()))


def _counts(called: np.ndarray, truth: np.ndarray) -> CaseCounts:
    tp = int((called & truth).sum())
    return CaseCounts(tp, int(called.sum()) - tp, int(truth.sum()) - tp)


def summarize(counts: Sequence[CaseCounts], tumor: bool) -> dict[str, float]:
    """Pooled scores over the validation cases: ``val_dice`` (chooses checkpoints), precision and
    recall; for tumor models also the median share of healthy kidney called tumor and the precision
    of calling every scored voxel tumor (``val_chance_precision``: the tumor's share of kidney and
    tumor), which a model's precision must beat to tell tumor from kidney at all."""
    tp, fp, fn = (sum(getattr(c, k) for c in counts) for k in ("tp", "fp", "fn"))
    scores = {
        "val_dice": 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn),
        "val_precision": 1.0 if tp + fp == 0 else tp / (tp + fp),
        "val_recall": 1.0 if tp + fn == 0 else tp / (tp + fn),
    }
    if tumor:
        shares = [c.kidney_called_tumor / c.kidney for c in counts if c.kidney]
        scores["val_healthy_called_tumor"] = float(np.median(shares)) if shares else 0.0
        scored = sum(c.kidney for c in counts) + tp + fn
        scores["val_chance_precision"] = (tp + fn) / scored if scored else 0.0
    return scores


@torch.no_grad()
def validate(network: nn.Module, spec: RoleSpec, cases: Sequence[CachedCase], device: torch.device,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Whole-crop scores of ``network`` over ``cases`` (see :func:`summarize`); leaves the network
    in the mode and memory layout it was in."""
    was_training = network.training
    try:
        counts = [case_counts(predict_case(network, spec, case, device, amp_dtype), spec, case)
                  for case in cases if case.has_kidney or spec.downsample_factor > 1]
    finally:
        network.to(memory_format=torch.contiguous_format)
        network.train(was_training)
    return summarize(counts, spec.task == "tumor")


def spread_cases(cases: Sequence[CachedCase], count: int) -> list[CachedCase]:
    """``count`` cases taken evenly over the list (all of them if fewer)."""
    if count >= len(cases):
        return list(cases)
    step = len(cases) / count
    return [cases[int(i * step)] for i in range(count)]


def renamed(scores: dict[str, float], prefix: str) -> dict[str, float]:
    """``scores`` of :func:`validate` with ``val_`` replaced by ``prefix`` (e.g. ``fit_``)."""
    return {prefix + key[len("val_"):]: value for key, value in scores.items()}
