"""Where the phantom's anatomy goes, read from the real kidney masks.

Arrays are ``[z, y, x]`` as nibabel gives a KiTS19 file (axis codes I, P, L: z inferior,
y posterior, x patient-left). Positions are in mm: ``voxel index * spacing``. The layout's
"body frame" puts the origin at (renal hilum level, kidney antero-posterior level, midline),
with Z inferior, Y posterior and X patient-left, like the array axes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SAMPLING_MM = 2.0  # the masks are analysed on a ~2 mm sub-grid
MIN_KIDNEY_FRACTION = 0.1  # components below 10 % of the largest are not kidneys
SINGLE_KIDNEY_OFFSET_MM = (65.0, 85.0)  # kidney centre to midline, when only one kidney


@dataclass(frozen=True)
class Kidney:
    """One kidney (with its tumors) in voxel-mm coordinates ``(z, y, x)``."""

    side: str  # "right" (smaller x) or "left"
    centre_mm: tuple[float, float, float]
    low_mm: tuple[float, float, float]  # smallest z, y, x of the component
    high_mm: tuple[float, float, float]  # largest z, y, x of the component


@dataclass(frozen=True)
class Layout:
    """The kidneys and the body frame of one phantom."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    kidneys: tuple[Kidney, ...]
    origin_mm: tuple[float, float, float]  # body-frame origin (hilum z, kidney y, midline x)
    labels_low: tuple[float, float, float]  # body-frame extent of all labels (Z, Y, X)
    labels_high: tuple[float, float, float]

    def kidney(self, side: str) -> Kidney | None:
        return next((k for k in self.kidneys if k.side == side), None)

    def to_body(self, point_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        """Voxel-mm ``(z, y, x)`` to body frame ``(Z, Y, X)``."""
        return tuple(p - o for p, o in zip(point_mm, self.origin_mm))

    def side(self, side: str) -> tuple[tuple[float, float, float], float, float]:
        """Body-frame centre ``(Z, Y, X)``, top Z and bottom Z of the kidney on ``side``
        ("right" or "left"); a missing kidney is the other one mirrored about the midline."""
        kidney = self.kidney(side)
        mirrored = kidney is None
        kidney = kidney or self.kidneys[0]
        z, y, x = self.to_body(kidney.centre_mm)
        top, bottom = kidney.low_mm[0] - self.origin_mm[0], kidney.high_mm[0] - self.origin_mm[0]
        return (z, y, -x if mirrored else x), top, bottom


def _kidney_components(labels: np.ndarray, spacing: tuple[float, float, float]) -> list[tuple]:
    """(centre, low, high) in voxel-mm of the (up to) two largest label components, largest first;
    the centre is that of the kidney label when it makes up > 20 % of the component."""
    steps = tuple(max(1, int(round(SAMPLING_MM / s))) for s in spacing)
    small = labels[:: steps[0], :: steps[1], :: steps[2]]
    components, n = ndimage.label(small > 0, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise ValueError("the label map holds no kidney or tumor voxel")
    sizes = np.bincount(components.ravel())[1:]
    order = [int(i) for i in np.argsort(-sizes) if sizes[i] >= MIN_KIDNEY_FRACTION * sizes.max()]
    parts = []
    for index in order[:2]:
        voxels = np.nonzero(components == index + 1)
        kidney_only = small[voxels] == 1
        core = tuple(v[kidney_only] for v in voxels) if kidney_only.mean() > 0.2 else voxels
        mm = np.asarray(spacing) * np.asarray(steps)
        parts.append(
            (
                tuple(float(c.mean() * m) for c, m in zip(core, mm)),
                tuple(float(v.min() * m) for v, m in zip(voxels, mm)),
                tuple(float(v.max() * m) for v, m in zip(voxels, mm)),
            )
        )
    return parts


def kidney_layout(
    labels: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator
) -> Layout:
    """Find the kidneys of a ``[z, y, x]`` label map (I, P, L) and put the body frame on them.

    Two kidneys: the midline halfway between their centres. One kidney: its side is the half of
    the image it lies in, the midline 65-85 mm medial to it.
    """
    spacing = tuple(float(s) for s in spacing)
    parts = _kidney_components(labels, spacing)
    image_centre_x = labels.shape[2] * spacing[2] / 2.0
    if len(parts) == 2:
        parts.sort(key=lambda part: part[0][2])
        kidneys = tuple(Kidney(side, *part) for side, part in zip(("right", "left"), parts))
        midline = (kidneys[0].centre_mm[2] + kidneys[1].centre_mm[2]) / 2.0
    else:
        side = "left" if parts[0][0][2] > image_centre_x else "right"
        kidneys = (Kidney(side, *parts[0]),)
        offset = rng.uniform(*SINGLE_KIDNEY_OFFSET_MM)
        midline = kidneys[0].centre_mm[2] + (-offset if side == "left" else offset)
    origin = (
        float(np.mean([k.centre_mm[0] for k in kidneys])),
        float(np.mean([k.centre_mm[1] for k in kidneys])),
        midline,
    )
    low = tuple(min(k.low_mm[a] for k in kidneys) - origin[a] for a in range(3))
    high = tuple(max(k.high_mm[a] for k in kidneys) - origin[a] for a in range(3))
    return Layout(tuple(labels.shape), spacing, kidneys, origin, low, high)
