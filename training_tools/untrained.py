"""Bundles of freshly initialised (untrained) networks: for tests, and for speed benchmarks at any width."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from KidneyTumorSegLib.bundle import save_bundle
from KidneyTumorSegLib.networks.registry import ROLES


def make_untrained_bundle(path: str | os.PathLike, base_channels: int | None = 4, roles: tuple[str, ...] | None = None,
                          seed: int = 0, overwrite: bool = False) -> Path:
    """Write a bundle of randomly initialised networks for ``roles`` (default: all twelve).

    ``base_channels`` None gives each architecture its paper-size default width (V-Net 16,
    3D U-Net 32, 2D U-Net 64).
    """
    torch.manual_seed(seed)
    networks = {}
    for role in roles or tuple(ROLES):
        spec = ROLES[role]
        params = spec.network_params(base_channels)
        networks[role] = (spec.build(base_channels), spec.architecture, params)
    metadata = {
        "name": f"untrained-w{base_channels or 'paper'}",
        "description": "Randomly initialised networks: for tests and speed benchmarks only; they segment nothing.",
        "demo": True,
        "license": "Apache-2.0",
        "provenance": {"trained": False, "seed": seed, "base_channels": base_channels},
    }
    return save_bundle(path, networks, metadata, overwrite=overwrite)
