"""Stage 1's rules (SPEC §1) on hand-made probability maps and heat-maps: no networks involved.

Grids: the ×4 down-sampled grid of stage 1 and the working frame ``[z, y, x]`` (I, P, L).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS
from KidneyTumorSegLib.stage1 import (
    LANDMARK_NAMES,
    NoKidneyFound,
    accept_refinement,
    choose_by_width,
    choose_crop,
    landmark_box,
    landmarks_from_heatmaps,
    refined_kidney_box,
    remove_small_components,
    segmentation_box,
    stage2_crop,
    widths_about_the_same,
)

WORKING = (40, 128, 192)  # working frame [z, y, x]
DOWN = (10, 32, 48)  # its ×4 grid


def _no_heatmaps() -> np.ndarray:
    return np.zeros((5, *DOWN), np.float32)


def _box_x(x0: int, x1: int) -> Box:
    """A working-frame box with transverse extent x0..x1."""
    return Box((4, 40, x0), (15, 63, x1))


def _with_stage1(**changes) -> object:
    return dataclasses.replace(DEFAULT_SETTINGS, stage1=dataclasses.replace(DEFAULT_SETTINGS.stage1, **changes))


# ---------------------------------------------------------------- box from the segmentation


def test_segmentation_box_counts_exactly_half_as_foreground() -> None:
    probability = np.zeros(DOWN, np.float32)
    probability[2, 3, 4] = 0.5
    assert segmentation_box(probability, WORKING) == Box((8, 12, 16), (11, 15, 19))
    probability[2, 3, 4] = np.nextafter(np.float32(0.5), np.float32(0))
    assert segmentation_box(probability, WORKING) is None


def test_segmentation_box_is_scaled_by_four_block_inclusive() -> None:
    probability = np.zeros(DOWN, np.float32)
    probability[1:3, 3:6, 6:8] = 0.9  # [1, 2] x [3, 5] x [6, 7] on the x4 grid
    probability[5, 20, 30] = 0.3  # below threshold: ignored
    assert segmentation_box(probability, WORKING) == Box((4, 12, 24), (11, 23, 31))


def test_segmentation_box_is_clipped_to_a_working_frame_that_is_not_a_multiple_of_four() -> None:
    probability = np.zeros((5, 16, 16), np.float32)
    probability[4, 15, 15] = 1.0  # the trailing partial block
    assert segmentation_box(probability, (18, 62, 61)) == Box((16, 60, 60), (17, 61, 60))


# ---------------------------------------------------------------- box from the landmarks


def test_landmark_box_from_peaks_reaching_half() -> None:
    heatmaps = _no_heatmaps()
    heatmaps[0, 1, 2, 3] = 0.5  # exactly the threshold: a landmark
    heatmaps[4, 6, 20, 40] = 0.49  # below: not a landmark
    assert landmark_box(heatmaps, WORKING) == Box((4, 8, 12), (7, 11, 15))
    heatmaps[0, 1, 2, 3] = 0.49
    assert landmark_box(heatmaps, WORKING) is None


def test_landmark_peaks_use_a_nine_pixel_maximum_filter() -> None:
    heatmaps = _no_heatmaps()
    heatmaps[1, 2, 10, 10] = 0.9
    heatmaps[1, 2, 10, 14] = 0.8  # 4 px away: inside the 9 x 9 window of the higher peak
    assert landmark_box(heatmaps, WORKING) == Box((8, 40, 40), (11, 43, 43))
    heatmaps[1, 2, 10, 14] = 0.0
    heatmaps[1, 2, 10, 15] = 0.8  # 5 px away: outside the window, a second peak
    assert landmark_box(heatmaps, WORKING) == Box((8, 40, 40), (11, 43, 63))
    heatmaps[1, 2, 10, 15] = 0.0
    heatmaps[1, 2, 14, 14] = 0.8  # diagonal, 4 px on both axes: still inside the window
    assert landmark_box(heatmaps, WORKING) == Box((8, 40, 40), (11, 43, 43))


def test_at_most_two_landmarks_per_channel_and_slice() -> None:
    heatmaps = _no_heatmaps()
    heatmaps[2, 3, 10, 5] = 0.9
    heatmaps[2, 3, 10, 40] = 0.8
    heatmaps[2, 3, 25, 20] = 0.7  # third peak of the same channel and slice: dropped
    assert landmark_box(heatmaps, WORKING) == Box((12, 40, 20), (15, 43, 163))
    heatmaps[3, 3, 25, 20] = 0.7  # the same point in another channel counts
    assert landmark_box(heatmaps, WORKING) == Box((12, 40, 20), (15, 103, 163))
    heatmaps[2, 4, 25, 20] = 0.7  # and in another slice of the same channel
    assert landmark_box(heatmaps, WORKING).stop[0] == 19


def test_landmarks_are_named_and_placed_at_block_centres() -> None:
    heatmaps = _no_heatmaps()
    for channel in range(5):
        heatmaps[channel, channel, 2 * channel, 3 * channel] = 0.6 + 0.05 * channel
    landmarks = landmarks_from_heatmaps(heatmaps)
    assert [lm.name for lm in landmarks] == list(LANDMARK_NAMES) == ["left", "top", "right", "bottom", "center"]
    for channel, landmark in enumerate(landmarks):
        assert landmark.zyx == (4 * channel + 1.5, 8 * channel + 1.5, 12 * channel + 1.5)
        assert landmark.value == pytest.approx(0.6 + 0.05 * channel)


# ---------------------------------------------------------------- width rule (under-prediction)


@pytest.mark.parametrize("seg_width, expected", [
    (40, "seg"), (48, "seg"), (32, "seg"),  # |w_seg - w_lm| = 8 = 0.2 * 40: about the same
    (49, "landmarks"), (31, "landmarks"),  # one voxel more: different
])
def test_width_rule_boundary(seg_width: int, expected: str) -> None:
    seg, lm = _box_x(0, seg_width - 1), _box_x(100, 139)
    assert lm.width == 40 and seg.width == seg_width
    chosen, decision = choose_by_width(seg, lm)
    assert chosen == (seg if expected == "seg" else lm)
    assert widths_about_the_same(seg, lm) is (expected == "seg")
    assert ("segmentation box used" if expected == "seg" else "landmark box used") in decision


def test_width_rule_tolerance_is_relative_to_the_landmark_width() -> None:
    # 10 vs 8: |2| <= 0.2 * 10 but not <= 0.2 * 8; the landmark box is the reference.
    assert choose_by_width(_box_x(0, 7), _box_x(0, 9))[0] == _box_x(0, 7)
    assert choose_by_width(_box_x(0, 9), _box_x(0, 7))[0] == _box_x(0, 7)


def test_width_rule_with_one_box_missing() -> None:
    seg, lm = _box_x(0, 9), _box_x(50, 99)
    assert choose_by_width(None, lm)[0] == lm
    assert choose_by_width(seg, None)[0] == seg


def test_no_foreground_and_no_landmarks_raises_with_a_hint() -> None:
    with pytest.raises(NoKidneyFound, match="--box full"):
        choose_by_width(None, None)
    with pytest.raises(NoKidneyFound, match="--box full"):
        choose_crop(np.full(DOWN, 0.49, np.float32), np.full((5, *DOWN), 0.49, np.float32), WORKING, None)


# ---------------------------------------------------------------- refinement (over-prediction)


def _bar(voxels: int) -> np.ndarray:
    """A mask [20, 20, 20] holding one bar of ``voxels`` voxels (at most 1500) along x then y."""
    mask = np.zeros((20, 20, 20), bool)
    flat = mask[2:17, 2:12, 2:12].reshape(-1)  # a 15 x 10 x 10 = 1500 voxel block, filled in order
    flat[:voxels] = True
    mask[2:17, 2:12, 2:12] = flat.reshape(15, 10, 10)
    return mask


def test_components_below_1500_voxels_are_removed() -> None:
    assert remove_small_components(_bar(1500), 1500).sum() == 1500
    assert remove_small_components(_bar(1499), 1500).sum() == 0


def test_components_are_26_connected() -> None:
    mask = np.zeros((30, 30, 30), bool)
    mask[0:10, 0:10, 2:10] = True  # 800 voxels, last corner (9, 9, 9)
    mask[10:17, 10:20, 10:20] = True  # 700 voxels, first corner (10, 10, 10): touching only diagonally
    assert np.count_nonzero(mask) == 1500
    assert remove_small_components(mask, 1500).sum() == 1500  # diagonal touching joins
    mask[10, 10, 10] = False  # now no voxel touches across the corner
    assert remove_small_components(mask, 1500).sum() == 0


def test_refined_box_is_in_working_coordinates_and_ignores_small_components() -> None:
    region = Box((3, 10, 20), (22, 49, 69))
    probability = np.zeros(region.size, np.float32)
    probability[2:12, 5:20, 5:15] = 0.5  # 1500 voxels at exactly the threshold
    probability[18, 38, 48] = 1.0  # a lone voxel far away: removed
    assert refined_kidney_box(probability, region) == Box((5, 15, 25), (14, 29, 34))
    probability[2:12, 5:20, 5:15] = 0.49
    assert refined_kidney_box(probability, region) is None


def test_refined_box_over_the_extent_of_the_kidneys_equals_one_over_the_whole_region(real_kits_crops) -> None:
    """The components are found in the box of p >= 0.5 only; on real masks, with stage 1's support
    over one kidney and small islands around, the box is the one components over the whole region give."""
    from KidneyTumorSegLib.preprocessing import downsample_max
    from KidneyTumorSegLib.support import supported_part

    for name, image in real_kits_crops.items():
        kidneys = np.asarray(image.dataobj) > 0
        padded = np.pad(kidneys, 12)
        start = (5, 9, 13)  # any offset from the frame's origin
        region = Box(start, tuple(a + n - 1 for a, n in zip(start, padded.shape)))
        probability = padded.astype(np.float32) * 0.8
        probability[2, 3, 4] = probability[-3, -2, -5] = 0.9  # islands far from the kidneys
        whole = np.zeros(tuple(b + 8 for b in region.stop), bool)
        whole[region.slices] = padded
        whole[region.slices][:, :, : padded.shape[2] // 2] = False  # support: one kidney
        support_down = downsample_max(whole, 4)
        mask = remove_small_components(probability >= 0.5, DEFAULT_SETTINGS.stage1.refine_min_component_voxels)
        plain = Box.from_mask(supported_part(mask, region, support_down))
        expected = Box(tuple(a + o for a, o in zip(plain.start, region.start)), tuple(b + o for b, o in zip(plain.stop, region.start)))
        assert refined_kidney_box(probability, region, support_down=support_down) == expected, name


@pytest.mark.parametrize("volume, accepted", [(499, True), (500, False), (501, False)])
def test_half_size_rule_compares_volumes_strictly(volume: int, accepted: bool) -> None:
    previous = Box((0, 0, 0), (9, 9, 9))  # 1000 voxels
    refined = Box((0, 0, 0), (volume - 1, 0, 0))
    assert refined.volume == volume
    assert accept_refinement(refined, previous) is accepted
    assert accept_refinement(None, previous) is False


def test_half_size_rule_uses_volume_not_width() -> None:
    previous = Box((0, 0, 0), (9, 9, 9))
    narrow_but_big = Box((0, 0, 0), (9, 9, 5))  # 60 % of the width, 600 voxels: kept
    thin_but_wide = Box((0, 0, 0), (9, 3, 9))  # the full width, 400 voxels: refined
    assert not accept_refinement(narrow_but_big, previous)
    assert accept_refinement(thin_but_wide, previous)


# ---------------------------------------------------------------- the crop


def test_crop_is_the_box_grown_by_8_64_64_per_side() -> None:
    box = Box((10, 70, 80), (20, 90, 100))
    assert stage2_crop(box, (40, 300, 300)) == Box((2, 6, 16), (28, 154, 164))
    assert stage2_crop(box, (25, 100, 120)) == Box((2, 6, 16), (24, 99, 119))
    assert DEFAULT_SETTINGS.crop.kidney_margin_zyx == (16, 128, 128)


# ---------------------------------------------------------------- mixed cropping end to end


def _kidneys_down(probability: np.ndarray, heatmaps: np.ndarray, x_ranges: list[tuple[int, int]],
                  landmarks: bool = True, segmentation: bool = True) -> None:
    """Kidneys on the ×4 grid at slices 2..5, rows 10..17, the given x ranges (inclusive)."""
    for x0, x1 in x_ranges:
        if segmentation:
            probability[2:6, 10:18, x0:x1 + 1] = 0.9
        if landmarks:
            for z in range(2, 6):
                heatmaps[0, z, 14, x0] = 1.0  # left-most
                heatmaps[2, z, 14, x1] = 1.0  # right-most
                heatmaps[1, z, 10, (x0 + x1) // 2] = 1.0  # top
                heatmaps[3, z, 17, (x0 + x1) // 2] = 1.0  # bottom


def _kidney_probability(working_boxes: list[Box], calls: list[Box]):
    """A stage-2 kidney model that sees kidneys exactly in ``working_boxes``."""
    def predict(region: Box) -> np.ndarray:
        calls.append(region)
        full = np.zeros(WORKING, np.float32)
        for box in working_boxes:
            full[box.slices] = 1.0
        return full[region.slices]
    return predict


LEFT_KIDNEY_DOWN = (6, 13)  # x on the ×4 grid
RIGHT_KIDNEY_DOWN = (32, 39)
LEFT_KIDNEY = Box((8, 40, 24), (23, 71, 55))  # the same kidneys in the working frame
RIGHT_KIDNEY = Box((8, 40, 128), (23, 71, 159))


def test_one_kidney_but_the_segmentation_box_holds_two_uses_the_refined_box() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    # Stage 1 marks both sides (a false positive on the right) and the landmarks agree.
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    calls: list[Box] = []
    result = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY], calls))
    assert result.segmentation_box == result.landmark_box == result.chosen_box == Box((8, 40, 24), (23, 71, 159))
    assert calls == [stage2_crop(result.chosen_box, WORKING)]  # the kidney models see the grown box
    assert result.refined_box == LEFT_KIDNEY
    assert result.crop_box == stage2_crop(LEFT_KIDNEY, WORKING) == Box((0, 0, 0), (31, 127, 119))
    assert "refined box used" in result.decisions[-1]


def test_under_prediction_uses_the_landmark_box() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN])  # stage 1 segments one kidney only
    _kidneys_down(probability, heatmaps, [RIGHT_KIDNEY_DOWN], segmentation=False)  # landmarks see both
    result = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY, RIGHT_KIDNEY], []))
    assert result.segmentation_box == LEFT_KIDNEY
    assert result.landmark_box == result.chosen_box == Box((8, 40, 24), (23, 71, 159))
    assert result.refined_box is None  # both kidneys fill the box: not below half
    assert result.crop_box == stage2_crop(result.chosen_box, WORKING)
    assert "landmark box used" in result.decisions[0] and "kept" in result.decisions[1]


def test_exactly_half_keeps_the_chosen_box_and_just_below_refines() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    probability[2:4, 4:8, 4:12] = 0.9  # working box 8 x 16 x 32 = 4096 voxels
    chosen = Box((8, 16, 16), (15, 31, 47))
    half = Box((8, 16, 16), (15, 31, 31))  # 8 x 16 x 16 = 2048 voxels
    kept = choose_crop(probability, heatmaps, WORKING, _kidney_probability([half], []))
    assert kept.chosen_box == chosen and kept.refined_box is None and kept.crop_box == stage2_crop(chosen, WORKING)
    below = Box((8, 16, 16), (15, 31, 30))  # 1920 voxels
    refined = choose_crop(probability, heatmaps, WORKING, _kidney_probability([below], []))
    assert refined.refined_box == below and refined.crop_box == stage2_crop(below, WORKING)


def test_small_false_positives_do_not_widen_the_refined_box() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    blob = Box((10, 50, 140), (20, 59, 153))  # 11 x 10 x 14 = 1540 voxels: kept, so widens
    speck = Box((10, 50, 140), (20, 59, 152))  # 11 x 10 x 13 = 1430 voxels: removed
    widened = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY, blob], []))
    assert widened.refined_box is None  # the box grows to both sides: not below half
    clean = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY, speck], []))
    assert clean.refined_box == LEFT_KIDNEY


def test_support_drops_kidney_components_stage_1_does_not_touch() -> None:
    """K marks the left kidney and a large look-alike on the right; stage 1 saw only the left one."""
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    support = np.zeros(DOWN, bool)
    support[2:6, 10:18, LEFT_KIDNEY_DOWN[0]:LEFT_KIDNEY_DOWN[1] + 1] = True
    kidney_models = _kidney_probability([LEFT_KIDNEY, RIGHT_KIDNEY], [])
    assert choose_crop(probability, heatmaps, WORKING, kidney_models).refined_box is None  # the paper: both kept
    supported = choose_crop(probability, heatmaps, WORKING, kidney_models, support_down=support)
    assert supported.refined_box == LEFT_KIDNEY and "refined box used" in supported.decisions[-1]


def test_refinement_is_skipped_when_stage_1s_support_fills_the_box() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    both = probability >= 0.5
    calls: list[Box] = []
    kidney_models = _kidney_probability([LEFT_KIDNEY], calls)
    skipped = choose_crop(probability, heatmaps, WORKING, kidney_models, support_down=both)
    assert calls == [] and skipped.refined_box is None and "no refinement needed" in skipped.decisions[-1]
    assert skipped.crop_box == stage2_crop(skipped.chosen_box, WORKING)
    left = both.copy()
    left[..., RIGHT_KIDNEY_DOWN[0]:] = False  # the support's box is below half of the chosen box: refine
    assert choose_crop(probability, heatmaps, WORKING, kidney_models, support_down=left).refined_box == LEFT_KIDNEY
    assert len(calls) == 1
    always = _with_stage1(refine_only_when_support_is_smaller=False)
    assert choose_crop(probability, heatmaps, WORKING, kidney_models, always, support_down=both).refined_box == LEFT_KIDNEY
    assert len(calls) == 2


def test_refinement_disabled_or_without_kidney_models() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    calls: list[Box] = []
    disabled = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY], calls),
                           _with_stage1(refine_enabled=False))
    assert calls == [] and disabled.refined_box is None
    assert disabled.crop_box == stage2_crop(disabled.chosen_box, WORKING)
    without = choose_crop(probability, heatmaps, WORKING, None)
    assert without.refined_box is None and without.crop_box == disabled.crop_box
    assert len(without.decisions) == 1


def test_stage1_result_keeps_every_box_and_the_landmarks() -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    result = choose_crop(probability, heatmaps, WORKING, None)
    assert len(result.landmarks) == 4 * 4 * 2  # 4 channels x 4 slices x 2 kidneys
    assert {lm.name for lm in result.landmarks} == {"left", "top", "right", "bottom"}
    assert all(result.chosen_box.contains(Box.from_points(np.floor([lm.zyx]).astype(int))) for lm in result.landmarks)


# ---------------------------------------------------------------- the refinement region [D] and the decisions in words


@pytest.mark.parametrize("margin", [(16, 128, 128), (0, 0, 0), (4, 8, 16)])
def test_the_refinement_region_is_the_setting(margin: tuple[int, int, int]) -> None:
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [LEFT_KIDNEY_DOWN, RIGHT_KIDNEY_DOWN])
    calls: list[Box] = []
    result = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY], calls),
                         _with_stage1(refine_margin_zyx=margin))
    half = [m // 2 for m in margin]
    chosen = result.chosen_box
    expected = Box(tuple(max(0, a - h) for a, h in zip(chosen.start, half)),
                   tuple(min(n - 1, b + h) for b, h, n in zip(chosen.stop, half, WORKING)))
    assert calls == [expected]
    assert DEFAULT_SETTINGS.stage1.refine_margin_zyx == DEFAULT_SETTINGS.crop.kidney_margin_zyx  # [D] the stage-2 margin


def _stated_boxes(decision: str) -> list[tuple[int, int, int, int]]:
    """Every ``Z × Y × X = N voxels`` a decision states, as (Z, Y, X, N)."""
    return [tuple(int(v) for v in m) for m in re.findall(r"(\d+) × (\d+) × (\d+) = (\d+) voxels", decision)]


def test_decisions_state_sizes_that_add_up() -> None:
    """The support box reaches far past a narrow landmark box: the skip speaks of the support
    inside the region the kidney models would search, never of a box larger than that region."""
    probability, heatmaps = np.zeros(DOWN, np.float32), _no_heatmaps()
    _kidneys_down(probability, heatmaps, [(6, 9)], segmentation=False)  # landmarks: a narrow box on the left
    probability[:, :, :] = 0.9  # stage 1 marks everything: its widths disagree, the landmark box is chosen
    support = np.ones(DOWN, bool)
    result = choose_crop(probability, heatmaps, WORKING, _kidney_probability([LEFT_KIDNEY], []), support_down=support)
    assert result.chosen_box == result.landmark_box and "landmark box used" in result.decisions[0]
    assert "no refinement needed" in result.decisions[1]
    region = result.chosen_box.expanded(DEFAULT_SETTINGS.stage1.refine_margin_zyx).clipped(WORKING)
    stated = _stated_boxes(result.decisions[1])
    assert stated[0] == (*region.size, region.volume)  # the support fills the whole region
    assert stated[1] == (*result.chosen_box.size, result.chosen_box.volume)
    widths = re.findall(r"(\d+) voxels \((\d+) mm\)", result.decisions[0])
    assert [int(v) for v, _ in widths] == [result.segmentation_box.width, result.landmark_box.width]
    assert f"{abs(result.segmentation_box.width - result.landmark_box.width)} voxels apart" in result.decisions[0]
    for decision in result.decisions:
        assert all(z * y * x == n for z, y, x, n in _stated_boxes(decision))
    refined = choose_crop(probability, heatmaps, WORKING, _kidney_probability([Box((8, 40, 24), (15, 63, 39))], []))
    stated = _stated_boxes(refined.decisions[1])
    assert "refined box used" in refined.decisions[1] and stated[0][3] < stated[1][3] / 2
    assert all(z * y * x == n for z, y, x, n in stated)
