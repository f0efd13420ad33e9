"""Tissue codes of the phantom and their HU: measured values plus contrast enhancement.

Every unenhanced value comes from ``tissue_hu.json`` (measured on a real CT by
``training_tools.tissue_hu``). That CT is unenhanced, so the contrast enhancement of a
KiTS19-like scan (corticomedullary to nephrographic phase) is added as increments that are
assumptions, not measurements: typical enhancements reported for renal-mass CT.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

import numpy as np

from training_tools.tissue_hu import TISSUE_HU_JSON, load_tissue_hu

MAX_TEXTURE_HU = 60.0

# HU added to the unenhanced value: (corticomedullary phase, nephrographic phase). Assumed.
ENHANCEMENT_HU: dict[str, tuple[float, float]] = {
    "kidney_cortex": (150.0, 135.0),
    "kidney_medulla": (35.0, 125.0),
    "aorta": (230.0, 120.0),
    "inferior_vena_cava": (60.0, 110.0),
    "portal_vein": (70.0, 140.0),
    "liver": (20.0, 60.0),
    "spleen": (75.0, 75.0),
    "muscle": (8.0, 12.0),
    "small_bowel": (30.0, 40.0),
}


class Tissue(IntEnum):
    """Tissue codes of the coarse anatomy map."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    PARASPINAL = 3
    PSOAS = 4
    LIVER = 5
    SPLEEN = 6
    STOMACH = 7
    BOWEL = 8
    COLON = 9
    GAS = 10
    GALLBLADDER = 11
    AORTA = 12
    IVC = 13
    VEIN = 14
    CORTICAL = 15
    CANCELLOUS = 16
    DISC = 17
    CANAL = 18
    THIN_BONE = 19
    CARTILAGE = 20
    LUNG = 21
    HEART = 22
    FLUID = 23
    TABLE = 24


@dataclass(frozen=True)
class Contrast:
    """Contrast phase of one phantom: 0 = corticomedullary, 1 = nephrographic; dose scales it."""

    phase: float
    dose: float

    def increment(self, name: str) -> float:
        early, late = ENHANCEMENT_HU[name]
        return self.dose * (early + (late - early) * self.phase)


def draw_contrast(rng: np.random.Generator) -> Contrast:
    return Contrast(phase=float(rng.uniform(0.0, 1.0)), dose=float(rng.uniform(0.8, 1.25)))


@lru_cache(maxsize=1)
def measured_hu() -> dict:
    """The committed tissue statistics (``tissue_hu.json``)."""
    return load_tissue_hu(TISSUE_HU_JSON)


def texture_hu(name: str) -> float:
    """Spatial spread of a tissue beyond the scanner noise: sqrt(std^2 - noise^2), capped."""
    hu = measured_hu()
    spread = float(np.sqrt(max(hu[name]["std"] ** 2 - hu["noise"]["std"] ** 2, 0.0)))
    return min(spread, MAX_TEXTURE_HU)


def tissue_table(contrast: Contrast) -> tuple[np.ndarray, np.ndarray]:
    """Mean HU and texture amplitude (HU per unit of a unit-variance field) per ``Tissue`` code."""
    hu = measured_hu()
    mean = {name: hu[name]["mean"] for name in hu if name != "noise"}
    aorta = mean["aorta"] + contrast.increment("aorta")
    muscle = mean["muscle"] + contrast.increment("muscle")
    values = {
        Tissue.AIR: (mean["air"], 0.0),
        Tissue.FAT: (mean["fat"], texture_hu("fat")),
        Tissue.MUSCLE: (muscle, texture_hu("muscle")),
        Tissue.PARASPINAL: (mean["autochthon"] + contrast.increment("muscle"), texture_hu("autochthon")),
        Tissue.PSOAS: (mean["iliopsoas"] + contrast.increment("muscle"), texture_hu("iliopsoas")),
        Tissue.LIVER: (mean["liver"] + contrast.increment("liver"), texture_hu("liver")),
        Tissue.SPLEEN: (mean["spleen"] + contrast.increment("spleen"), texture_hu("spleen")),
        Tissue.STOMACH: (mean["stomach"], texture_hu("stomach")),
        Tissue.BOWEL: (mean["small_bowel"] + contrast.increment("small_bowel"), texture_hu("small_bowel")),
        Tissue.COLON: (mean["colon"], texture_hu("colon")),
        Tissue.GAS: (hu["bowel_gas"]["p50"], 0.0),
        Tissue.GALLBLADDER: (mean["gallbladder"], texture_hu("gallbladder")),
        Tissue.AORTA: (aorta, texture_hu("aorta")),
        Tissue.IVC: (mean["inferior_vena_cava"] + contrast.increment("inferior_vena_cava"), 0.0),
        Tissue.VEIN: (mean["portal_vein"] + contrast.increment("portal_vein"), 0.0),
        Tissue.CORTICAL: (hu["vertebrae"]["p99"], texture_hu("vertebra_cancellous") / 2.0),
        Tissue.CANCELLOUS: (mean["vertebra_cancellous"], texture_hu("vertebra_cancellous")),
        Tissue.DISC: (mean["costal_cartilage"], texture_hu("costal_cartilage")),  # no disc class
        Tissue.CANAL: (mean["spinal_cord"], texture_hu("spinal_cord")),
        Tissue.THIN_BONE: (mean["rib"], texture_hu("vertebra_cancellous")),
        Tissue.CARTILAGE: (mean["costal_cartilage"], texture_hu("costal_cartilage")),
        Tissue.LUNG: (mean["lung"], texture_hu("lung")),
        Tissue.HEART: (0.7 * aorta + 0.3 * muscle, texture_hu("muscle")),  # blood pool and myocardium
        Tissue.FLUID: (mean["gallbladder"], texture_hu("gallbladder")),  # bowel content, urine
        Tissue.TABLE: (hu["table"]["p95"], 0.0),
    }
    means = np.array([values[t][0] for t in Tissue], np.float32)
    amplitudes = np.array([values[t][1] for t in Tissue], np.float32)
    return means, amplitudes
