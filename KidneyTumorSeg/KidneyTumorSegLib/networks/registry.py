"""The twelve model roles of the cascade (SPEC §1-2) and building networks from JSON parameters.

A bundle manifest stores ``architecture`` + ``params`` (plain JSON) for each model;
:func:`build_network` rebuilds the network from exactly those. Widths (``base_channels``) are not
part of a role: the paper does not give them, so the trainer picks one (defaults: V-Net 16,
3D U-Net 32, 2D U-Net 64; the CPU demo uses 4) and stores it in ``params``.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from torch import nn

from .unet2d import UNet2D
from .unet3d import UNet3D
from .vnet import VNet

ARCHITECTURES: Mapping[str, type[nn.Module]] = MappingProxyType(
    {"vnet": VNet, "unet3d": UNet3D, "unet2d": UNet2D}
)
SPATIAL_DIMS: Mapping[str, int] = MappingProxyType({"vnet": 3, "unet3d": 3, "unet2d": 2})
TASKS = ("foreground", "kidney", "tumor")
AXES = ("axial", "coronal", "sagittal")
LOSSES = ("dice", "bce")


def _architecture_class(architecture: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None


def build_network(architecture: str, params: Mapping[str, Any]) -> nn.Module:
    """Network of ``architecture`` ("vnet" | "unet3d" | "unet2d") built from keyword ``params``
    (e.g. ``{"base_channels": 16, "regression_channels": 5, "branch_level": "bottom"}``)."""
    return _architecture_class(architecture)(**dict(params))


def required_divisor(architecture: str, params: Mapping[str, Any]) -> int:
    """Every input spatial size must be a multiple of this: ``2**(levels - 1)``."""
    cls = _architecture_class(architecture)
    levels = params.get("levels", inspect.signature(cls).parameters["levels"].default)
    return 2 ** (int(levels) - 1)


class FrozenParams(dict):
    """A read-only ``dict`` of JSON values: serialises with ``json`` and pickles (unlike
    ``MappingProxyType``), so a :class:`RoleSpec` can cross process boundaries."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("role parameters are read-only; copy them with dict(...)")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True))

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return FrozenParams, (dict(self),)


@dataclass(frozen=True)
class RoleSpec:
    """One model of the cascade.

    ``patch_size`` is ``(z, y, x)`` for 3D roles and ``(h, w)`` for 2D ones, in voxels of the grid
    the model runs on: the working frame, or the x``downsample_factor`` grid (stage 1).
    ``axis`` is the slicing axis of a 2D role (axial = z, coronal = y, sagittal = x), else None.
    ``loss`` is the segmentation loss; every regression head uses WMSE.
    """

    role: str
    task: str
    architecture: str
    arch_params: Mapping[str, Any]
    loss: str
    learning_rate: float
    patch_size: tuple[int, ...]
    axis: str | None = None
    downsample_factor: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_params", FrozenParams(self.arch_params))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        _architecture_class(self.architecture)
        if self.task not in TASKS or self.loss not in LOSSES:
            raise ValueError(f"{self.role}: bad task {self.task!r} or loss {self.loss!r}")
        dims = SPATIAL_DIMS[self.architecture]
        if len(self.patch_size) != dims or (self.axis is not None) != (dims == 2):
            raise ValueError(f"{self.role}: patch {self.patch_size} / axis {self.axis} "
                             f"do not fit a {dims}D network")
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"{self.role}: bad axis {self.axis!r}")
        divisor = required_divisor(self.architecture, self.arch_params)
        if any(size % divisor for size in self.patch_size):
            raise ValueError(f"{self.role}: patch {self.patch_size} not divisible by {divisor}")

    def network_params(self, base_channels: int | None = None) -> dict[str, Any]:
        """JSON-serialisable constructor parameters; ``base_channels`` None = network default."""
        params = dict(self.arch_params)
        if base_channels is not None:
            params["base_channels"] = int(base_channels)
        return params

    def build(self, base_channels: int | None = None) -> nn.Module:
        """A freshly initialised network for this role."""
        return build_network(self.architecture, self.network_params(base_channels))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (lists for tuples) for manifests and logs."""
        return {
            "role": self.role, "task": self.task, "architecture": self.architecture,
            "arch_params": dict(self.arch_params), "loss": self.loss,
            "learning_rate": self.learning_rate, "patch_size": list(self.patch_size),
            "axis": self.axis, "downsample_factor": self.downsample_factor,
        }


def _vnet(regression_channels: int, branch_level: str) -> dict[str, Any]:
    return {"levels": 5, "regression_channels": regression_channels, "branch_level": branch_level}


_TUMOR_3D_PATCH = (32, 64, 64)
_KIDNEY_PATCH = (32, 128, 128)  # [D] the paper gives no patch size for KT / K


def _roles_2d() -> list[RoleSpec]:
    short = {"axial": "ax", "coronal": "co", "sagittal": "sa"}
    return [
        RoleSpec(f"T2D-{short[axis]}-{loss}", "tumor", "unet2d",
                 {"levels": 5, "regression_channels": 1}, loss, 1e-3, (256, 256), axis=axis)
        for loss in LOSSES for axis in AXES
    ]


ROLES: Mapping[str, RoleSpec] = MappingProxyType({spec.role: spec for spec in [
    # [D] stage 1's learning rate is not given: 1e-4 like KT and K.
    RoleSpec("stage1", "foreground", "vnet", _vnet(5, "bottom"), "dice", 1e-4, (16, 64, 64),
             downsample_factor=4),
    RoleSpec("KT", "foreground", "vnet", _vnet(1, "bottom"), "dice", 1e-4, _KIDNEY_PATCH),
    RoleSpec("K1", "kidney", "vnet", _vnet(1, "bottom"), "dice", 1e-4, _KIDNEY_PATCH),
    RoleSpec("K2", "kidney", "vnet", _vnet(1, "second_last"), "dice", 1e-4, _KIDNEY_PATCH),
    RoleSpec("T-vnet", "tumor", "vnet", _vnet(1, "bottom"), "dice", 1e-3, _TUMOR_3D_PATCH),
    RoleSpec("T-unet", "tumor", "unet3d", {"levels": 4, "regression_channels": 1}, "dice", 1e-3,
             _TUMOR_3D_PATCH),
    *_roles_2d(),
]})
"""The paper's twelve models, keyed by role, in cascade order."""
