"""Kidney parenchyma and tumors of the phantom, rendered at full resolution around the labels.

Arrays are boxes of the mask's ``[z, y, x]`` grid (I, P, L); ``spacing`` is ``(z, y, x)`` mm.
The cortex is the outer shell of the kidney (and tumor) label, the medulla the inner part
broken into pyramids; both enhance according to the contrast phase. Tumors vary per case
among five kinds, some with necrotic cores, a pseudocapsule or an enhancing rim.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training_tools.phantom_fields import coarse_size, smooth_noise, upsample_box
from training_tools.phantom_tissues import Contrast, measured_hu

TUMOR_KINDS = ("hyperdense", "heterogeneous", "isodense", "hypodense", "cystic")
TUMOR_KIND_WEIGHTS = (0.25, 0.2, 0.2, 0.2, 0.15)
DEPTH_GRID_MM = 1.0
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class KidneyLook:
    """HU and texture of the kidney and tumor of one phantom."""

    cortex_hu: float
    medulla_hu: float
    cortex_mm: float
    texture_hu: float
    tumor_kind: str
    tumor_hu: float  # mean of the viable tumor
    tumor_second_hu: float  # the second component of a heterogeneous tumor
    tumor_texture_hu: float
    tumor_grain_mm: float
    necrosis_hu: float | None  # None: no necrotic core
    rim_hu: float  # added at the tumor margin: < 0 pseudocapsule, > 0 enhancing rim
    rim_mm: float


def draw_kidney_look(contrast: Contrast, rng: np.random.Generator) -> KidneyLook:
    """Draw the kidney enhancement and one tumor kind; an isodense tumor stays 10-25 HU off the
    parenchyma, with its own texture, so it is subtle but learnable."""
    native = measured_hu()["kidney"]["mean"]
    cortex = native + contrast.increment("kidney_cortex")
    medulla = native + contrast.increment("kidney_medulla")
    parenchyma = 0.6 * cortex + 0.4 * medulla
    kind = str(rng.choice(TUMOR_KINDS, p=TUMOR_KIND_WEIGHTS))
    second, rim = 0.0, 0.0
    if kind == "hyperdense":
        tumor, texture, necrotic = parenchyma + rng.uniform(15.0, 50.0), rng.uniform(20.0, 35.0), 0.6
    elif kind == "heterogeneous":
        tumor, texture, necrotic = parenchyma + rng.uniform(0.0, 40.0), rng.uniform(12.0, 20.0), 0.5
        second = native + rng.uniform(20.0, 50.0)
    elif kind == "isodense":
        tumor = parenchyma + rng.choice((-1.0, 1.0)) * rng.uniform(10.0, 25.0)
        texture, necrotic = rng.uniform(8.0, 15.0), 0.2
        rim = -rng.uniform(15.0, 30.0) if rng.uniform() < 0.6 else 0.0
    elif kind == "hypodense":
        tumor, texture, necrotic = native + rng.uniform(20.0, 60.0), rng.uniform(6.0, 12.0), 0.25
    else:  # cystic: fluid with an enhancing wall
        tumor, texture, necrotic = native + rng.uniform(-12.0, 8.0), rng.uniform(3.0, 6.0), 0.0
        rim = rng.uniform(40.0, 80.0)
    return KidneyLook(
        cortex_hu=cortex,
        medulla_hu=medulla,
        cortex_mm=float(rng.uniform(4.0, 7.0)),
        texture_hu=float(rng.uniform(4.0, 8.0)),
        tumor_kind=kind,
        tumor_hu=float(tumor),
        tumor_second_hu=float(second),
        tumor_texture_hu=float(texture),
        tumor_grain_mm=float(rng.uniform(2.0, 5.0)),
        necrosis_hu=float(native + rng.uniform(-5.0, 20.0)) if rng.uniform() < necrotic else None,
        rim_hu=float(rim),
        rim_mm=float(rng.uniform(1.0, 2.5)),
    )


def inner_depth(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm, float32) from each voxel of ``mask`` to the nearest voxel outside it; 0 outside.

    Computed on a sub-grid of ~``DEPTH_GRID_MM`` when the voxels are finer, then interpolated.
    """
    depth = np.zeros(mask.shape, np.float32)
    profiles = [np.nonzero(mask.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
    if any(p.size == 0 for p in profiles):
        return depth
    box = tuple(slice(max(int(p[0]) - 1, 0), int(p[-1]) + 2) for p in profiles)
    inside = mask[box]
    factors = tuple(max(1, int(DEPTH_GRID_MM / s)) for s in spacing)
    shape = tuple(coarse_size(n, f) for n, f in zip(inside.shape, factors))
    sampled = np.zeros(shape, bool)
    strided = inside[:: factors[0], :: factors[1], :: factors[2]]
    sampled[: strided.shape[0], : strided.shape[1], : strided.shape[2]] = strided
    coarse = ndimage.distance_transform_edt(sampled, sampling=[f * s for f, s in zip(factors, spacing)])
    fine = upsample_box(coarse.astype(np.float32), factors, tuple(slice(0, n) for n in inside.shape))
    depth[box] = np.where(inside, fine, 0.0)
    return depth


def _kidney_hu(depth: np.ndarray, spacing: Spacing, look: KidneyLook, rng: np.random.Generator) -> np.ndarray:
    """Cortex HU in the outer ``cortex_mm``, medulla in pyramids deeper in, plus fine texture."""
    pyramids = smooth_noise(depth.shape, spacing, 7.0, rng)
    medulla = np.clip((depth - look.cortex_mm) / 1.5, 0.0, 1.0) * np.clip((pyramids + 0.3) / 0.5, 0.0, 1.0)
    hu = look.cortex_hu + (look.medulla_hu - look.cortex_hu) * medulla
    hu += look.texture_hu * smooth_noise(depth.shape, spacing, 2.0, rng)
    return hu


def _tumor_hu(tumor: np.ndarray, spacing: Spacing, look: KidneyLook, rng: np.random.Generator) -> np.ndarray:
    """Tumor HU: mean and grain, patches (heterogeneous), a necrotic core, a rim (capsule or wall)."""
    depth = inner_depth(tumor, spacing)
    hu = look.tumor_hu + look.tumor_texture_hu * smooth_noise(tumor.shape, spacing, look.tumor_grain_mm, rng)
    if look.tumor_kind == "heterogeneous":
        patches = np.clip(smooth_noise(tumor.shape, spacing, 8.0, rng) * 1.5 + 0.5, 0.0, 1.0)
        hu += (look.tumor_second_hu - look.tumor_hu) * patches
    deepest = float(depth.max())
    if look.necrosis_hu is not None and deepest > 6.0:
        start = deepest * rng.uniform(0.3, 0.55)
        shape = np.clip((smooth_noise(tumor.shape, spacing, 6.0, rng) + 0.6) / 0.6, 0.0, 1.0)
        core = np.clip((depth - start) / 3.0, 0.0, 1.0) * shape
        hu += (look.necrosis_hu - hu) * core
    if look.rim_hu:
        hu += look.rim_hu * np.clip(1.0 - depth / look.rim_mm, 0.0, 1.0)
    return hu


def render_kidneys(
    labels: np.ndarray, background: np.ndarray, spacing: Spacing, look: KidneyLook, rng: np.random.Generator
) -> np.ndarray:
    """HU of a box: ``background`` (float32, same shape as ``labels``) with kidney (label 1) and
    tumor (label 2) voxels replaced. The cortex is measured from the outside of kidney + tumor."""
    out = background.copy()
    kidney, tumor = labels == 1, labels == 2
    if kidney.any():
        out[kidney] = _kidney_hu(inner_depth(labels > 0, spacing), spacing, look, rng)[kidney]
    if tumor.any():
        out[tumor] = _tumor_hu(tumor, spacing, look, rng)[tumor]
    return out
