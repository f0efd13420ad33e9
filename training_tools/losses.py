"""Training losses (SPEC §2): soft Dice and BCE for segmentation, WMSE for every regression head.

Tensors are ``[B, C, *S]``; each loss reduces over the whole batch to a scalar (float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0  # added to numerator and denominator: empty target + empty prediction -> loss 0


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` on ``p = sigmoid(logits)``, sums over the whole batch."""
    probability = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (probability * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probability.sum() + target.sum() + smooth)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``target`` (PyTorch's stable form)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def wmse_loss(prediction: torch.Tensor, target: torch.Tensor, positive_floor: float = 0.0) -> torch.Tensor:
    """Weighted MSE of SPEC §2: ``(Σ_{t>0}(l−t)² / Σ_{t>0} t + Σ_{t≤0}(l−t)² / N_{t≤0}) / 2``.

    [D] The second denominator is the number of voxels with t ≤ 0 (the paper's Σ_{t≤0} t is 0).
    [D, revised] The first denominator is at least ``positive_floor`` times the number of voxels
    (0 = the paper): a window that holds only the faint tail of a soft boundary (Σ t ≪ 1, as
    windows drawn anywhere in the crop do) would otherwise divide by almost nothing.
    A term whose voxel set is empty contributes 0; all voxels (every channel, every batch item)
    enter the same two sums.
    """
    prediction, target = prediction.float(), target.float()
    squared = (prediction - target) ** 2
    positive = target > 0
    positive_weight = torch.clamp(target[positive].sum(), min=positive_floor * target.numel())
    negative_count = (~positive).sum()
    zero = squared.new_zeros(())
    positive_term = squared[positive].sum() / positive_weight if positive_weight > 0 else zero
    negative_term = squared[~positive].sum() / negative_count if negative_count > 0 else zero
    return (positive_term + negative_term) / 2.0


SEGMENTATION_LOSSES = ("dice", "bce", "dice+bce")
"""The paper's soft Dice and BCE, and Dice plus a voxel-wise BCE term (SPEC §2, revised: nnU-Net's
pairing; the BCE term gives false positives in a window without tumor their gradient)."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the two heads' losses in the total, and of the BCE term of ``"dice+bce"``."""

    segmentation: float = 1.0
    regression: float = 1.0
    voxel: float = 1.0


def segmentation_loss_value(logits: torch.Tensor, target: torch.Tensor, name: str, voxel_weight: float = 1.0) -> torch.Tensor:
    """The segmentation loss ``name`` (one of :data:`SEGMENTATION_LOSSES`); ``voxel_weight``
    scales the BCE term of ``"dice+bce"``."""
    if name == "dice":
        return dice_loss(logits, target)
    if name == "bce":
        return bce_loss(logits, target)
    if name == "dice+bce":
        return dice_loss(logits, target) + voxel_weight * bce_loss(logits, target)
    raise ValueError(f"segmentation loss must be one of {', '.join(SEGMENTATION_LOSSES)}, got {name!r}")


def total_loss(seg_logits: torch.Tensor, regression: torch.Tensor | None, seg_target: torch.Tensor,
               reg_target: torch.Tensor, segmentation_loss: str,
               weights: LossWeights = LossWeights(), wmse_positive_floor: float = 0.0,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Segmentation loss (one of :data:`SEGMENTATION_LOSSES`) plus WMSE of the regression head
    (``wmse_positive_floor``: see :func:`wmse_loss`); returns the total and its parts, detached,
    for logs (tensors: reading them waits for the device)."""
    seg = segmentation_loss_value(seg_logits, seg_target, segmentation_loss, weights.voxel)
    total = weights.segmentation * seg
    parts = {"seg_loss": seg.detach()}
    if regression is not None:
        reg = wmse_loss(regression, reg_target, wmse_positive_floor)
        total = total + weights.regression * reg
        parts["reg_loss"] = reg.detach()
    parts["loss"] = total.detach()
    return total, parts
