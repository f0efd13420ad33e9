"""Contrast phases and the tissue HU of one phantom, drawn wide around real values.

Non-contrast centres are measured on a real unenhanced CT (``tissue_hu.json``, see
``training_tools.tissue_hu``); enhanced phases use the ranges commonly reported for abdominal
and renal-mass CT (arterial / corticomedullary, portal-venous / nephrographic, excretory).
Every case draws one phase, then each tissue's HU uniformly from its range widened by the
style's ``spread`` (domain randomisation beyond the real range), or, with the style's
``random_soft_tissue`` probability, every soft tissue independently from ``random_hu``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from training_tools.phantom_style import PhantomStyle
from training_tools.tissue_hu import TISSUE_HU_JSON, load_tissue_hu

PHASES = ("non_contrast", "corticomedullary", "nephrographic", "excretory")

# Non-contrast: (measured tissue in tissue_hu.json, half-width of the range around its mean, HU).
NON_CONTRAST: dict[str, tuple[str, float]] = {
    "fat": ("fat", 20.0),
    "muscle": ("muscle", 15.0),
    "paraspinal": ("autochthon", 15.0),
    "psoas": ("iliopsoas", 15.0),
    "liver": ("liver", 12.0),
    "spleen": ("spleen", 12.0),
    "stomach": ("stomach", 15.0),
    "bowel_wall": ("small_bowel", 15.0),
    "colon": ("colon", 40.0),
    "gallbladder": ("gallbladder", 12.0),
    "aorta": ("aorta", 10.0),
    "ivc": ("inferior_vena_cava", 10.0),
    "portal_vein": ("portal_vein", 10.0),
    "cortex": ("kidney", 18.0),
    "medulla": ("kidney", 18.0),
    "cancellous": ("vertebra_cancellous", 40.0),
    "rib": ("rib", 80.0),
    "cartilage": ("costal_cartilage", 30.0),
    "canal": ("spinal_cord", 15.0),
    "lung": ("lung", 80.0),
}

# Tissues whose HU does not depend on the phase, (low, high).
FIXED_HU: dict[str, tuple[float, float]] = {
    "air": (-1010.0, -990.0),
    "gas": (-1000.0, -850.0),
    "cortical": (500.0, 1200.0),
    "disc": (60.0, 110.0),
    "bowel_lumen": (0.0, 25.0),
    "oral_contrast": (200.0, 600.0),
}

# Enhanced phases, (low, high) HU per tissue: corticomedullary, nephrographic, excretory.
ENHANCED_HU: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "cortex": ((150.0, 250.0), (120.0, 200.0), (100.0, 150.0)),
    "medulla": ((50.0, 100.0), (120.0, 200.0), (100.0, 150.0)),
    "urine": ((0.0, 20.0), (0.0, 40.0), (300.0, 1000.0)),
    "liver": ((60.0, 80.0), (100.0, 130.0), (80.0, 100.0)),
    "spleen": ((100.0, 150.0), (100.0, 130.0), (90.0, 110.0)),
    "aorta": ((250.0, 450.0), (130.0, 200.0), (100.0, 130.0)),
    "ivc": ((60.0, 120.0), (120.0, 180.0), (100.0, 130.0)),
    "portal_vein": ((70.0, 150.0), (140.0, 200.0), (100.0, 130.0)),
    "muscle": ((50.0, 70.0), (55.0, 75.0), (55.0, 70.0)),
    "bowel_wall": ((80.0, 150.0), (80.0, 120.0), (70.0, 100.0)),
    "stomach": ((60.0, 110.0), (70.0, 110.0), (60.0, 90.0)),
}
URINE_NON_CONTRAST = (0.0, 20.0)
CORTICOMEDULLARY_GAP_HU = 40.0  # the cortex stays at least this much brighter than the medulla
# Enhancement over the non-contrast value where a tissue has no enhanced range of its own.
FOLLOWS = {"paraspinal": "muscle", "psoas": "muscle"}
# Soft tissues redrawn independently in a contrast-agnostic ("random") case.
SOFT_TISSUES = ("muscle", "paraspinal", "psoas", "liver", "spleen", "stomach", "bowel_wall", "gallbladder",
                "aorta", "ivc", "portal_vein", "cortex", "medulla", "urine", "canal", "bowel_lumen")


@dataclass(frozen=True)
class Appearance:
    """The drawn look of one phantom: phase, HU per tissue name, whether the bowel holds oral
    contrast, and whether the soft tissues were drawn contrast-agnostically."""

    phase: str
    hu: dict[str, float]
    oral_contrast: bool
    randomised: bool

    @property
    def parenchyma_hu(self) -> float:
        """The kidney's mean HU: 60 % cortex, 40 % medulla."""
        return 0.6 * self.hu["cortex"] + 0.4 * self.hu["medulla"]


@lru_cache(maxsize=1)
def _measured() -> dict:
    return load_tissue_hu(TISSUE_HU_JSON)


def phase_ranges(phase: str) -> dict[str, tuple[float, float]]:
    """(low, high) HU of every tissue in ``phase``, before widening."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    measured = _measured()
    native = {name: (measured[m]["mean"] - w, measured[m]["mean"] + w) for name, (m, w) in NON_CONTRAST.items()}
    native["urine"] = URINE_NON_CONTRAST
    ranges = {**FIXED_HU, **native}
    if phase == "non_contrast":
        return ranges
    column = PHASES.index(phase) - 1
    for name, columns in ENHANCED_HU.items():
        ranges[name] = columns[column]
    for name, leader in FOLLOWS.items():
        gain = np.mean(ranges[leader]) - np.mean(native[leader])
        ranges[name] = (native[name][0] + gain, native[name][1] + gain)
    return ranges


def _widened(low: float, high: float, style: PhantomStyle, rng: np.random.Generator) -> float:
    margin = style.spread * (high - low) + style.spread_hu
    return float(rng.uniform(low - margin, high + margin))


def draw_appearance(style: PhantomStyle, rng: np.random.Generator) -> Appearance:
    """Phase, then each tissue's HU from its widened range (or a contrast-agnostic draw)."""
    phase = str(rng.choice(PHASES, p=np.asarray(style.phase_weights) / sum(style.phase_weights)))
    hu = {name: _widened(low, high, style, rng) for name, (low, high) in sorted(phase_ranges(phase).items())}
    if phase == "corticomedullary":  # widening must not undo the bright cortical rim
        hu["medulla"] = min(hu["medulla"], hu["cortex"] - CORTICOMEDULLARY_GAP_HU)
    randomised = bool(rng.uniform() < style.random_soft_tissue)
    if randomised:
        for name in SOFT_TISSUES:
            hu[name] = float(rng.uniform(*style.random_hu))
    hu["fat"] = min(hu["fat"], -40.0)
    oral = bool(rng.uniform() < style.oral_contrast)
    if oral:
        hu["bowel_lumen"] = hu["oral_contrast"]
    return Appearance(phase, hu, oral, randomised)
