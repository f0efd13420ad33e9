"""Tissue codes of the phantom's coarse anatomy and their HU in one drawn appearance.

The HU of each tissue come from :func:`training_tools.phantom_phases.draw_appearance`; the
texture (spatial spread beyond scanner noise) of each tissue is measured on a real CT
(``tissue_hu.json``) and scaled per case.
"""
from __future__ import annotations

from enum import IntEnum
from functools import lru_cache

import numpy as np

from training_tools.phantom_phases import Appearance
from training_tools.tissue_hu import TISSUE_HU_JSON, load_tissue_hu

MAX_TEXTURE_HU = 60.0
TEXTURE_SCALE = (0.5, 1.5)  # per-case factor on every measured texture


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
    LUMEN = 23  # bowel content: fluid or oral contrast
    TABLE = 24
    URINE = 25  # bladder and ureters: bright in the excretory phase


# (appearance tissue giving the HU, measured tissue giving the texture) per code.
SOURCES: dict[Tissue, tuple[str, str | None]] = {
    Tissue.AIR: ("air", None),
    Tissue.FAT: ("fat", "fat"),
    Tissue.MUSCLE: ("muscle", "muscle"),
    Tissue.PARASPINAL: ("paraspinal", "autochthon"),
    Tissue.PSOAS: ("psoas", "iliopsoas"),
    Tissue.LIVER: ("liver", "liver"),
    Tissue.SPLEEN: ("spleen", "spleen"),
    Tissue.STOMACH: ("stomach", "stomach"),
    Tissue.BOWEL: ("bowel_wall", "small_bowel"),
    Tissue.COLON: ("colon", "colon"),
    Tissue.GAS: ("gas", None),
    Tissue.GALLBLADDER: ("gallbladder", "gallbladder"),
    Tissue.AORTA: ("aorta", "aorta"),
    Tissue.IVC: ("ivc", None),
    Tissue.VEIN: ("portal_vein", None),
    Tissue.CORTICAL: ("cortical", "vertebra_cancellous"),
    Tissue.CANCELLOUS: ("cancellous", "vertebra_cancellous"),
    Tissue.DISC: ("disc", "costal_cartilage"),
    Tissue.CANAL: ("canal", "spinal_cord"),
    Tissue.THIN_BONE: ("rib", "vertebra_cancellous"),
    Tissue.CARTILAGE: ("cartilage", "costal_cartilage"),
    Tissue.LUNG: ("lung", "lung"),
    Tissue.HEART: ("heart", "muscle"),
    Tissue.LUMEN: ("bowel_lumen", "gallbladder"),
    Tissue.TABLE: ("table", None),
    Tissue.URINE: ("urine", "gallbladder"),
}


@lru_cache(maxsize=1)
def measured_hu() -> dict:
    """The committed tissue statistics (``tissue_hu.json``)."""
    return load_tissue_hu(TISSUE_HU_JSON)


def texture_hu(name: str) -> float:
    """Spatial spread of a measured tissue beyond the scanner noise: sqrt(std^2 - noise^2), capped."""
    hu = measured_hu()
    spread = float(np.sqrt(max(hu[name]["std"] ** 2 - hu["noise"]["std"] ** 2, 0.0)))
    return min(spread, MAX_TEXTURE_HU)


def tissue_table(appearance: Appearance, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean HU and texture amplitude (HU per unit of a unit-variance field) per ``Tissue`` code."""
    hu = dict(appearance.hu)
    hu["heart"] = 0.7 * hu["aorta"] + 0.3 * hu["muscle"]  # blood pool and myocardium
    hu["table"] = measured_hu()["table"]["p95"]
    scale = rng.uniform(*TEXTURE_SCALE)
    means = np.array([hu[SOURCES[t][0]] for t in Tissue], np.float32)
    amplitudes = np.array([scale * texture_hu(SOURCES[t][1]) if SOURCES[t][1] else 0.0 for t in Tissue], np.float32)
    return means, amplitudes
