"""Model bundles: a folder with ``manifest.json`` and one weights file per model (SHA-256 checked).

Manifest (format version 1)::

    {"format_version": 1, "name": ..., "description": ..., "demo": true|false,
     "license": ..., "spacing_zyx": [3.0, 0.78, 0.78], "axcodes": ["I", "P", "L"],
     "intensity": {"hu_min": -200, "hu_max": 300}, "labels": {"1": "kidney", "2": "tumor"},
     "provenance": {...}, "expected_runtime": {...},
     "models": [{"role": "KT", "architecture": "vnet", "params": {...}, "patch_size": [32, 128, 128],
                 "weights": "KT.pt", "sha256": "..."}, ...]}

Weights are plain ``state_dict`` files read with ``torch.load(weights_only=True)``: no pickled
code is ever executed. Everything is checked when the bundle is opened, before any work starts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .networks.registry import ROLES, SPATIAL_DIMS, build_network, required_divisor
from .settings import WORKING_AXCODES, WORKING_SPACING_ZYX, IntensitySettings

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_ROLES = ("stage1", "KT")  # without these the cascade cannot run


class BundleError(ValueError):
    """A model bundle is missing, malformed or does not match its manifest (one-line message)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of a bundle: its role, how to rebuild it, and its weights file."""

    role: str
    architecture: str
    params: Mapping[str, Any]
    patch_size: tuple[int, ...]
    weights: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "architecture": self.architecture, "params": dict(self.params),
                "patch_size": list(self.patch_size), "weights": self.weights, "sha256": self.sha256}


@dataclass(frozen=True)
class ModelBundle:
    """An opened, verified bundle: its manifest and the networks it holds (on the CPU, eval mode)."""

    path: Path
    manifest: Mapping[str, Any]
    entries: Mapping[str, ModelEntry]
    networks: Mapping[str, nn.Module] = field(repr=False)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles present, in cascade order."""
        return tuple(role for role in ROLES if role in self.entries)

    @property
    def is_demo(self) -> bool:
        return bool(self.manifest.get("demo", False))

    @property
    def intensity(self) -> IntensitySettings:
        window = self.manifest.get("intensity", {})
        return IntensitySettings(float(window.get("hu_min", -200.0)), float(window.get("hu_max", 300.0)))

    def missing_roles(self) -> tuple[str, ...]:
        """The paper's roles this bundle lacks (the ensemble runs without them and says so)."""
        return tuple(role for role in ROLES if role not in self.entries)


def default_bundle_path() -> Path:
    """The demo bundle shipped with the module: ``KidneyTumorSeg/Resources/Models/demo``."""
    return Path(__file__).resolve().parent.parent / "Resources" / "Models" / "demo"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: str | os.PathLike, roles: tuple[str, ...] | None = None) -> ModelBundle:
    """Open and verify a bundle; ``roles`` limits which models are loaded (None = all present).

    Raises :class:`BundleError` for a missing folder, a malformed or unknown-version manifest,
    a missing or altered weights file, a declared network unfit for its role, weights that are not
    a plain state_dict (pickled code is refused), or weights that do not fit the declared architecture.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    parsed = [_parse_entry(m, path) for m in manifest["models"]]
    entries = {entry.role: entry for entry in parsed}
    if len(entries) != len(parsed):
        raise BundleError(f"{path / MANIFEST_NAME}: a model role is listed twice")
    for role in REQUIRED_ROLES:
        if role not in entries:
            raise BundleError(f"{path}: bundle has no '{role}' model, which the cascade needs")
    wanted = [r for r in entries if roles is None or r in roles or r in REQUIRED_ROLES]
    networks = {role: _load_network(entries[role], path) for role in wanted}
    entries = {role: entries[role] for role in wanted}
    bundle = ModelBundle(path, manifest, entries, networks)
    if bundle.missing_roles():
        logger.info("bundle %s lacks %s; the ensemble runs without them", path.name, ", ".join(bundle.missing_roles()))
    return bundle


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{manifest_path}: malformed manifest ({error})") from error
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: malformed manifest (expected a JSON object)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: unsupported bundle format version {version!r} (this version reads {FORMAT_VERSION})")
    spacing = manifest.get("spacing_zyx", list(WORKING_SPACING_ZYX))
    if [round(float(s), 5) for s in spacing] != [round(s, 5) for s in WORKING_SPACING_ZYX]:
        raise BundleError(f"{manifest_path}: bundle spacing {spacing} differs from the working frame {WORKING_SPACING_ZYX}")
    if tuple(manifest.get("axcodes", WORKING_AXCODES)) != WORKING_AXCODES:
        raise BundleError(f"{manifest_path}: bundle orientation {manifest.get('axcodes')} is not {WORKING_AXCODES}")
    if not isinstance(manifest.get("models"), list) or not manifest["models"]:
        raise BundleError(f"{manifest_path}: manifest lists no models")
    return manifest


def _parse_entry(raw: Any, path: Path) -> ModelEntry:
    try:
        entry = ModelEntry(
            role=str(raw["role"]), architecture=str(raw["architecture"]), params=dict(raw["params"]),
            patch_size=tuple(int(s) for s in raw["patch_size"]), weights=str(raw["weights"]),
            sha256=str(raw["sha256"]).lower(),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{path / MANIFEST_NAME}: malformed model entry {raw!r:.80} ({error})") from error
    if entry.role not in ROLES:
        raise BundleError(f"{path / MANIFEST_NAME}: unknown model role {entry.role!r}")
    if Path(entry.weights).name != entry.weights:
        raise BundleError(f"{path / MANIFEST_NAME}: weights of {entry.role} must be a file inside the bundle")
    return entry


def _load_network(entry: ModelEntry, path: Path) -> nn.Module:
    weights = path / entry.weights
    if not weights.is_file():
        raise BundleError(f"{weights}: weights of {entry.role} not found")
    if sha256_of(weights) != entry.sha256:
        raise BundleError(f"{weights}: SHA-256 does not match the manifest (file altered or corrupt)")
    try:
        network = build_network(entry.architecture, entry.params)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{path / MANIFEST_NAME}: cannot build {entry.role} ({error})") from error
    _check_fits_role(entry, network, path / MANIFEST_NAME)
    state = read_weights(weights, entry.role)
    try:
        network.load_state_dict(state, strict=True)
    except Exception as error:  # shape mismatches, missing or unexpected keys, not a dict
        reason = " ".join(str(error).split())  # torch lists the mismatches on further lines
        raise BundleError(f"{weights}: weights do not fit the declared {entry.architecture} of {entry.role} ({reason:.300})") from error
    return network.eval()


def read_weights(weights: Path, role: str) -> Any:
    """The object in a weights file, read with ``weights_only`` (never pickled code); a
    :class:`BundleError` naming ``role`` when the file is pickled code, truncated or foreign."""
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # pickled code, or not a torch file at all
        detail = re.search(r"Unsupported (?:global: GLOBAL \S+|operand \d+)", str(error))
        reason = detail.group(0) if detail else "not a plain tensor file"
        raise BundleError(f"{weights}: refused to load the weights of {role}: not a plain state_dict ({reason}); "
                          "bundles never run pickled code") from error
    except Exception as error:  # truncated or foreign files
        reason = " ".join(str(error).split())
        raise BundleError(f"{weights}: unreadable weights of {role}: not a complete PyTorch weights file "
                          f"({type(error).__name__}: {reason:.150})") from error


def _check_fits_role(entry: ModelEntry, network: nn.Module, manifest: Path) -> None:
    """Refuse a model whose declared network cannot do its role's job: a 2D network in a 3D role
    (or the reverse), a patch size the network cannot take, or a stage-1 network without the
    five landmark channels."""
    spec = ROLES[entry.role]
    dims = SPATIAL_DIMS[entry.architecture]
    if dims != SPATIAL_DIMS[spec.architecture]:
        raise BundleError(f"{manifest}: {entry.role} needs a {SPATIAL_DIMS[spec.architecture]}D network, got {entry.architecture}")
    divisor = required_divisor(entry.architecture, entry.params)
    if len(entry.patch_size) != dims or any(p <= 0 or p % divisor for p in entry.patch_size):
        raise BundleError(f"{manifest}: patch size {list(entry.patch_size)} of {entry.role} must be {dims} positive "
                          f"multiples of {divisor}")
    wanted = spec.arch_params.get("regression_channels", 0)
    head = getattr(network, "reg_head", None)
    if entry.role == "stage1" and (head is None or head.out_channels != wanted):
        raise BundleError(f"{manifest}: stage1 must have {wanted} landmark channels")


def save_bundle(
    path: str | os.PathLike,
    networks: Mapping[str, tuple[nn.Module, str, Mapping[str, Any]]],
    metadata: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a bundle: ``networks`` maps role -> (network, architecture, params); ``metadata``
    gives name, description, demo, license, provenance, expected_runtime."""
    path = Path(path)
    if (path / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{path}: a bundle already exists (use --overwrite)")
    path.mkdir(parents=True, exist_ok=True)
    models = []
    for role in ROLES:
        if role not in networks:
            continue
        network, architecture, params = networks[role]
        weights = path / f"{role}.pt"
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        torch.save(state, weights)
        models.append(ModelEntry(role, architecture, dict(params), tuple(ROLES[role].patch_size),
                                 weights.name, sha256_of(weights)).to_json())
    manifest = {
        "format_version": FORMAT_VERSION,
        "spacing_zyx": list(WORKING_SPACING_ZYX),
        "axcodes": list(WORKING_AXCODES),
        "intensity": {"hu_min": IntensitySettings().hu_min, "hu_max": IntensitySettings().hu_max},
        "labels": {"1": "kidney", "2": "tumor"},
        **dict(metadata),
        "models": models,
    }
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
