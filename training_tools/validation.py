"""Cheap validation during training: Dice and loss on a fixed set of sampled patches or slices."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .cache import CachedCase
from .losses import SEGMENTATION_LOSSES
from .samplers import Sample, Sampler
from .stream import collate

VALIDATION_STREAM = 1_000_003  # seeds the validation draws apart from the training stream


def validation_samples(cases: Sequence[CachedCase], sampler: Sampler, seed: int, per_case: int) -> list[Sample]:
    """Up to ``per_case`` samples of each case, evenly spread over its items, drawn with fixed seeds."""
    samples = []
    for c, case in enumerate(cases):
        count = sampler.count(case)
        if count == 0:
            continue
        items = np.unique(np.rint(np.linspace(0, count - 1, min(per_case, count))).astype(int))
        for item in items:
            rng = np.random.default_rng([seed, VALIDATION_STREAM, c, int(item)])
            samples.append(sampler.sample(case, int(item), rng))
    return samples


@torch.no_grad()
def validate(network: nn.Module, samples: Sequence[Sample], batch_size: int, device: torch.device,
             amp_dtype: torch.dtype | None, segmentation_loss: str) -> tuple[float, float]:
    """(Dice of ``sigmoid >= 0.5`` against the targets summed over all samples, mean segmentation loss)."""
    was_training = network.training
    network.eval()
    intersection = predicted = actual = 0.0
    losses = []
    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    for first in range(0, len(samples), batch_size):
        image, seg, _ = collate(samples[first:first + batch_size])
        image, seg = image.to(device), seg.to(device)
        with autocast:
            logits = network(image)[0]
        losses.append(float(SEGMENTATION_LOSSES[segmentation_loss](logits, seg)))
        mask = logits.float() >= 0.0  # sigmoid(logit) >= 0.5
        target = seg > 0.5
        intersection += float((mask & target).sum())
        predicted += float(mask.sum())
        actual += float(target.sum())
    network.train(was_training)
    dice = 1.0 if predicted + actual == 0 else 2.0 * intersection / (predicted + actual)
    return dice, float(np.mean(losses)) if losses else float("nan")
