"""4-level 3D U-Net for T-unet: ``[B, 1, Z, Y, X] -> (seg [B, 1, Z, Y, X], reg [B, C, Z, Y, X])``.

Default width 32 at the top level (that of the original 3D U-Net); inputs must be multiples of 8.
"""
from __future__ import annotations

from .blocks import DEFAULT_NORM_GROUPS
from .unet import UNet


class UNet3D(UNet):
    """3D U-Net; see :class:`UNet` for the layout."""

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        levels: int = 4,
        regression_channels: int = 1,
        norm_groups: int = DEFAULT_NORM_GROUPS,
    ):
        super().__init__(3, in_channels, base_channels, levels, regression_channels, norm_groups)
