"""Stage 1: kidney localisation on the ×4 grid and the mixed cropping of SPEC §1.

Every rule is a pure function of arrays so each can be tested alone; :func:`choose_crop`
strings them together. Boxes are in working-frame voxels ``[z, y, x]``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .boxes import Box
from .settings import DEFAULT_SETTINGS, WORKING_SPACING_ZYX, MethodSettings
from .support import supported_part
from .targets import CONNECTIVITY_26, landmark_peaks

LANDMARK_NAMES = ("left", "top", "right", "bottom", "center")

KidneyProbability = Callable[[Box], np.ndarray]
"""``kidney_probability(box) -> [z, y, x]`` float probability of kidney over ``box`` (stage-2 K)."""


class NoKidneyFound(RuntimeError):
    """Stage 1 found neither a kidney region nor landmarks."""


@dataclass(frozen=True)
class Landmark:
    """A landmark read from stage 1's heat-maps: ``name`` and working-frame position ``[z, y, x]`` (block centre)."""

    name: str
    zyx: tuple[float, float, float]
    value: float


@dataclass(frozen=True)
class Stage1Result:
    """Everything stage 1 decides; all boxes in working-frame voxels ``[z, y, x]``.

    ``segmentation_box``/``landmark_box``: from the thresholded foreground / from the landmarks
    (None when empty). ``chosen_box``: after the width rule. ``refined_box``: the stage-2 kidney
    box when the half-size rule took it, else None. ``crop_box``: the final stage-2 crop (margin
    added, clipped). ``decisions``: one sentence per rule, for reports.
    """

    segmentation_box: Box | None
    landmark_box: Box | None
    chosen_box: Box
    refined_box: Box | None
    crop_box: Box
    landmarks: tuple[Landmark, ...]
    decisions: tuple[str, ...] = field(default=())


def segmentation_box(probability_down: np.ndarray, working_shape: tuple[int, ...], settings: MethodSettings = DEFAULT_SETTINGS) -> Box | None:
    """Box of the foreground ``p >= 0.5`` on the ×4 grid ``[z, y, x]``, scaled back to the working frame."""
    box = Box.from_mask(probability_down >= settings.geometry.probability_threshold)
    return None if box is None else box.scaled_up(settings.geometry.downsample_factor, working_shape)


def landmarks_from_heatmaps(heatmaps_down: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> tuple[Landmark, ...]:
    """Landmark peaks of heat-maps ``[5, z, y, x]`` (×4 grid) as working-frame points at block centres."""
    factor = settings.geometry.downsample_factor
    centre = (factor - 1) / 2.0
    return tuple(
        Landmark(LANDMARK_NAMES[c], (z * factor + centre, y * factor + centre, x * factor + centre), float(heatmaps_down[c, z, y, x]))
        for c, z, y, x in landmark_peaks(heatmaps_down, settings)
    )


def landmark_box(heatmaps_down: np.ndarray, working_shape: tuple[int, ...], settings: MethodSettings = DEFAULT_SETTINGS) -> Box | None:
    """Extent of all landmark peaks (×4 grid), scaled back to the working frame; None without peaks."""
    points = [(z, y, x) for _, z, y, x in landmark_peaks(heatmaps_down, settings)]
    box = Box.from_points(np.array(points, dtype=int))
    return None if box is None else box.scaled_up(settings.geometry.downsample_factor, working_shape)


def widths_about_the_same(segmentation: Box, landmarks: Box, settings: MethodSettings = DEFAULT_SETTINGS) -> bool:
    """SPEC §1 step 1: ``|w_seg − w_lm| ≤ tolerance · w_lm`` on the transverse (x) widths."""
    return abs(segmentation.width - landmarks.width) <= settings.stage1.width_tolerance * landmarks.width


def choose_by_width(segmentation: Box | None, landmarks: Box | None, settings: MethodSettings = DEFAULT_SETTINGS) -> tuple[Box, str]:
    """Under-prediction rule: the segmentation box when the widths agree, else the landmark box.
    The decision names both widths (voxels and mm), their difference and the tolerance."""
    if segmentation is None and landmarks is None:
        raise NoKidneyFound("stage 1 found no kidney; draw a crop box by hand or run stage 2 on the whole volume (--box full)")
    if landmarks is None:
        return segmentation, "stage 1 found no landmarks: segmentation box used"
    if segmentation is None:
        return landmarks, "stage 1 marked no kidney voxel, only landmarks: landmark box used"
    spacing = WORKING_SPACING_ZYX[2]
    tolerance = settings.stage1.width_tolerance
    widths = (f"transverse widths: segmentation box {segmentation.width} voxels ({segmentation.width * spacing:.0f} mm), "
              f"landmark box {landmarks.width} voxels ({landmarks.width * spacing:.0f} mm), "
              f"{abs(segmentation.width - landmarks.width)} voxels apart")
    limit = f"{tolerance:.0%} of the landmark box's width ({tolerance * landmarks.width:.1f} voxels)"
    if widths_about_the_same(segmentation, landmarks, settings):
        return segmentation, f"{widths}, within {limit}: segmentation box used"
    return landmarks, f"{widths}, more than {limit}: landmark box used"


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Keep the 26-connected components of ``mask`` with at least ``min_voxels`` voxels (bool, same shape)."""
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    if count == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def refined_kidney_box(kidney_probability: np.ndarray, region: Box, settings: MethodSettings = DEFAULT_SETTINGS,
                       support_down: np.ndarray | None = None) -> Box | None:
    """Box of the stage-2 kidney prediction over ``region`` (``[z, y, x]`` probabilities) after
    removing components < 1500 voxels, in working-frame coordinates; None when nothing is left.
    ``support_down`` (stage 1's support on the ×4 grid, see support.py) also trims or removes the
    components that lie mostly outside it. The components are found inside the box of
    ``p >= 0.5`` only: outside it is background, so they are the same."""
    extent = Box.from_mask(kidney_probability >= settings.geometry.probability_threshold)
    if extent is None:
        return None
    mask = remove_small_components(kidney_probability[extent.slices] >= settings.geometry.probability_threshold,
                                   settings.stage1.refine_min_component_voxels)
    offset = tuple(r + e for r, e in zip(region.start, extent.start))
    if support_down is not None:
        inner = Box(offset, tuple(o + n - 1 for o, n in zip(offset, mask.shape)))
        mask = supported_part(mask, inner, support_down, settings)
    box = Box.from_mask(mask)
    if box is None:
        return None
    return Box(tuple(a + o for a, o in zip(box.start, offset)), tuple(b + o for b, o in zip(box.stop, offset)))


def accept_refinement(refined: Box | None, previous: Box, settings: MethodSettings = DEFAULT_SETTINGS) -> bool:
    """Over-prediction rule: take the refined box when its volume is below half the previous box's."""
    return refined is not None and refined.volume < settings.stage1.refine_max_volume_ratio * previous.volume


def refinement_region(chosen: Box, working_shape: tuple[int, ...], settings: MethodSettings = DEFAULT_SETTINGS) -> Box:
    """Where the kidney models refine the ``chosen`` box: grown by ``stage1.refine_margin_zyx``
    ([D] the stage-2 margin, the context they were trained with) and clipped."""
    return chosen.expanded(settings.stage1.refine_margin_zyx).clipped(working_shape)


def _share_of(chosen: Box, settings: MethodSettings) -> str:
    """``"0.5 × the chosen box, Z × Y × X = N voxels (…), i.e. M voxels"``: the over-prediction rule's bar."""
    ratio = settings.stage1.refine_max_volume_ratio
    return f"{ratio:g} × the chosen box, {chosen.describe(WORKING_SPACING_ZYX)}, i.e. {ratio * chosen.volume:.0f} voxels"


def support_fills(support_down: np.ndarray | None, chosen: Box, working_shape: tuple[int, ...],
                  settings: MethodSettings = DEFAULT_SETTINGS) -> str | None:
    """Why the refinement can be skipped, or None. With stage 1's support, the refined box holds
    only kidney components lying mostly in the support, so inside the refinement region it is
    about the support's box there; when that is not below half of ``chosen`` (or empty), the
    over-prediction rule would keep ``chosen`` anyway [D: ``refine_only_when_support_is_smaller``]."""
    if support_down is None or not settings.stage1.refine_only_when_support_is_smaller:
        return None
    support_box = Box.from_mask(support_down)
    if support_box is None:
        return None
    region = refinement_region(chosen, working_shape, settings)
    inside = support_box.scaled_up(settings.geometry.downsample_factor, working_shape).intersection(region)
    if inside is None:
        return ("stage 1's kidneys lie wholly outside the region the kidney models would search "
                f"({region.describe(WORKING_SPACING_ZYX)}): no refinement needed, chosen box kept")
    if accept_refinement(inside, chosen, settings):
        return None
    return (f"stage 1's kidneys span {inside.describe(WORKING_SPACING_ZYX)} of the region the kidney models would "
            f"search, not below {_share_of(chosen, settings)}: the models could not shrink the box enough, "
            "no refinement needed")


def refinement_decision(candidate: Box | None, chosen: Box, region: Box, accepted: bool,
                        settings: MethodSettings = DEFAULT_SETTINGS) -> str:
    """The over-prediction rule's decision in words, with the sizes it compared."""
    if candidate is None:
        return (f"the kidney models found no kidney region of {settings.stage1.refine_min_component_voxels} voxels "
                f"or more in {region.describe(WORKING_SPACING_ZYX)} around the chosen box: chosen box kept")
    found = f"the kidney models' box, {candidate.describe(WORKING_SPACING_ZYX)},"
    if accepted:
        return f"{found} is below {_share_of(chosen, settings)}: refined box used"
    return f"{found} is not below {_share_of(chosen, settings)}: chosen box kept"


def stage2_crop(box: Box, working_shape: tuple[int, ...], settings: MethodSettings = DEFAULT_SETTINGS) -> Box:
    """The stage-2 crop: ``box`` grown by the kidney margin (8 / 64 / 64 per side) and clipped."""
    return box.expanded(settings.crop.kidney_margin_zyx).clipped(working_shape)


def choose_crop(
    probability_down: np.ndarray,
    heatmaps_down: np.ndarray,
    working_shape: tuple[int, ...],
    kidney_probability: KidneyProbability | None,
    settings: MethodSettings = DEFAULT_SETTINGS,
    support_down: np.ndarray | None = None,
) -> Stage1Result:
    """Mixed cropping (SPEC §1) from stage 1's outputs on the ×4 grid.

    ``probability_down`` is the foreground probability ``[z, y, x]``, ``heatmaps_down`` the
    5 landmark channels ``[5, z, y, x]``. ``kidney_probability`` runs the stage-2 kidney models
    over a working-frame box (None, or ``settings.stage1.refine_enabled`` False, skips the
    over-prediction rule). The kidney models see :func:`refinement_region` ([D] the chosen box
    grown by the stage-2 margin, the context they were trained with). ``support_down`` (None: off) limits the refinement to the
    kidney components lying mostly in stage 1's support (support.py), and skips it when the
    support already fills half the box (:func:`support_fills`).
    """
    seg_box = segmentation_box(probability_down, working_shape, settings)
    lm_box = landmark_box(heatmaps_down, working_shape, settings)
    chosen, width_decision = choose_by_width(seg_box, lm_box, settings)
    decisions = [width_decision]
    refined = None
    filled = support_fills(support_down, chosen, working_shape, settings)
    if filled:
        decisions.append(filled)
    elif kidney_probability is not None and settings.stage1.refine_enabled:
        region = refinement_region(chosen, working_shape, settings)
        candidate = refined_kidney_box(kidney_probability(region), region, settings, support_down)
        accepted = accept_refinement(candidate, chosen, settings)
        refined = candidate if accepted else None
        decisions.append(refinement_decision(candidate, chosen, region, accepted, settings))
    crop = stage2_crop(refined or chosen, working_shape, settings)
    return Stage1Result(seg_box, lm_box, chosen, refined, crop, landmarks_from_heatmaps(heatmaps_down, settings), tuple(decisions))
