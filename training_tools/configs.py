"""Training configurations: one JSON per model (``configs/paper/<role>.json``) plus presets.

A preset (``configs/presets/<name>.json``) overrides fields for every role (``"all"``) and per
architecture or role (``"vnet"``, ``"unet3d"``, ``"unet2d"``, ``"stage1"``, ``"KT"``, ...), applied
in that order. Single fields can be overridden last (``--set key=value`` on the command line).
Learning rate and segmentation loss come from SPEC §2 (the role registry); iterations, batch
size and width are not given by the paper: the values in ``configs/paper`` are ours.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from KidneyTumorSegLib.networks.registry import ROLES, RoleSpec

from .losses import SEGMENTATION_LOSSES
from .samplers import TUMOR_BOX_PADDINGS

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PAPER_DIR = CONFIG_DIR / "paper"
PRESET_DIR = CONFIG_DIR / "presets"
PRESET_SCOPES = ("all", "vnet", "unet3d", "unet2d")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one model's training.

    ``patch_size`` None = the role's patch (SPEC §2); ``patches_per_case`` None = the SPEC count
    (100 stage 1, 200 KT / K, 100 T; 2D models use every tumor slice). ``augmentation`` None =
    off (the paper uses none), else the fields of :class:`training_tools.augment.Augmentation`.
    ``loss_weights``: weights of the segmentation loss, of the WMSE regression loss and, under
    the ``"dice+bce"`` segmentation loss, of its voxel-wise BCE term (``"voxel"``).
    ``inference_window_fraction`` (tumor models; 0 = the paper): share of the windows (3D
    patches, 2D slices) drawn anywhere in the case's crop, as inference meets the model, instead
    of around the tumor (SPEC §2, revised).
    ``wmse_positive_floor``: the WMSE's boundary term divides by at least this share of the
    batch's voxels (SPEC §2, revised; 0 = the paper's Σ t, which a window holding only the faint
    tail of a boundary makes ≪ 1: losses of 10²–10⁴ that stall Adam). Acts only on such windows.
    ``tumor_box_padding`` (T-vnet, T-unet): what fills a patch outside the expanded tumor box,
    ``"image"`` (SPEC, revised: the crop's own voxels and labels there, as the model
    sees them at inference, where it runs over the whole kidney crop).
    """

    role: str
    iterations: int
    batch_size: int
    base_channels: int
    learning_rate: float
    segmentation_loss: str
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    loss_weights: dict[str, float] = field(default_factory=lambda: {"segmentation": 1.0, "regression": 1.0})
    patch_size: tuple[int, ...] | None = None
    patches_per_case: int | None = None
    val_interval: int = 1000
    checkpoint_interval: int = 1000
    log_interval: int = 10
    augmentation: dict[str, Any] | None = None
    seed: int = 0
    inference_window_fraction: float = 0.0
    tumor_box_padding: str = "image"
    wmse_positive_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        for name in ("iterations", "batch_size", "base_channels", "val_interval", "checkpoint_interval", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{self.role}: {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.inference_window_fraction <= 1.0:
            raise ValueError(f"{self.role}: inference_window_fraction must lie in [0, 1], got {self.inference_window_fraction}")
        if self.inference_window_fraction and self.spec.task != "tumor":
            raise ValueError(f"{self.role}: inference_window_fraction applies to the tumor models only")
        if self.wmse_positive_floor < 0.0:
            raise ValueError(f"{self.role}: wmse_positive_floor must be at least 0, got {self.wmse_positive_floor}")
        if self.tumor_box_padding not in TUMOR_BOX_PADDINGS:
            raise ValueError(f"{self.role}: tumor_box_padding must be one of {TUMOR_BOX_PADDINGS}, got {self.tumor_box_padding!r}")
        if self.tumor_box_padding != "image" and not (self.spec.task == "tumor" and self.spec.architecture != "unet2d"):
            raise ValueError(f"{self.role}: tumor_box_padding applies to T-vnet and T-unet only")
        if self.segmentation_loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"{self.role}: segmentation_loss must be one of {', '.join(SEGMENTATION_LOSSES)}, "
                             f"got {self.segmentation_loss!r}")

    @property
    def spec(self) -> RoleSpec:
        """The role's registry entry (task, architecture, patch, axis)."""
        return ROLES[self.role]

    @property
    def effective_patch_size(self) -> tuple[int, ...]:
        """The training patch: ``patch_size`` or the role's."""
        return tuple(self.patch_size or self.spec.patch_size)

    def network_params(self) -> dict[str, Any]:
        """Constructor parameters of the network (the role's, at this width)."""
        return self.spec.network_params(self.base_channels)

    def spec_deviations(self) -> list[str]:
        """Where this config departs from SPEC §2 (learning rate, loss, patch size, tumor patches)."""
        spec = self.spec
        notes = []
        if self.learning_rate != spec.learning_rate:
            notes.append(f"learning rate {self.learning_rate:g} (SPEC {spec.learning_rate:g})")
        if self.segmentation_loss != spec.loss:
            notes.append(f"segmentation loss {self.segmentation_loss} (SPEC {spec.loss})")
        if self.effective_patch_size != tuple(spec.patch_size):
            notes.append(f"patch {self.effective_patch_size} (SPEC {tuple(spec.patch_size)})")
        if self.inference_window_fraction:
            notes.append(f"{self.inference_window_fraction:g} of the windows drawn anywhere in the crop, as inference "
                         "meets the model (the paper: all around the tumor)")
        if self.wmse_positive_floor:
            notes.append(f"WMSE boundary term divided by at least {self.wmse_positive_floor:g} of the batch's voxels "
                         "(the paper: by the boundary's Σ t alone)")
        if self.tumor_box_padding != "image":
            notes.append("zeros around the expanded tumor box (SPEC: the image's own voxels)")
        if self.augmentation:
            notes.append(f"training-time augmentation {json.dumps(self.augmentation, sort_keys=True)} (the paper uses none)")
        return notes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_size"] = None if self.patch_size is None else list(self.patch_size)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**dict(data))


def paper_config(role: str) -> TrainConfig:
    """The paper configuration of ``role`` from ``configs/paper/<role>.json``."""
    path = PAPER_DIR / f"{role}.json"
    if not path.is_file():
        raise ValueError(f"no configuration for role {role!r} ({path} missing)")
    return TrainConfig.from_json(json.loads(path.read_text()))


def preset_names() -> list[str]:
    """Names of the presets shipped in ``configs/presets`` (besides "paper")."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A preset by name (``configs/presets/<name>.json``) or path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name_or_path!r}; shipped: paper, {', '.join(preset_names())}")
    return json.loads(path.read_text())


def apply_preset(config: TrainConfig, preset: Mapping[str, Any]) -> TrainConfig:
    """``config`` with the preset's overrides for "all", its architecture, then its role."""
    overrides: dict[str, Any] = {}
    for scope in ("all", config.spec.architecture, config.role):
        overrides.update(preset.get("overrides", {}).get(scope, {}))
    return with_overrides(config, overrides)


def with_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """``config`` with some fields replaced (validated)."""
    data = config.to_json()
    unknown = set(overrides) - set(data)
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
    data.update(overrides)
    return TrainConfig.from_json(data)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value (bare words are strings): ``iterations=500``, ``patch_size=[16,64,64]``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override must be key=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def load_config(role_or_path: str, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A config from a role name (paper config) or a JSON file, then a preset, then ``overrides``."""
    path = Path(role_or_path)
    if path.suffix == ".json" and path.is_file():
        config = TrainConfig.from_json(json.loads(path.read_text()))
    else:
        config = paper_config(role_or_path)
    if preset and preset != "paper":
        config = apply_preset(config, load_preset(preset))
    if overrides:
        config = with_overrides(config, overrides)
    for note in config.spec_deviations():
        logger.info("%s: departs from SPEC: %s", config.role, note)
    return config


def all_configs(preset: str | None = None) -> dict[str, TrainConfig]:
    """The twelve configs, in cascade order."""
    return {role: load_config(role, preset) for role in ROLES}
