"""2D U-Net for the 2.5D tumor models: ``[B, 1, H, W] -> (seg [B, 1, H, W], reg [B, C, H, W])``.

Default 5 levels (256 x 256 training crops -> 16 x 16 at the bottom) and width 64 at the top
level (that of the original U-Net); inputs must be multiples of ``2**(levels - 1)`` = 16.
"""
from __future__ import annotations

from .blocks import DEFAULT_NORM_GROUPS
from .unet import UNet


class UNet2D(UNet):
    """2D U-Net; see :class:`UNet` for the layout."""

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        levels: int = 5,
        regression_channels: int = 1,
        norm_groups: int = DEFAULT_NORM_GROUPS,
    ):
        super().__init__(2, in_channels, base_channels, levels, regression_channels, norm_groups)
