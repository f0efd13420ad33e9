"""Layer helpers shared by the V-Net and the U-Nets (2D or 3D by ``spatial_dims``).

Normalisation is GroupNorm everywhere: it does not depend on the batch (training batches hold two
patches) and, unlike InstanceNorm, stays defined when a feature map has a single voxel (the
stage-1 patch is 16 slices deep, i.e. 1 slice at the V-Net's bottom level).
"""
from __future__ import annotations

import math

from torch import nn

DEFAULT_NORM_GROUPS = 8


def conv_class(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_class(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def group_norm(channels: int, groups: int = DEFAULT_NORM_GROUPS) -> nn.GroupNorm:
    """GroupNorm with ``gcd(channels, groups)`` groups, so any channel count is valid."""
    return nn.GroupNorm(math.gcd(channels, groups), channels)


def check_divisible(spatial_shape: tuple[int, ...], divisor: int, name: str) -> None:
    """Raise ``ValueError`` unless every spatial size is a multiple of ``divisor``."""
    if any(size % divisor for size in spatial_shape):
        raise ValueError(
            f"{name} needs spatial sizes divisible by {divisor}, got {tuple(spatial_shape)}"
        )
