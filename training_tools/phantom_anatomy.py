"""The phantom's body around the real kidneys, painted as tissue codes on a coarse grid.

The coarse grid samples the mask's ``[z, y, x]`` grid (I, P, L) every ``factors`` voxels
(about 2.5 mm in z, 1.5 mm in-plane). Shapes are placed in the layout's body frame (mm; origin
at the renal hilum level, the kidneys' antero-posterior level and the midline; Z inferior,
Y posterior, X patient-left), so patient-right organs (liver) have X < 0. Painting order is
priority: later structures overwrite earlier ones, and the space around the real kidneys is
cleared to fat last, so no organ ever overlaps a kidney or tumor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from training_tools.phantom_fields import coarse_size, smooth_noise
from training_tools.phantom_layout import Layout
from training_tools.phantom_tissues import Tissue

Point = tuple[float, float, float]  # body frame (Z, Y, X), mm
Box = tuple[slice, slice, slice]
COARSE_MM = (2.5, 1.5, 1.5)  # target coarse spacing (z, y, x)
SACRUM_BELOW_CREST_MM = 50.0


def coarse_factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(c / s))) for c, s in zip(COARSE_MM, spacing))


@dataclass
class Canvas:
    """Tissue codes on the coarse grid and the body-frame coordinates (mm) of its samples."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    tissue: np.ndarray  # uint8 [z, y, x]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(c[1] - c[0]) if c.size > 1 else 1.0 for c in (self.z, self.y, self.x))

    def box(self, low: tuple[float, ...], high: tuple[float, ...]) -> tuple[slice, slice, slice]:
        """Coarse index slices of the body-frame box ``low <= (Z, Y, X) <= high``."""
        return tuple(
            slice(int(np.searchsorted(c, lo)), int(np.searchsorted(c, hi, side="right")))
            for c, lo, hi in zip((self.z, self.y, self.x), low, high)
        )

    def grid(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable body-frame coordinates ``Z[:, 1, 1], Y[1, :, 1], X[1, 1, :]`` of a box."""
        return (
            self.z[box[0]][:, None, None],
            self.y[box[1]][None, :, None],
            self.x[box[2]][None, None, :],
        )

    def paint(self, box: tuple[slice, slice, slice], mask: np.ndarray, tissue: Tissue) -> None:
        view = self.tissue[box]
        view[np.broadcast_to(mask, view.shape)] = tissue


@dataclass(frozen=True)
class Body:
    """Body outline (superellipse per slice) and wall layers, in the body frame (mm)."""

    centre_y: float
    half_width: float
    anterior: float  # semi-axis towards anterior (Y < centre_y)
    posterior: float
    exponent_anterior: float
    exponent_posterior: float
    fat_mm: float
    muscle_mm: float
    spine_y: float  # vertebral body centre at Z = 0
    crest_z: float  # iliac crest level
    bladder_z: float  # centre of the bladder
    dome_z: float  # top of the right hemidiaphragm

    def spine_y_at(self, z: np.ndarray) -> np.ndarray:
        """Vertebral body centre Y: the lumbar spine lies more anterior lower down."""
        return self.spine_y - np.clip(0.04 * z, -10.0, 12.0)


@dataclass
class Scene:
    """Everything the painters share."""

    canvas: Canvas
    layout: Layout
    body: Body
    depth: np.ndarray  # float32 [z, y, x]: mm inwards from the skin (< 0 outside the body)
    diaphragm: np.ndarray  # float32 [y, x]: Z of the diaphragm (lung above, abdomen below)
    rng: np.random.Generator

    @property
    def cavity(self) -> np.ndarray:
        return self.depth >= self.body.fat_mm + self.body.muscle_mm

    def abdomen(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Inside the wall muscles and below the diaphragm, within ``box``."""
        z = self.canvas.z[box[0]][:, None, None]
        below = z >= self.diaphragm[box[1], box[2]][None] + 4.0
        return below & (self.depth[box] >= self.body.fat_mm + self.body.muscle_mm)

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


def _ellipsoid(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: Point, radii: Point, angle: float = 0.0
) -> np.ndarray:
    """Normalised squared radius of an ellipsoid (<= 1 inside), rotated by ``angle`` in-plane."""
    dy, dx = y - centre[1], x - centre[2]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return ((z - centre[0]) / radii[0]) ** 2 + (v / radii[1]) ** 2 + (u / radii[2]) ** 2


def _segment_distance(z: np.ndarray, y: np.ndarray, x: np.ndarray, start: Point, end: Point) -> np.ndarray:
    """Distance (mm) from each point to the 3-D segment ``start``-``end``."""
    p0, d = np.asarray(start, float), np.asarray(end, float) - np.asarray(start, float)
    t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / max(float(d @ d), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2)


def _paint_ellipsoid(
    scene: Scene,
    centre: Point,
    radii: Point,
    tissue: Tissue,
    angle: float = 0.0,
    where: Callable[[Box], np.ndarray] | None = None,
) -> None:
    """Paint an ellipsoid (body frame, mm), only where ``where(box)`` holds if given."""
    reach = max(radii)
    box = scene.canvas.box(np.subtract(centre, reach), np.add(centre, reach))
    inside = _ellipsoid(*scene.canvas.grid(box), centre, radii, angle) <= 1.0
    if where is not None:
        inside &= where(box)
    scene.canvas.paint(box, inside, tissue)


def _paint_tube(scene: Scene, start: Point, end: Point, radius: float, tissue: Tissue) -> None:
    """Paint the capsule of ``radius`` mm around a segment (body frame)."""
    low, high = np.minimum(start, end) - radius, np.maximum(start, end) + radius
    box = scene.canvas.box(low, high)
    scene.canvas.paint(box, _segment_distance(*scene.canvas.grid(box), start, end) <= radius, tissue)


# --- body wall --------------------------------------------------------------------------------


def _draw_body(layout: Layout, fat_mm: tuple[float, float], rng: np.random.Generator) -> Body:
    """Body outline sized to hold every label with room for wall, spine and bowel; subcutaneous
    fat ``fat_mm`` (range) thick."""
    low, high = layout.labels_low, layout.labels_high
    fat, muscle = rng.uniform(*fat_mm), rng.uniform(8.0, 14.0)
    spine_y = rng.uniform(-12.0, 2.0)
    half_width = max(max(-low[2], high[2]) + rng.uniform(8.0, 20.0), rng.uniform(115.0, 140.0))
    posterior = max(high[1] + rng.uniform(15.0, 30.0), spine_y + rng.uniform(70.0, 90.0))
    anterior = max(-low[1] + rng.uniform(30.0, 50.0), rng.uniform(110.0, 150.0))
    centre_y = spine_y - rng.uniform(10.0, 30.0)
    tops = [k.low_mm[0] - layout.origin_mm[0] for k in layout.kidneys]
    bottoms = [k.high_mm[0] - layout.origin_mm[0] for k in layout.kidneys]
    crest = max(bottoms) + rng.uniform(40.0, 70.0)
    return Body(
        centre_y=centre_y,
        half_width=half_width + fat + muscle,
        anterior=anterior + fat + muscle + centre_y,
        posterior=posterior + fat + muscle - centre_y,
        exponent_anterior=rng.uniform(2.0, 2.4),
        exponent_posterior=rng.uniform(2.6, 3.4),
        fat_mm=fat,
        muscle_mm=muscle,
        spine_y=spine_y,
        crest_z=crest,
        bladder_z=crest + rng.uniform(110.0, 140.0),
        dome_z=min(tops) - rng.uniform(90.0, 120.0),
    )


def skin_radius(body: Body, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each (Y, X) from the body centre, and of the skin along the same ray (mm)."""
    dy, dx = y - body.centre_y, x + 0.0 * y
    r = np.maximum(np.hypot(dx, dy), 1e-3)
    posterior = dy > 0
    semi = np.where(posterior, body.posterior, body.anterior)
    power = np.where(posterior, body.exponent_posterior, body.exponent_anterior)
    skin = (np.abs(dx / r / body.half_width) ** power + np.abs(dy / r / semi) ** power) ** (-1.0 / power)
    return r.astype(np.float32), skin.astype(np.float32)


def _body_scale(canvas: Canvas, body: Body, rng: np.random.Generator) -> np.ndarray:
    """Per-slice scale of the outline: a slow wobble, wider over the pelvis."""
    wobble = smooth_noise((canvas.z.size,), (canvas.spacing[0],), 80.0, rng)
    pelvis = np.clip((canvas.z - body.crest_z) / 80.0, 0.0, 1.0)
    return (1.0 + 0.03 * wobble + 0.06 * pelvis).astype(np.float32)


def _paint_wall(scene: Scene) -> None:
    body, canvas = scene.body, scene.canvas
    canvas.tissue[:] = Tissue.AIR
    canvas.tissue[scene.depth >= 0.0] = Tissue.FAT
    wall = (scene.depth >= body.fat_mm) & (scene.depth < body.fat_mm + body.muscle_mm)
    canvas.tissue[wall] = Tissue.MUSCLE


def _paint_table(scene: Scene) -> None:
    """The scanner table: two thin curved plates behind the back, outside the body."""
    body, canvas = scene.body, scene.canvas
    top = body.centre_y + body.posterior + scene.uniform(5.0, 40.0)
    radius, half = scene.uniform(800.0, 1500.0), scene.uniform(190.0, 240.0)
    _, y, x = canvas.grid((slice(0, 1), slice(None), slice(None)))
    table = np.zeros(y.shape[1:2] + x.shape[2:], bool)
    for offset, thickness in ((0.0, 3.0), (scene.uniform(35.0, 50.0), 2.0)):
        surface = top + offset - x[0] ** 2 / (2.0 * radius)
        table |= (np.abs(y[0] - surface) <= thickness / 2.0) & (np.abs(x[0]) <= half)
    canvas.tissue[table[None] & (scene.depth < 0.0)] = Tissue.TABLE


# --- thorax -----------------------------------------------------------------------------------


def _diaphragm(canvas: Canvas, layout: Layout, body: Body, rng: np.random.Generator) -> np.ndarray:
    """Z of the diaphragm per (Y, X): two domes (the left one lower) that fall off laterally and,
    steeply, posteriorly into the costophrenic recesses, never below the kidneys' tops."""
    _, y, x = canvas.grid((slice(0, 1), slice(None), slice(None)))
    y, x = y[0], x[0]
    centre_y = rng.uniform(-40.0, -15.0)
    anterior, posterior = rng.uniform(0.1, 0.2), rng.uniform(0.5, 0.7)
    slope = anterior * np.maximum(centre_y - y, 0.0) + posterior * np.maximum(y - centre_y, 0.0)
    curvature = rng.uniform(0.002, 0.003)
    domes = []
    for side, lower in ((-1.0, 0.0), (1.0, rng.uniform(5.0, 20.0))):
        centre_x = side * rng.uniform(50.0, 70.0)
        domes.append(body.dome_z + lower + curvature * (x - centre_x) ** 2 + slope)
    lowest = min(layout.side("right")[1], layout.side("left")[1]) + rng.uniform(0.0, 10.0)
    return np.minimum(np.minimum(*domes), lowest).astype(np.float32)


def _paint_thorax(scene: Scene) -> None:
    canvas, body = scene.canvas, scene.body
    box = canvas.box((-1e4, -1e4, -1e4), (float(scene.diaphragm.max()), 1e4, 1e4))
    z = canvas.grid(box)[0]
    cavity = scene.depth[box] >= body.fat_mm + body.muscle_mm
    above = z < scene.diaphragm[None, box[1], box[2]]
    canvas.paint(box, cavity & above, Tissue.MUSCLE)
    canvas.paint(box, cavity & (z < scene.diaphragm[None, box[1], box[2]] - 4.0), Tissue.LUNG)
    heart = (body.dome_z - scene.uniform(45.0, 65.0), -scene.uniform(40.0, 70.0), scene.uniform(5.0, 25.0))
    radii = (scene.uniform(55.0, 65.0), scene.uniform(45.0, 55.0), scene.uniform(55.0, 70.0))

    def above_diaphragm(b: Box) -> np.ndarray:
        return canvas.grid(b)[0] < scene.diaphragm[None, b[1], b[2]] - 4.0

    _paint_ellipsoid(scene, heart, radii, Tissue.HEART, angle=scene.uniform(-0.5, 0.0), where=above_diaphragm)


# --- abdominal organs -------------------------------------------------------------------------


def _paint_bowel(scene: Scene) -> None:
    """Small-bowel loops in front of the retroperitoneum: an enhancing wall around fluid, gas in
    some loops, mesenteric fat between them."""
    canvas, body = scene.canvas, scene.body
    box = (slice(None), slice(None), slice(None))
    z, y, x = canvas.grid(box)
    boundary = -30.0 + 0.3 * np.maximum(np.abs(x) - 60.0, 0.0) + 0.8 * np.clip(z - body.crest_z, 0.0, 60.0)
    region = scene.abdomen(box) & (y < boundary)
    loops = smooth_noise(canvas.tissue.shape, canvas.spacing, scene.uniform(12.0, 18.0), scene.rng)
    threshold = scene.uniform(-0.4, 0.2)
    canvas.paint(box, region & (loops > threshold), Tissue.BOWEL)
    lumen = region & (loops > threshold + scene.uniform(0.25, 0.4))
    canvas.paint(box, lumen, Tissue.LUMEN)
    gas = smooth_noise(canvas.tissue.shape, canvas.spacing, 10.0, scene.rng) - 0.006 * (boundary - y)
    canvas.paint(box, lumen & (gas > scene.uniform(0.6, 1.3)), Tissue.GAS)


def _paint_colon(scene: Scene) -> None:
    """Ascending, transverse and descending colon with mottled stool and gas."""
    right, right_top, _ = scene.layout.side("right")
    left, left_top, _ = scene.layout.side("left")
    crest = scene.body.crest_z
    radius = scene.uniform(16.0, 24.0)
    y_right, y_left = right[1] - scene.uniform(35.0, 55.0), left[1] - scene.uniform(15.0, 35.0)
    x_right, x_left = right[2] - scene.uniform(5.0, 25.0), left[2] + scene.uniform(10.0, 30.0)
    z_transverse, y_transverse = scene.uniform(-10.0, 40.0), -scene.uniform(80.0, 110.0)
    segments = (
        ((right_top, y_right, x_right), (crest + 30.0, y_right, x_right)),
        ((left_top - 20.0, y_left, x_left), (crest + 30.0, y_left, x_left)),
        ((z_transverse, y_transverse, x_right), (z_transverse, y_transverse, x_left)),
        ((right_top, y_right, x_right), (z_transverse, y_transverse, x_right)),
        ((left_top - 20.0, y_left, x_left), (z_transverse, y_transverse, x_left)),
    )
    for start, end in segments:
        _paint_tube(scene, start, end, radius, Tissue.COLON)
    colon = scene.canvas.tissue == Tissue.COLON
    pockets = smooth_noise(scene.canvas.tissue.shape, scene.canvas.spacing, 6.0, scene.rng)
    scene.canvas.tissue[colon & (pockets > scene.uniform(0.3, 1.0))] = Tissue.GAS


def _paint_stomach(scene: Scene) -> None:
    """Stomach under the left dome, with a gas cap anteriorly (the patient lies supine)."""
    left_top = scene.layout.side("left")[1]
    centre = (left_top - scene.uniform(10.0, 40.0), -scene.uniform(50.0, 80.0), scene.uniform(35.0, 60.0))
    radii = (scene.uniform(50.0, 70.0), scene.uniform(30.0, 45.0), scene.uniform(35.0, 50.0))
    _paint_ellipsoid(scene, centre, radii, Tissue.STOMACH, angle=scene.uniform(-0.6, 0.0), where=scene.abdomen)
    level = centre[1] - radii[1] * scene.uniform(0.2, 0.7)
    reach = max(radii)
    box = scene.canvas.box(np.subtract(centre, reach), np.add(centre, reach))
    gas = (scene.canvas.tissue[box] == Tissue.STOMACH) & (scene.canvas.grid(box)[1] < level)
    scene.canvas.paint(box, gas, Tissue.GAS)


def _paint_spleen(scene: Scene) -> None:
    left, left_top, _ = scene.layout.side("left")
    centre = (
        left_top - scene.uniform(0.0, 25.0),
        left[1] - scene.uniform(0.0, 20.0),
        left[2] + scene.uniform(20.0, 40.0),
    )
    radii = (scene.uniform(40.0, 55.0), scene.uniform(45.0, 60.0), scene.uniform(18.0, 28.0))
    _paint_ellipsoid(scene, centre, radii, Tissue.SPLEEN, angle=scene.uniform(-0.9, -0.3), where=scene.abdomen)


def _paint_liver(scene: Scene) -> None:
    """Liver filling the right upper quadrant under the diaphragm; the left lobe reaches across
    the midline anteriorly; its lower edge rises medially. Portal-vein branches inside."""
    canvas, body = scene.canvas, scene.body
    right = scene.layout.side("right")[0]
    tip = right[0] + scene.uniform(-10.0, 40.0)
    box = canvas.box((-1e4, -1e4, -1e4), (tip + 15.0, 1e4, 1e4))
    z, y, x = canvas.grid(box)
    lobes = 12.0 * smooth_noise(canvas.tissue[box].shape, canvas.spacing, 30.0, scene.rng)
    medial = scene.uniform(-20.0, 0.0) + scene.uniform(0.4, 0.8) * np.maximum(-y - 20.0, 0.0)
    lower = tip - scene.uniform(0.35, 0.6) * (x + body.half_width)
    liver = scene.abdomen(box) & (x <= medial + lobes) & (z <= lower + lobes)
    canvas.paint(box, liver, Tissue.LIVER)
    branches = [smooth_noise(liver.shape, canvas.spacing, 25.0, scene.rng) for _ in range(2)]
    vessels = liver & (np.abs(branches[0]) < 0.12) & (np.abs(branches[1]) < 0.3)
    canvas.paint(box, vessels, Tissue.VEIN)
    if scene.rng.uniform() < 0.7:
        centre = (right[0] - scene.uniform(0.0, 25.0), -scene.uniform(55.0, 80.0), -scene.uniform(25.0, 45.0))
        radii = (scene.uniform(28.0, 40.0), scene.uniform(13.0, 18.0), scene.uniform(13.0, 18.0))
        _paint_ellipsoid(scene, centre, radii, Tissue.GALLBLADDER, angle=scene.uniform(-0.5, 0.5), where=scene.abdomen)


# --- vessels, muscles, bones ------------------------------------------------------------------


def _paint_vessels(scene: Scene) -> None:
    """Aorta (left of midline) and IVC (right) in front of the spine, iliac vessels below the
    bifurcation, renal arteries and veins to the hila."""
    canvas, body = scene.canvas, scene.body
    top = float(canvas.z[0]) - 10.0
    bottoms = (scene.layout.side("right")[2], scene.layout.side("left")[2])
    bifurcation = float(np.mean(bottoms)) + scene.uniform(10.0, 40.0)
    front = body.spine_y - scene.uniform(14.0, 17.0)
    radius = scene.uniform(9.0, 13.0)
    aorta = (front - radius - scene.uniform(2.0, 6.0), scene.uniform(8.0, 20.0))
    ivc = (front - scene.uniform(10.0, 16.0), -scene.uniform(18.0, 28.0))
    vein_radius, artery_radius = scene.uniform(4.0, 6.0), scene.uniform(2.5, 3.5)
    for side in ("right", "left"):
        if scene.layout.kidney(side) is None:
            continue
        centre = scene.layout.side(side)[0]
        hilum = (centre[0], centre[1] - 5.0, centre[2] - np.sign(centre[2]) * 25.0)
        _paint_tube(scene, hilum, (centre[0], ivc[0], ivc[1]), vein_radius, Tissue.VEIN)
        _paint_tube(scene, (centre[0] - 8.0, aorta[0], aorta[1]), hilum, artery_radius, Tissue.AORTA)
    ivc_radius = scene.uniform(10.0, 13.0)
    _paint_tube(scene, (top, ivc[0], ivc[1]), (bifurcation + 10.0, ivc[0], ivc[1]), ivc_radius, Tissue.IVC)
    _paint_tube(scene, (top, aorta[0], aorta[1]), (bifurcation, aorta[0], aorta[1]), radius, Tissue.AORTA)
    for side in (-1.0, 1.0):
        end = (bifurcation + 160.0, aorta[0] + 20.0, side * scene.uniform(60.0, 80.0))
        _paint_tube(scene, (bifurcation, aorta[0], aorta[1]), end, radius * 0.6, Tissue.AORTA)
        start = (bifurcation + 10.0, ivc[0], ivc[1])
        _paint_tube(scene, start, (end[0], end[1] + 10.0, end[2] * 0.9), radius * 0.7, Tissue.IVC)


def _paint_muscles(scene: Scene) -> None:
    """Psoas (growing downwards beside the spine), quadratus lumborum and the back muscles."""
    canvas, body = scene.canvas, scene.body
    box = (slice(None), slice(None), slice(None))
    z, y, x = canvas.grid(box)
    spine = body.spine_y_at(z)
    start = min(scene.layout.side("right")[1], scene.layout.side("left")[1]) + scene.uniform(10.0, 40.0)
    radius = np.clip(6.0 + 0.16 * (z - start), 0.0, scene.uniform(20.0, 26.0))
    offset_x = scene.uniform(22.0, 30.0) + 0.8 * radius
    centre_y = spine - 0.1 * np.clip(z - start, 0.0, 120.0)
    inside_fat = scene.depth >= body.fat_mm
    back_x, back_y = scene.uniform(30.0, 36.0), scene.uniform(38.0, 46.0)
    back_radii = (scene.uniform(28.0, 36.0), scene.uniform(18.0, 24.0))
    quadratus_x, quadratus_y = scene.uniform(65.0, 80.0), scene.uniform(15.0, 30.0)
    quadratus = (z > start) & (z < body.crest_z)
    for side in (-1.0, 1.0):
        back_u, back_v = (x - side * back_x) / back_radii[0], (y - spine - back_y) / back_radii[1]
        back = np.abs(back_u) ** 3 + np.abs(back_v) ** 3 <= 1.0
        canvas.paint(box, back & inside_fat, Tissue.PARASPINAL)
        ql = ((x - side * quadratus_x) / 20.0) ** 2 + ((y - spine - quadratus_y) / 10.0) ** 2 <= 1.0
        canvas.paint(box, ql & quadratus & scene.cavity, Tissue.MUSCLE)
        rx, ry = np.maximum(radius, 1e-3), np.maximum(0.85 * radius, 1e-3)
        psoas = ((x - side * offset_x) / rx) ** 2 + ((y - centre_y) / ry) ** 2
        canvas.paint(box, (psoas <= 1.0) & (radius > 0), Tissue.PSOAS)


def _paint_spine(scene: Scene) -> None:
    """Vertebral bodies (cortical shell, cancellous core), discs, the canal, arches and spinous
    and transverse processes, repeating every ~36 mm."""
    canvas, body = scene.canvas, scene.body
    box = canvas.box((-1e4, -1e4, -60.0), (body.crest_z + SACRUM_BELOW_CREST_MM, 1e4, 60.0))
    z, y, x = canvas.grid(box)
    spine = body.spine_y_at(z)
    rx, ry = scene.uniform(19.0, 24.0), scene.uniform(14.0, 17.0)
    period, disc = scene.uniform(33.0, 40.0), scene.uniform(7.0, 10.0)
    w = np.mod(z - scene.uniform(0.0, period), period)
    rho = np.sqrt((x / rx) ** 2 + ((y - spine) / ry) ** 2)
    vertebra = rho <= 1.0
    canvas.paint(box, vertebra & (w < disc), Tissue.DISC)
    shell = rho > 1.0 - 2.0 / ry
    canvas.paint(box, vertebra & (w >= disc) & shell, Tissue.CORTICAL)
    canvas.paint(box, vertebra & (w >= disc) & ~shell, Tissue.CANCELLOUS)
    canal_y = spine + ry + scene.uniform(8.0, 10.0)
    canal = (x / 11.0) ** 2 + ((y - canal_y) / 8.5) ** 2
    height = (w - disc) / (period - disc)
    arch = (canal > 1.0) & ((x / 17.0) ** 2 + ((y - canal_y) / 14.0) ** 2 <= 1.0) & (height > 0.0) & (height < 0.75)
    spinous = (np.abs(x) < 4.0) & (y > canal_y) & (y < canal_y + scene.uniform(40.0, 50.0)) & (height > 0.35)
    reach = rx + scene.uniform(25.0, 35.0)
    transverse = (np.abs(y - canal_y + 4.0) < 4.5) & (np.abs(x) < reach) & (height > 0.3) & (height < 0.6)
    canvas.paint(box, (arch | spinous | transverse) & (y > spine), Tissue.THIN_BONE)
    canvas.paint(box, canal <= 1.0, Tissue.CANAL)


def _paint_ribs(scene: Scene) -> None:
    """Ribs 1-12 as oblique bars in the wall, descending anteriorly; the lowest ones short;
    costal cartilage at the front."""
    canvas, body = scene.canvas, scene.body
    tops = min(scene.layout.side("right")[1], scene.layout.side("left")[1])
    last = tops + scene.uniform(10.0, 40.0)
    period, height, slope = scene.uniform(22.0, 28.0), scene.uniform(8.0, 11.0), scene.uniform(25.0, 40.0)
    box = canvas.box((-1e4, -1e4, -1e4), (last + slope * np.pi + period, 1e4, 1e4))
    z, y, x = canvas.grid(box)
    phi = np.arccos(np.clip((y - body.centre_y) / np.maximum(np.hypot(x, y - body.centre_y), 1e-3), -1.0, 1.0))
    psi = (z - slope * phi - last) / period
    index = np.floor(psi)
    v = (psi - index) * period - height / 2.0
    ring = body.fat_mm + 0.4 * body.muscle_mm + np.maximum(0.0, 1.0 - phi / 1.3) * scene.uniform(35.0, 50.0)
    u = scene.depth[box] - ring
    section = (u / 4.5) ** 2 + (v / (height / 2.0)) ** 2
    exists = (index <= 0) & (index >= -11) & (phi >= 0.45) & (phi <= np.minimum(1.5 - 0.45 * index, 2.9))
    rib = exists & (section <= 1.0)
    cartilage = phi > 2.35
    canvas.paint(box, rib & cartilage, Tissue.CARTILAGE)
    canvas.paint(box, rib & ~cartilage & (section > 0.35), Tissue.CORTICAL)
    canvas.paint(box, rib & ~cartilage & (section <= 0.35), Tissue.CANCELLOUS)


def _paint_pelvis(scene: Scene) -> None:
    """Iliac wings from the sacro-iliac joints forward and outward, gluteal muscles behind
    them, the sacrum in place of the lumbar spine, the bladder and femoral heads."""
    canvas, body = scene.canvas, scene.body
    box = canvas.box((body.crest_z, -1e4, -1e4), (1e4, 1e4, 1e4))
    if box[0].start >= box[0].stop:
        return
    z, y, x = canvas.grid(box)
    spine = body.spine_y_at(z)
    depth = z - body.crest_z
    thickness = 6.0 + 0.08 * depth
    inner = body.half_width - body.fat_mm - body.muscle_mm
    front_x, front_y = inner - scene.uniform(5.0, 20.0), scene.uniform(50.0, 70.0)
    inside_fat = scene.depth[box] >= body.fat_mm
    wing_depth = depth - 0.003 * (np.abs(x) - 110.0) ** 2  # the crest is highest laterally
    for side in (-1.0, 1.0):
        # the wing: a plate from the sacro-iliac joint (spine + 25, +-35) forward and outward
        dy, dx = -front_y - 25.0, side * (front_x - 35.0)
        rel_y, rel_x = y - spine - 25.0, x - side * 35.0
        t = np.clip((rel_y * dy + rel_x * dx) / (dy * dy + dx * dx), 0.0, 1.0)
        bow = side * 12.0 * 4.0 * t * (1.0 - t)
        distance = np.hypot(rel_y - t * dy, rel_x - t * dx - bow)
        wing = (distance <= thickness / 2.0) & (wing_depth >= 0.0) & (depth < 110.0)
        behind = side * (rel_y * dx - (rel_x - bow) * dy) > 0.0
        near = distance < scene.uniform(35.0, 50.0)
        gluteal = behind & near & (wing_depth >= 0.0) & inside_fat & (side * x > 30.0) & (t > 0.0) & (t < 1.0)
        canvas.paint(box, gluteal & ~wing, Tissue.MUSCLE)
        canvas.paint(box, wing & (distance > thickness / 2.0 - 1.6), Tissue.CORTICAL)
        canvas.paint(box, wing & (distance <= thickness / 2.0 - 1.6), Tissue.CANCELLOUS)
    sacrum_width = np.clip(55.0 - 0.25 * (depth - SACRUM_BELOW_CREST_MM), 15.0, 55.0)
    sacrum = ((x / sacrum_width) ** 2 + ((y - spine - 20.0) / 16.0) ** 2 <= 1.0) & (depth >= SACRUM_BELOW_CREST_MM)
    core = ((x / (sacrum_width - 2.0)) ** 2 + ((y - spine - 20.0) / 14.0) ** 2 <= 1.0)
    canvas.paint(box, sacrum, Tissue.CORTICAL)
    canvas.paint(box, sacrum & core, Tissue.CANCELLOUS)
    bladder = (body.bladder_z, -scene.uniform(40.0, 60.0), 0.0)
    _paint_ellipsoid(scene, bladder, (45.0, 40.0, 50.0), Tissue.URINE, where=scene.abdomen)
    head_z, head_r = body.crest_z + scene.uniform(150.0, 175.0), scene.uniform(22.0, 26.0)
    for side in (-1.0, 1.0):
        centre = (head_z, body.spine_y - scene.uniform(20.0, 40.0), side * scene.uniform(85.0, 100.0))
        _paint_ellipsoid(scene, centre, (head_r,) * 3, Tissue.CORTICAL)
        _paint_ellipsoid(scene, centre, (head_r - 2.0,) * 3, Tissue.CANCELLOUS)


def _paint_ureters(scene: Scene) -> None:
    """Ureters from each kidney's hilum along the psoas to the bladder (urine: bright in the
    excretory phase)."""
    body = scene.body
    radius = scene.uniform(2.0, 4.0)
    for side in ("right", "left"):
        if scene.layout.kidney(side) is None:
            continue
        centre = scene.layout.side(side)[0]
        sign = np.sign(centre[2])
        hilum = (centre[0] + scene.uniform(0.0, 15.0), centre[1] - 5.0, centre[2] - sign * scene.uniform(25.0, 35.0))
        brim = (body.crest_z + scene.uniform(0.0, 30.0), body.spine_y - scene.uniform(15.0, 30.0), sign * scene.uniform(35.0, 50.0))
        end = (body.bladder_z, -scene.uniform(30.0, 45.0), sign * scene.uniform(15.0, 30.0))
        _paint_tube(scene, hilum, brim, radius, Tissue.URINE)
        _paint_tube(scene, brim, end, radius, Tissue.URINE)


# --- kidneys ----------------------------------------------------------------------------------


def _paint_kidney_space(scene: Scene, labels: np.ndarray, factors: tuple[int, int, int]) -> None:
    """Clear the real kidneys and tumors plus 3-8 mm of perirenal fat around them to fat."""
    canvas = scene.canvas
    sampled = labels[:: factors[0], :: factors[1], :: factors[2]] > 0
    mask = np.zeros(canvas.tissue.shape, bool)
    mask[: sampled.shape[0], : sampled.shape[1], : sampled.shape[2]] = sampled
    margin = scene.uniform(3.0, 8.0)
    pad = [int(np.ceil(margin / s)) + 1 for s in canvas.spacing]
    nz = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - p, 0), int(i.max()) + p + 1) for i, p in zip(nz, pad))
    distance = ndimage.distance_transform_edt(~mask[box], sampling=canvas.spacing)
    canvas.paint(box, distance <= margin, Tissue.FAT)


# --- the whole body ---------------------------------------------------------------------------


@dataclass
class Anatomy:
    """The coarse anatomy of one phantom."""

    tissue: np.ndarray  # uint8 [z, y, x] on the coarse grid
    factors: tuple[int, int, int]  # fine voxels per coarse step
    body: Body
    layout: Layout
    canvas: Canvas


PAINTERS = (
    _paint_wall,
    _paint_thorax,
    _paint_bowel,
    _paint_colon,
    _paint_stomach,
    _paint_spleen,
    _paint_liver,
    _paint_vessels,
    _paint_muscles,
    _paint_spine,
    _paint_pelvis,
    _paint_ureters,
    _paint_ribs,
    _paint_table,
)


def paint_anatomy(
    labels: np.ndarray, layout: Layout, rng: np.random.Generator, fat_mm: tuple[float, float] = (8.0, 40.0)
) -> Anatomy:
    """Paint the body around the kidneys of a ``[z, y, x]`` label map (I, P, L); ``fat_mm``: range of
    the subcutaneous fat thickness."""
    factors = coarse_factors(layout.spacing)
    shape = tuple(coarse_size(n, f) for n, f in zip(labels.shape, factors))
    axes = [np.arange(n) * f * s - o for n, f, s, o in zip(shape, factors, layout.spacing, layout.origin_mm)]
    canvas = Canvas(*(a.astype(np.float32) for a in axes), tissue=np.zeros(shape, np.uint8))
    body = _draw_body(layout, fat_mm, rng)
    _, y, x = canvas.grid((slice(0, 1), slice(None), slice(None)))
    r, skin = skin_radius(body, y[0], x[0])
    depth = skin[None] * _body_scale(canvas, body, rng)[:, None, None] - r[None]
    scene = Scene(canvas, layout, body, depth, _diaphragm(canvas, layout, body, rng), rng)
    for painter in PAINTERS:
        painter(scene)
    _paint_kidney_space(scene, labels, factors)
    return Anatomy(canvas.tissue, factors, body, layout, canvas)
