"""Kidney parenchyma and tumors of the phantom, rendered at full resolution around the labels.

Arrays are boxes of the mask's ``[z, y, x]`` grid (I, P, L); ``spacing`` is ``(z, y, x)`` mm.
The cortex is the outer shell of the kidney (and tumor) label, the medulla the inner part
broken into pyramids, and the deepest part the collecting system (urine, bright in the
excretory phase, with sinus fat). All follow the drawn contrast phase. Tumors vary per case
among five kinds whose HU follow the phase too, some with a necrotic core, a rim (capsule or
cyst wall), calcifications or fat.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from scipy import ndimage

from training_tools.phantom_fields import coarse_size, smooth_noise, upsample_box
from training_tools.phantom_phases import PHASES, Appearance
from training_tools.phantom_style import PhantomStyle

TUMOR_KINDS = ("clear_cell", "papillary", "isodense", "cystic", "fat_containing")
TUMOR_KIND_WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.15)
# (low, high) HU of the viable tumor per phase (non-contrast, corticomedullary, nephrographic,
# excretory); None = relative to the parenchyma (isodense).
TUMOR_HU: dict[str, tuple[tuple[float, float], ...] | None] = {
    "clear_cell": ((20.0, 45.0), (100.0, 200.0), (80.0, 150.0), (60.0, 120.0)),
    "papillary": ((30.0, 50.0), (40.0, 80.0), (50.0, 100.0), (50.0, 90.0)),
    "isodense": None,
    "cystic": ((-10.0, 20.0),) * 4,
    "fat_containing": ((30.0, 60.0), (50.0, 110.0), (60.0, 110.0), (50.0, 90.0)),
}
ISODENSE_OFFSET_HU = (5.0, 15.0)  # |tumor - parenchyma| of an isodense tumor
NECROSIS_PROBABILITY = {"clear_cell": 0.6, "papillary": 0.2, "isodense": 0.2, "cystic": 0.0, "fat_containing": 0.1}
NECROSIS_HU = (0.0, 30.0)
CALCIFICATION_PROBABILITY = 0.15
CALCIFICATION_HU = (150.0, 1000.0)
FAT_HU = (-110.0, -30.0)
SINUS_FAT_SHARE = (0.0, 0.6)  # share of fat mixed into the collecting system (renal sinus)
DEPTH_GRID_MM = 1.0
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class KidneyLook:
    """HU and texture of the kidney and tumor of one phantom."""

    cortex_hu: float
    medulla_hu: float
    sinus_hu: float  # collecting system: urine (or contrast urine) mixed with sinus fat
    cortex_mm: float
    sinus_depth_mm: float  # the collecting system starts this deep inside the kidney
    texture_hu: float
    tumor_kind: str
    tumor_hu: float  # mean of the viable tumor
    tumor_second_hu: float  # the second component of a heterogeneous tumor (= tumor_hu when none)
    tumor_texture_hu: float
    tumor_grain_mm: float
    necrosis_hu: float | None  # None: no necrotic core
    rim_hu: float  # added at the tumor margin: < 0 pseudocapsule, > 0 enhancing rim or cyst wall
    rim_mm: float
    calcification_hu: float | None  # None: no calcification
    fat_hu: float | None  # fat pockets of a fat-containing tumor


def _tumor_mean(kind: str, appearance: Appearance, style: PhantomStyle, rng: np.random.Generator) -> float:
    if appearance.randomised:
        return float(rng.uniform(*style.random_hu))
    ranges = TUMOR_HU[kind]
    if ranges is None:
        offset = rng.uniform(*ISODENSE_OFFSET_HU) * rng.choice((-1.0, 1.0))
        return appearance.parenchyma_hu + float(offset)
    low, high = ranges[PHASES.index(appearance.phase)]
    margin = style.spread * (high - low) + style.spread_hu
    return float(rng.uniform(low - margin, high + margin))


def draw_kidney_look(appearance: Appearance, style: PhantomStyle, rng: np.random.Generator) -> KidneyLook:
    """Draw the kidney's look in the appearance's phase and one tumor kind."""
    kind = str(rng.choice(TUMOR_KINDS, p=TUMOR_KIND_WEIGHTS))
    tumor = _tumor_mean(kind, appearance, style, rng)
    second = tumor
    if kind == "clear_cell":
        second = tumor - rng.uniform(20.0, 0.5 * max(tumor - appearance.hu["fat"], 60.0))
    rim = 0.0
    if kind == "cystic" and appearance.phase != "non_contrast":
        rim = rng.uniform(20.0, 80.0)
    elif kind in ("isodense", "papillary") and rng.uniform() < 0.5:
        rim = -rng.uniform(10.0, 30.0)
    sinus_fat = rng.uniform(*SINUS_FAT_SHARE)
    sinus = (1.0 - sinus_fat) * appearance.hu["urine"] + sinus_fat * appearance.hu["fat"]
    return KidneyLook(
        cortex_hu=appearance.hu["cortex"],
        medulla_hu=appearance.hu["medulla"],
        sinus_hu=float(sinus),
        cortex_mm=float(rng.uniform(4.0, 7.0)),
        sinus_depth_mm=float(rng.uniform(12.0, 25.0)),
        texture_hu=float(rng.uniform(3.0, 10.0)),
        tumor_kind=kind,
        tumor_hu=float(tumor),
        tumor_second_hu=float(second),
        tumor_texture_hu=float(rng.uniform(3.0, 6.0) if kind == "cystic" else rng.uniform(6.0, 30.0)),
        tumor_grain_mm=float(rng.uniform(2.0, 6.0)),
        necrosis_hu=float(rng.uniform(*NECROSIS_HU)) if rng.uniform() < NECROSIS_PROBABILITY[kind] else None,
        rim_hu=float(rim),
        rim_mm=float(rng.uniform(1.0, 2.5)),
        calcification_hu=float(rng.uniform(*CALCIFICATION_HU)) if rng.uniform() < CALCIFICATION_PROBABILITY else None,
        fat_hu=float(rng.uniform(*FAT_HU)) if kind == "fat_containing" else None,
    )


def inner_depth(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
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
    """Cortex HU in the outer ``cortex_mm``, medulla in pyramids deeper in, the collecting system
    deepest, plus fine texture."""
    pyramids = smooth_noise(depth.shape, spacing, 7.0, rng)
    medulla = np.clip((depth - look.cortex_mm) / 1.5, 0.0, 1.0) * np.clip((pyramids + 0.3) / 0.5, 0.0, 1.0)
    hu = look.cortex_hu + (look.medulla_hu - look.cortex_hu) * medulla
    calyces = smooth_noise(depth.shape, spacing, 6.0, rng)
    sinus = np.clip((depth - look.sinus_depth_mm) / 2.0, 0.0, 1.0) * np.clip(calyces + 0.8, 0.0, 1.0)
    hu += (look.sinus_hu - hu) * sinus
    hu += look.texture_hu * smooth_noise(depth.shape, spacing, 2.0, rng)
    return hu


def _specks(shape: tuple[int, ...], spacing: Spacing, size_mm: float, share: float,
            rng: np.random.Generator) -> np.ndarray:
    """A boolean field of blobs about ``size_mm`` wide covering about ``share`` of the box."""
    field = smooth_noise(shape, spacing, size_mm, rng)
    return field > np.quantile(field, 1.0 - share)


def _tumor_hu(tumor: np.ndarray, spacing: Spacing, look: KidneyLook, rng: np.random.Generator) -> np.ndarray:
    """Tumor HU: mean and grain, patches (heterogeneous), a necrotic core, a rim, calcifications, fat."""
    depth = inner_depth(tumor, spacing)
    hu = look.tumor_hu + look.tumor_texture_hu * smooth_noise(tumor.shape, spacing, look.tumor_grain_mm, rng)
    if look.tumor_second_hu != look.tumor_hu:
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
    if look.fat_hu is not None:
        hu[_specks(tumor.shape, spacing, 5.0, rng.uniform(0.1, 0.4), rng)] = look.fat_hu
    if look.calcification_hu is not None:
        hu[_specks(tumor.shape, spacing, 2.0, rng.uniform(0.005, 0.03), rng)] = look.calcification_hu
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
