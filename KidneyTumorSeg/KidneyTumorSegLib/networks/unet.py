"""U-Net in 2D or 3D with a segmentation head and a soft-boundary regression head (SPEC §2).

Level ``l`` has ``base_channels * 2**l`` channels. Encoder: double conv (3x3[x3] conv ->
GroupNorm -> LeakyReLU(0.01), twice), then 2x max-pooling; decoder: 2x transposed convolution,
concatenation with the skip, double conv. Heads: 1x1[x1] convolutions on the last decoder
features; segmentation = 1 channel of logits, regression = ``regression_channels`` channels,
linear. Input spatial sizes must be multiples of ``2**(levels - 1)``.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import (
    DEFAULT_NORM_GROUPS,
    check_divisible,
    conv_class,
    conv_transpose_class,
    group_norm,
)


class DoubleConv(nn.Sequential):
    """(conv -> GroupNorm -> LeakyReLU) x 2: ``[B, in_ch, *S] -> [B, out_ch, *S]``."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, groups: int):
        conv = conv_class(spatial_dims)
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1), group_norm(out_ch, groups), nn.LeakyReLU(0.01),
            conv(out_ch, out_ch, 3, padding=1), group_norm(out_ch, groups), nn.LeakyReLU(0.01),
        )


class UNet(nn.Module):
    """U-Net: ``[B, in_channels, *S] -> (seg logits [B, 1, *S], regression
    [B, regression_channels, *S] or None when regression_channels == 0)``, ``S`` = (Z, Y, X) in
    3D or (H, W) in 2D."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        base_channels: int = 32,
        levels: int = 4,
        regression_channels: int = 1,
        norm_groups: int = DEFAULT_NORM_GROUPS,
    ):
        super().__init__()
        if levels < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got {levels}")
        self.levels = levels
        ch = [base_channels * 2**lvl for lvl in range(levels)]
        self.encoders = nn.ModuleList(
            DoubleConv(spatial_dims, in_channels if lvl == 0 else ch[lvl - 1], ch[lvl], norm_groups)
            for lvl in range(levels)
        )
        self.pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims](2)
        up = conv_transpose_class(spatial_dims)
        self.ups = nn.ModuleList(up(ch[lvl + 1], ch[lvl], 2, stride=2) for lvl in range(levels - 1))
        self.decoders = nn.ModuleList(
            DoubleConv(spatial_dims, 2 * ch[lvl], ch[lvl], norm_groups) for lvl in range(levels - 1)
        )
        conv = conv_class(spatial_dims)
        self.seg_head = conv(ch[0], 1, 1)
        self.reg_head = conv(ch[0], regression_channels, 1) if regression_channels > 0 else None

    @property
    def divisor(self) -> int:
        """Input spatial sizes must be multiples of this."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, regression: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``regression=False`` leaves out the regression head (inference of the segmentation only)."""
        check_divisible(tuple(x.shape[2:]), self.divisor, type(self).__name__)
        skips = []
        for lvl, encoder in enumerate(self.encoders):
            x = encoder(x if lvl == 0 else self.pool(x))
            skips.append(x)
        for lvl in range(self.levels - 2, -1, -1):
            x = self.decoders[lvl](torch.cat([self.ups[lvl](x), skips[lvl]], dim=1))
        reg = self.reg_head(x) if self.reg_head is not None and regression else None
        return self.seg_head(x), reg
