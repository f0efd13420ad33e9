"""5-level 3D V-Net with a segmentation decoder and an optional regression decoder (SPEC §1-2).

Layout, for level ``l`` with ``c_l = base_channels * 2**l`` channels:

- encoder: residual stage of ``min(l + 1, 3)`` convolutions (1, 2, 3, 3, 3 as in the original
  V-Net), each conv -> GroupNorm -> PReLU, the last PReLU after the residual sum; a 2x2x2
  stride-2 convolution (``c_l -> c_{l+1}``) leads to the next level;
- decoder: 2x2x2 stride-2 transposed convolution (``c_{l+1} -> c_l``), concatenation with the
  encoder features of level ``l``, residual stage back to ``c_l`` channels;
- heads: 1x1x1 convolutions; segmentation = 1 channel of logits, regression =
  ``regression_channels`` channels, linear (no activation: landmark / boundary targets lie in
  [0, 1] but WMSE is applied to the raw output).

The regression decoder is a second decoder with its own weights. ``branch_level="bottom"``
starts it at the bottom level (KT, K1, T-vnet, stage 1); ``"second_last"`` starts it one level
higher, after the first decoder stage, which both decoders share (K2).

Convolutions are 3x3x3 by default (``kernel_size``; the original V-Net used 5x5x5). Input
spatial sizes must be multiples of ``2**(levels - 1)`` (16 for 5 levels).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import DEFAULT_NORM_GROUPS, check_divisible, group_norm

BRANCH_LEVELS = ("bottom", "second_last")


def _conv_norm(in_ch: int, out_ch: int, kernel_size: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
        group_norm(out_ch, groups),
    )


class ResidualStage(nn.Module):
    """``n_convs`` conv-norm-PReLU layers plus a shortcut (1x1x1 conv when channels change).

    ``[B, in_ch, Z, Y, X] -> [B, out_ch, Z, Y, X]``.
    """

    def __init__(self, in_ch: int, out_ch: int, n_convs: int, kernel_size: int, groups: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers.append(_conv_norm(in_ch if i == 0 else out_ch, out_ch, kernel_size, groups))
            if i < n_convs - 1:
                layers.append(nn.PReLU(out_ch))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class DownConv(nn.Sequential):
    """2x2x2 stride-2 convolution: ``[B, in_ch, Z, Y, X] -> [B, out_ch, Z/2, Y/2, X/2]``."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__(
            nn.Conv3d(in_ch, out_ch, 2, stride=2), group_norm(out_ch, groups), nn.PReLU(out_ch)
        )


class UpStage(nn.Module):
    """Transposed conv up, concatenation with the skip, residual stage.

    ``([B, 2c, Z, Y, X], skip [B, c, 2Z, 2Y, 2X]) -> [B, c, 2Z, 2Y, 2X]``.
    """

    def __init__(self, channels: int, n_convs: int, kernel_size: int, groups: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose3d(2 * channels, channels, 2, stride=2),
            group_norm(channels, groups),
            nn.PReLU(channels),
        )
        self.stage = ResidualStage(2 * channels, channels, n_convs, kernel_size, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stage(torch.cat([self.up(x), skip], dim=1))


def _n_convs(level: int) -> int:
    return min(level + 1, 3)


class Decoder(nn.Module):
    """Up stages for levels ``top_level, ..., 0`` (the heads live outside).

    The stage for level ``l`` takes features at level ``l + 1`` and the encoder skip of level
    ``l``; ``forward`` returns every stage's output, coarsest first.
    """

    def __init__(self, base_channels: int, top_level: int, kernel_size: int, groups: int):
        super().__init__()
        self.levels = list(range(top_level, -1, -1))
        self.stages = nn.ModuleList(
            UpStage(base_channels * 2**lvl, _n_convs(lvl), kernel_size, groups)
            for lvl in self.levels
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for lvl, stage in zip(self.levels, self.stages):
            x = stage(x, skips[lvl])
            outputs.append(x)
        return outputs


class VNet(nn.Module):
    """3D V-Net: ``[B, in_channels, Z, Y, X] -> (seg logits [B, 1, Z, Y, X], regression
    [B, regression_channels, Z, Y, X] or None when regression_channels == 0)``."""

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 16,
        levels: int = 5,
        regression_channels: int = 1,
        branch_level: str = "bottom",
        kernel_size: int = 3,
        norm_groups: int = DEFAULT_NORM_GROUPS,
    ):
        super().__init__()
        if branch_level not in BRANCH_LEVELS:
            raise ValueError(f"branch_level must be one of {BRANCH_LEVELS}, got {branch_level!r}")
        if levels < 2:
            raise ValueError(f"a V-Net needs at least 2 levels, got {levels}")
        self.levels = levels
        self.branch_level = branch_level
        ch = [base_channels * 2**lvl for lvl in range(levels)]
        self.encoders = nn.ModuleList(
            ResidualStage(in_channels if lvl == 0 else ch[lvl], ch[lvl], _n_convs(lvl), kernel_size,
                          norm_groups)
            for lvl in range(levels)
        )
        self.downs = nn.ModuleList(
            DownConv(ch[lvl], ch[lvl + 1], norm_groups) for lvl in range(levels - 1)
        )
        self.seg_decoder = Decoder(base_channels, levels - 2, kernel_size, norm_groups)
        self.seg_head = nn.Conv3d(ch[0], 1, 1)
        self.reg_decoder: Decoder | None = None
        self.reg_head: nn.Conv3d | None = None
        if regression_channels > 0:
            reg_top = levels - 2 if branch_level == "bottom" else levels - 3
            if reg_top < 0:
                raise ValueError("branch_level='second_last' needs at least 3 levels")
            self.reg_decoder = Decoder(base_channels, reg_top, kernel_size, norm_groups)
            self.reg_head = nn.Conv3d(ch[0], regression_channels, 1)

    @property
    def divisor(self) -> int:
        """Input spatial sizes must be multiples of this."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, regression: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``regression=False`` skips the regression decoder (inference of the segmentation only)."""
        check_divisible(tuple(x.shape[2:]), self.divisor, "VNet")
        skips = []
        for lvl, encoder in enumerate(self.encoders):
            x = encoder(x)
            skips.append(x)
            if lvl < self.levels - 1:
                x = self.downs[lvl](x)
        bottom = skips[-1]
        seg_features = self.seg_decoder(bottom, skips)
        seg = self.seg_head(seg_features[-1])
        if self.reg_decoder is None or not regression:
            return seg, None
        # "second_last": the regression decoder shares the first seg-decoder stage.
        branch_input = bottom if self.branch_level == "bottom" else seg_features[0]
        return seg, self.reg_head(self.reg_decoder(branch_input, skips)[-1])
