"""What a result found per kidney: for the patient's left and right, whether a kidney was found,
its volume and its tumor volume, whether stage 1 saw a kidney there, and the warnings a clinician
must read (a side stage 1 saw but stage 2 kept nothing of, a missing side, a kidney far smaller
than the other).

Sides follow :func:`measurements.measure`: RAS x below the midline is the patient's left. Stage
1's support lies on the ×4 grid ``[z, y, x]`` of the working frame.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .geometry import WorkingFrame, index_to_world
from .settings import DEFAULT_SETTINGS, MethodSettings
from .targets import CONNECTIVITY_26

SIDES = ("left", "right")


def stage1_sides(support_down: np.ndarray | None, frame: WorkingFrame, midline_x_mm: float,
                 factor: int = DEFAULT_SETTINGS.geometry.downsample_factor) -> dict[str, bool] | None:
    """Whether stage 1's support (bool, ×4 grid) holds a component on each side of the midline
    (RAS x, mm), by the component's centre; None when stage 1 did not run."""
    if support_down is None:
        return None
    components, count = ndimage.label(support_down, structure=CONNECTIVITY_26)
    saw = {side: False for side in SIDES}
    if count == 0:
        return saw
    centres = np.array(ndimage.center_of_mass(support_down, components, range(1, count + 1)), float).reshape(-1, 3)
    working = centres * factor + (factor - 1) / 2.0  # block centre on the working frame
    for x in index_to_world(working, frame.affine)[:, 0]:
        saw["left" if x < midline_x_mm else "right"] = True
    return saw


def side_findings(measurements: dict[str, Any], stage1_saw: dict[str, bool] | None,
                  settings: MethodSettings = DEFAULT_SETTINGS) -> dict[str, dict[str, Any]]:
    """Per side: ``kidney_found`` (kidney and tumor together reach ``findings.min_kidney_ml``),
    ``kidney_ml`` and ``tumor_ml`` (from ``measurements``), ``stage1_saw_kidney`` (None: stage 1
    did not run)."""
    found = {}
    for side in SIDES:
        kidney, tumor = float(measurements["kidney_ml"][side]), float(measurements["tumor_ml"][side])
        found[side] = {"kidney_found": kidney + tumor >= settings.findings.min_kidney_ml, "kidney_ml": kidney,
                       "tumor_ml": tumor, "stage1_saw_kidney": None if stage1_saw is None else stage1_saw[side]}
    return found


def side_warnings(sides: dict[str, dict[str, Any]], settings: MethodSettings = DEFAULT_SETTINGS) -> list[str]:
    """Sentences a clinician must read: a side stage 1 saw and stage 2 kept nothing of, a side with
    no kidney, a kidney (with its tumor) below ``findings.smaller_kidney_ratio`` of the other."""
    if not any(s["kidney_found"] for s in sides.values()):
        return []  # the result is empty: the no-kidney note says so
    warnings = []
    volume = {side: s["kidney_ml"] + s["tumor_ml"] for side, s in sides.items()}
    for side, other in zip(SIDES, reversed(SIDES)):
        finding = sides[side]
        if not finding["kidney_found"]:
            seen = " although stage 1 saw one there: stage 2 kept nothing of it" if finding["stage1_saw_kidney"] else ""
            warnings.append(f"no {side} kidney found{seen} (a missing kidney, or one outside the crop)")
        elif sides[other]["kidney_found"] and volume[side] < settings.findings.smaller_kidney_ratio * volume[other]:
            warnings.append(f"the {side} kidney ({volume[side]:.0f} mL with tumor) is far smaller than the {other} "
                            f"({volume[other]:.0f} mL): part of it may be missing")
    return warnings


def per_side_lines(sides: dict[str, dict[str, Any]]) -> list[str]:
    """One line per side: ``left kidney: found, 152 mL, tumor 12 mL`` or ``right kidney: not found``."""
    lines = []
    for side in SIDES:
        finding = sides[side]
        if finding["kidney_found"]:
            lines.append(f"{side} kidney: found, {finding['kidney_ml']:.0f} mL, tumor {finding['tumor_ml']:.0f} mL")
        else:
            lines.append(f"{side} kidney: not found")
    return lines
