"""Small synthetic CTs, hand-steered bundles and intensity-threshold networks for the cascade and CLI tests.

Phantom CTs are built in the working frame ``[z, y, x]`` (I, P, L at 3.0 x 0.78 x 0.78 mm), so
an I,P,L input at that spacing maps onto the working frame voxel for voxel. HU: air -1000, body
0, kidney 150, tumor 250; after the [-200, 300] window that is 0.0, 0.4, 0.7 and 0.9.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import torch
from torch import nn

from KidneyTumorSegLib.bundle import MANIFEST_NAME, load_bundle, save_bundle
from KidneyTumorSegLib.imageio import Image
from KidneyTumorSegLib.settings import WORKING_SPACING_ZYX
from training_tools.untrained import make_untrained_bundle

HU_AIR, HU_BODY, HU_KIDNEY, HU_TUMOR = -1000, 0, 150, 250


def normalized(hu: float) -> float:
    """The network input value of ``hu`` under the default [-200, 300] window."""
    return (min(max(hu, -200.0), 300.0) + 200.0) / 500.0


def working_affine(origin: tuple[float, float, float] = (50.0, 40.0, 30.0)) -> np.ndarray:
    """Voxel -> RAS of an I,P,L grid at the working spacing: index ``[z, y, x]``."""
    sz, sy, sx = WORKING_SPACING_ZYX
    affine = np.zeros((4, 4))
    affine[:3, 0] = (0.0, 0.0, -sz)  # z points Inferior
    affine[:3, 1] = (0.0, -sy, 0.0)  # y points Posterior
    affine[:3, 2] = (-sx, 0.0, 0.0)  # x points Left
    affine[:3, 3] = origin
    affine[3, 3] = 1.0
    return affine


def phantom_ct(shape_zyx: tuple[int, int, int] = (20, 64, 64), tumor: bool = True) -> np.ndarray:
    """int16 HU ``[z, y, x]``: air around a body box, two kidney boxes, a tumor in the left one.

    Kidneys fill slices ``z/4 … 3z/4`` and rows ``y/4 … 3y/4``; the right kidney (small x) spans
    ``x/8 … 3x/8``, the left one (large x: I,P,L's x points Left) ``5x/8 … 7x/8``.
    """
    z, y, x = shape_zyx
    ct = np.full(shape_zyx, HU_AIR, np.int16)
    ct[:, 2:y - 2, 2:x - 2] = HU_BODY
    rows, slices = slice(y // 4, 3 * y // 4), slice(z // 4, 3 * z // 4)
    ct[slices, rows, x // 8:3 * x // 8] = HU_KIDNEY
    ct[slices, rows, 5 * x // 8:7 * x // 8] = HU_KIDNEY
    if tumor:
        ct[slices, y // 4:y // 2, 5 * x // 8:3 * x // 4] = HU_TUMOR
    return ct


def image_in(array_zyx: np.ndarray, orientation: str) -> Image:
    """The same anatomy as an :class:`Image` on an I,P,L, RAS (same voxels, reordered) or oblique grid.

    ``oblique``: the I,P,L array with its affine rotated by 10 degrees about z and 5 about x.
    """
    affine = working_affine()
    if orientation == "IPL":
        return Image(array_zyx, affine)
    if orientation == "RAS":
        image = nib.Nifti1Image(array_zyx, affine)
        transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(("R", "A", "S")))
        reoriented = image.as_reoriented(transform)
        assert nib.aff2axcodes(reoriented.affine) == ("R", "A", "S")
        return Image(np.asarray(reoriented.dataobj), reoriented.affine)
    if orientation == "oblique":
        return Image(array_zyx, rotation(10.0, axis=2) @ rotation(5.0, axis=0) @ affine)
    raise ValueError(orientation)


def rotation(degrees: float, axis: int) -> np.ndarray:
    """A 4 x 4 rotation by ``degrees`` about array axis ``axis``."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(4)
    matrix[[a, a, b, b], [a, b, a, b]] = (c, -s, s, c)
    return matrix


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Save ``array`` with ``affine`` as NIfTI (qform and sform set)."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, os.fspath(path))
    return Path(path)


class ThresholdNet(nn.Module):
    """A parameter-free stand-in for a network: segmentation logits ``+/-20`` where the input
    lies strictly between ``low`` and ``high``; regression all ``heat`` (``channels`` of them, or
    None). Works on 2D and 3D inputs ``[B, 1, ...]``; ``calls`` counts forward passes."""

    def __init__(self, low: float, high: float = 2.0, channels: int = 0, heat: float = 0.0):
        super().__init__()
        self.low, self.high, self.channels, self.heat = low, high, channels, heat
        self.calls = 0

    def forward(self, x: torch.Tensor, regression: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        inside = (x > self.low) & (x < self.high)
        logits = torch.where(inside, 20.0, -20.0).to(x.dtype)
        if not (self.channels and regression):
            return logits, None
        return logits, torch.full((x.shape[0], self.channels, *x.shape[2:]), self.heat, dtype=x.dtype)


class ConstantNet(nn.Module):
    """A stand-in network whose sigmoid is ``probability`` everywhere (to float32 rounding): a
    constant segmentation logit ``log(p / (1 - p))``; no regression. ``calls`` counts forward passes."""

    def __init__(self, probability: float):
        super().__init__()
        self.logit = math.log(probability / (1.0 - probability))
        self.calls = 0

    def forward(self, x: torch.Tensor, regression: bool = True) -> tuple[torch.Tensor, None]:
        self.calls += 1
        return torch.full_like(x, self.logit), None


def steered_bundle(path: str | os.PathLike, roles: tuple[str, ...], seg_bias: dict[str, float],
                   heat: float = 1.0, base_channels: int = 2, kidney_patch: tuple[int, int, int] | None = None) -> Path:
    """An untrained bundle whose listed models' segmentation heads output a constant logit.

    Each role in ``seg_bias`` gets a zero head with that bias (so +10 = "everywhere", -10 =
    "nowhere"); stage 1's landmark head is zeroed to a constant ``heat`` in every channel (1.0:
    peaks at fixed places, 0.0: no landmarks). Other models keep their random weights.
    ``kidney_patch`` replaces the 32 x 128 x 128 patch of KT, K1 and K2 in the manifest (speed).
    """
    path = Path(path)
    make_untrained_bundle(path, base_channels=base_channels, roles=roles, overwrite=True)
    bundle = load_bundle(path)
    networks = {}
    with torch.no_grad():
        for role, entry in bundle.entries.items():
            network = bundle.networks[role]
            if role in seg_bias:
                network.seg_head.weight.zero_()
                network.seg_head.bias.fill_(seg_bias[role])
            if role == "stage1":
                network.reg_head.weight.zero_()
                network.reg_head.bias.fill_(heat)
            networks[role] = (network, entry.architecture, entry.params)
    metadata = {k: v for k, v in bundle.manifest.items() if k in ("name", "description", "demo", "license", "provenance")}
    save_bundle(path, networks, metadata, overwrite=True)
    if kidney_patch is not None:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        for model in manifest["models"]:
            if model["role"] in ("KT", "K1", "K2"):
                model["patch_size"] = list(kidney_patch)
        (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path
