"""The poly learning-rate schedule of SPEC §2: ``lr · (1 − iter / total_iter) ^ 0.9``."""
from __future__ import annotations

import torch

POLY_POWER = 0.9


def poly_lr(base_lr: float, iteration: int, total_iterations: int, power: float = POLY_POWER) -> float:
    """Learning rate at ``iteration`` (0-based) of ``total_iterations``; 0 from the last one on."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    remaining = max(0.0, 1.0 - iteration / total_iterations)
    return base_lr * remaining ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
