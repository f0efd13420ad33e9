"""Networks of the cascade: 3D V-Net, 3D and 2D U-Nets, and the registry of the twelve roles.

Every network maps ``[B, 1, *S] -> (seg logits [B, 1, *S], regression [B, C, *S])``.
"""
from .registry import (
    ARCHITECTURES,
    ROLES,
    SPATIAL_DIMS,
    RoleSpec,
    build_network,
    required_divisor,
)
from .unet2d import UNet2D
from .unet3d import UNet3D
from .vnet import VNet

__all__ = [
    "ARCHITECTURES", "ROLES", "SPATIAL_DIMS", "RoleSpec", "UNet2D", "UNet3D", "VNet",
    "build_network", "required_divisor",
]
