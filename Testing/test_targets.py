"""Tests of KidneyTumorSegLib.targets: landmark heat-maps, landmark peaks, soft-boundary targets."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from KidneyTumorSegLib import targets
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS

REAL_CASES = ("case_00015", "case_00038", "case_00061")  # small files, two kidneys each

# Hand-drawn kidney slice (1 x 7 x 7). Expected (y, x) points, worked out by hand:
#   left   (3, 1): only pixel with x = 1
#   top    (1, 3): y = 1 has x = 2, 3, 4 -> mean 3
#   right  (2, 5): x = 5 has y = 2, 3 -> mean 2.5 -> numpy rint (half to even) -> 2
#   bottom (5, 3): only pixel with y = 5
#   center (3, 3): 16 pixels, sum y = 43 -> 2.6875 -> 3, sum x = 50 -> 3.125 -> 3
KIDNEY_SLICE = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1, 0],
    [0, 1, 1, 1, 1, 1, 0],
    [0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)
KIDNEY_POINTS = [[3, 1], [1, 3], [2, 5], [5, 3], [3, 3]]


def test_hand_drawn_slice_landmarks():
    points = targets.landmark_points(KIDNEY_SLICE[None])
    assert len(points) == 1
    np.testing.assert_array_equal(points[0], [KIDNEY_POINTS])


def test_ties_use_rounded_mean_of_other_coordinate():
    plane = np.zeros((1, 9, 9), dtype=np.uint8)
    plane[0, 2:7, 1] = 1  # left edge: y = 2..6 -> mean 4
    plane[0, 3:5, 1:7] = 1  # right edge x = 6: y = 3, 4 -> mean 3.5 -> rint 4
    left, _, right, _, _ = targets.landmark_points(plane)[0][0]
    assert tuple(left) == (4, 1)
    assert tuple(right) == (4, 6)


def test_two_kidneys_give_two_point_sets_per_slice():
    mask = np.zeros((2, 7, 16), dtype=np.uint8)
    mask[:, :, :7] = KIDNEY_SLICE
    mask[1, 2:5, 10:13] = 1  # second kidney only in slice 1
    points = targets.landmark_points(mask)
    assert points[0].shape == (1, 5, 2)
    assert points[1].shape == (2, 5, 2)
    np.testing.assert_array_equal(points[1][1], [[3, 10], [2, 11], [3, 12], [4, 11], [3, 11]])


def test_components_are_26_connected():
    mask = np.zeros((2, 6, 6), dtype=np.uint8)
    mask[0, 1, 1] = 1
    mask[1, 2, 2] = 1  # touches the first voxel only through a 3D corner
    assert targets.kidney_components(mask).max() == 1


@pytest.mark.parametrize("small_voxels, kept", [(5, True), (4, False)])
def test_components_below_five_percent_of_largest_are_dropped(small_voxels, kept):
    mask = np.zeros((1, 20, 30), dtype=np.uint8)
    mask[0, 0:10, 0:10] = 1  # 100 voxels: 5 % is 5 voxels
    mask[0, 15, 20:20 + small_voxels] = 1
    points = targets.landmark_points(mask)
    assert points[0].shape[0] == (2 if kept else 1)


def test_empty_slices_have_no_points_and_zero_heatmaps():
    mask = np.zeros((3, 7, 7), dtype=np.uint8)
    mask[1] = KIDNEY_SLICE
    points = targets.landmark_points(mask)
    assert [p.shape[0] for p in points] == [0, 1, 0]
    heatmaps = targets.landmark_heatmaps(mask)
    assert heatmaps.shape == (5, 3, 7, 7) and heatmaps.dtype == np.float32
    assert not heatmaps[:, [0, 2]].any()
    np.testing.assert_allclose(heatmaps[:, 1].max(axis=(1, 2)), 1.0, rtol=0, atol=1e-6)


def test_heatmap_channels_peak_at_points_in_channel_order():
    heatmaps = targets.landmark_heatmaps(KIDNEY_SLICE[None])
    for channel, (y, x) in enumerate(KIDNEY_POINTS):
        assert np.unravel_index(np.argmax(heatmaps[channel, 0]), (7, 7)) == (y, x)
        assert heatmaps[channel, 0, y, x] == pytest.approx(1.0, abs=1e-6)


def _single_point_heatmap(y: int, x: int, shape=(31, 31)) -> np.ndarray:
    mask = np.zeros((1,) + shape, dtype=np.uint8)
    mask[0, y, x] = 1
    return targets.landmark_heatmaps(mask)[4, 0]  # centre channel of a one-pixel kidney


def test_heatmap_gaussian_sigma_is_three_pixels():
    heat = _single_point_heatmap(15, 15)
    assert heat[15, 16] / heat[15, 15] == pytest.approx(np.exp(-1 / (2 * 3.0 ** 2)), rel=1e-5)
    assert heat[17, 17] / heat[15, 15] == pytest.approx(np.exp(-8 / (2 * 3.0 ** 2)), rel=1e-5)


def test_heatmap_gaussian_is_truncated_at_four_sigma():
    heat = _single_point_heatmap(15, 1, shape=(31, 40))
    assert heat[15, 1 + 12] > 0  # 4 sigma = 12 px still inside the kernel
    assert heat[15, 1 + 13] == 0


def test_heatmap_gaussian_uses_zeros_outside_the_slice():
    heat = _single_point_heatmap(15, 0)  # a "reflect" mode would fold the kernel at x = -1
    assert heat[15, 1] / heat[15, 0] == pytest.approx(np.exp(-1 / 18), rel=1e-5)


def test_heatmap_each_slice_divided_by_its_maximum():
    mask = np.zeros((1, 9, 9), dtype=np.uint8)
    mask[0, 4, 3:5] = 1  # left (4, 3) and right (4, 4) Gaussians overlap; max must still be 1
    heatmaps = targets.landmark_heatmaps(mask)
    np.testing.assert_allclose(heatmaps.max(axis=(2, 3)), 1.0, atol=1e-6)


# --- landmark peaks -------------------------------------------------------------------------

def _one_channel(slice_yx: np.ndarray) -> np.ndarray:
    heatmaps = np.zeros((5, 1) + slice_yx.shape, dtype=np.float32)
    heatmaps[0, 0] = slice_yx
    return heatmaps


@pytest.mark.parametrize("value, found", [(0.5, True), (np.float32(0.4999), False)])
def test_peaks_must_reach_one_half(value, found):
    plane = np.zeros((20, 20), dtype=np.float32)
    plane[10, 10] = value
    assert targets.landmark_peaks(_one_channel(plane)) == ([(0, 0, 10, 10)] if found else [])


@pytest.mark.parametrize("distance, count", [(4, 1), (5, 2)])
def test_peaks_are_maxima_of_a_nine_pixel_window(distance, count):
    plane = np.zeros((20, 30), dtype=np.float32)
    plane[10, 10] = 0.9
    plane[10, 10 + distance] = 0.8  # inside the 9 x 9 window of the higher peak when distance <= 4
    assert len(targets.landmark_peaks(_one_channel(plane))) == count


def test_peak_must_be_the_maximum_of_its_own_window():
    plane = np.zeros((20, 30), dtype=np.float32)
    plane[10, 10], plane[10, 14], plane[10, 18] = 0.9, 0.8, 0.7  # 0.7 has 0.8 within 4 px
    assert targets.landmark_peaks(_one_channel(plane)) == [(0, 0, 10, 10)]


def test_peaks_keep_the_two_highest_per_channel_and_slice():
    plane = np.zeros((20, 60), dtype=np.float32)
    plane[5, 5], plane[5, 25], plane[5, 45] = 0.6, 0.9, 0.7
    assert targets.landmark_peaks(_one_channel(plane)) == [(0, 0, 5, 25), (0, 0, 5, 45)]


def test_flat_peak_gives_one_point_in_raster_order():
    plane = np.zeros((20, 20), dtype=np.float32)
    plane[8:10, 8:11] = 0.7
    assert targets.landmark_peaks(_one_channel(plane)) == [(0, 0, 8, 8)]


def test_peaks_read_back_the_points_of_two_kidneys_from_float16():
    mask = np.zeros((1, 24, 48), dtype=np.uint8)
    mask[0, 5:15, 3:13] = 1
    mask[0, 8:20, 30:40] = 1
    heatmaps = targets.landmark_heatmaps(mask).astype(np.float16)
    expected = {(c, 0, int(y), int(x)) for kidney in targets.landmark_points(mask)[0]
                for c, (y, x) in enumerate(kidney)}
    assert set(targets.landmark_peaks(heatmaps)) == expected


# --- boundaries -----------------------------------------------------------------------------

def test_boundary_erodes_by_cross_not_square():
    plus = np.zeros((1, 5, 5), dtype=np.uint8)
    plus[0, 2, 1:4] = 1
    plus[0, 1:4, 2] = 1
    boundary = targets.boundary_map(plus)
    assert not boundary[0, 2, 2]  # its 4 neighbours are in the mask; the square would erode it
    assert boundary.sum() == 4


def test_boundary_counts_image_edge_and_is_per_slice():
    mask = np.ones((3, 5, 5), dtype=np.uint8)
    boundary = targets.boundary_map(mask)
    ring = np.ones((5, 5), dtype=bool)
    ring[1:4, 1:4] = False
    for z in range(3):  # the first and last slices are not eroded through z
        np.testing.assert_array_equal(boundary[z], ring)


def test_boundary_sigma_by_task():
    assert targets.boundary_sigma("kidney") == 3.0
    assert targets.boundary_sigma("kidney_tumor") == 3.0
    assert targets.boundary_sigma("tumor") == 2.0
    with pytest.raises(ValueError):
        targets.boundary_sigma("liver")


@pytest.mark.parametrize("task, sigma", [("kidney", 3.0), ("kidney_tumor", 3.0), ("tumor", 2.0)])
def test_boundary_target_gaussian_width_by_task(task, sigma):
    mask = np.zeros((2, 31, 31), dtype=np.uint8)
    mask[1, 15, 15] = 1
    target = targets.task_boundary_target(mask, task)
    assert target.dtype == np.float32
    assert not target[0].any()
    assert target[1, 15, 15] == pytest.approx(1.0)
    assert target[1, 15, 16] == pytest.approx(np.exp(-1 / (2 * sigma ** 2)), rel=1e-5)


def test_boundary_target_settings_are_used():
    settings = dataclasses.replace(DEFAULT_SETTINGS, targets=dataclasses.replace(
        DEFAULT_SETTINGS.targets, boundary_sigma_tumor=1.0))
    assert targets.boundary_sigma("tumor", settings) == 1.0


# --- real KiTS19 geometry ---------------------------------------------------------------------

def _block_max(mask: np.ndarray, factor: int = 4) -> np.ndarray:
    """x4 down-sampling of a mask by block maximum (trailing partial blocks padded with 0)."""
    padded_shape = [-(-n // factor) * factor for n in mask.shape]
    padded = np.zeros(padded_shape, dtype=mask.dtype)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    z, y, x = (n // factor for n in padded_shape)
    return padded.reshape(z, factor, y, factor, x, factor).max(axis=(1, 3, 5))


@pytest.fixture(scope="module")
def real_masks(shared_masks_dir: Path) -> dict[str, np.ndarray]:
    """Foreground (kidney and tumor) of a few real KiTS19 cases, cropped around the kidneys."""
    masks = {}
    for case in REAL_CASES:
        foreground = np.asarray(nib.load(shared_masks_dir / f"{case}.nii.gz").dataobj) > 0
        present = np.nonzero(foreground)
        crop = tuple(slice(max(int(p.min()) - 8, 0), int(p.max()) + 9) for p in present)
        masks[case] = foreground[crop].astype(np.uint8)
    return masks


def _within(value: int, values: np.ndarray) -> bool:
    return bool(values.min() <= value <= values.max())


@pytest.mark.shared
def test_real_landmarks_sit_on_the_kidney_extremes(real_masks):
    for case, mask in real_masks.items():
        small = _block_max(mask)
        components = targets.kidney_components(small)
        assert components.max() == 2, case
        for z, slice_points in enumerate(targets.landmark_points(small)):
            present = np.unique(components[z][components[z] > 0])
            assert slice_points.shape == (present.size, 5, 2), (case, z)
            for label, kidney in zip(present, slice_points):
                ys, xs = np.nonzero(components[z] == label)
                # Each extreme sits on the kidney's extreme column / row, between the tied pixels
                # there (a split tie can put the rounded mean in a gap, so not always on the mask).
                (ly, lx), (ty, tx), (ry, rx), (by, bx), (cy, cx) = kidney
                assert lx == xs.min() and _within(ly, ys[xs == lx]), (case, z)
                assert ty == ys.min() and _within(tx, xs[ys == ty]), (case, z)
                assert rx == xs.max() and _within(ry, ys[xs == rx]), (case, z)
                assert by == ys.max() and _within(bx, xs[ys == by]), (case, z)
                assert _within(cy, ys) and _within(cx, xs), (case, z)


@pytest.mark.shared
def test_real_heatmaps_are_normalised_per_slice_and_give_back_their_points(real_masks):
    for case, mask in real_masks.items():
        small = _block_max(mask)
        heatmaps = targets.landmark_heatmaps(small)
        non_empty = small.any(axis=(1, 2))
        maxima = heatmaps.max(axis=(2, 3))
        np.testing.assert_allclose(maxima[:, non_empty], 1.0, atol=1e-6, err_msg=case)
        assert not heatmaps[:, ~non_empty].any(), case
        points = {(c, z, int(y), int(x)) for z, slice_points in enumerate(targets.landmark_points(small))
                  for kidney in slice_points for c, (y, x) in enumerate(kidney)}
        assert set(targets.landmark_peaks(heatmaps)) == points, case


@pytest.mark.shared
def test_real_boundary_targets(real_masks):
    for case, mask in real_masks.items():
        boundary = targets.boundary_map(mask)
        assert not np.any(boundary & (mask == 0)), case
        interior = (mask > 0) & ~boundary  # interior pixels have all four in-slice neighbours
        zs, ys, xs = np.nonzero(interior)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            assert mask[zs, ys + dy, xs + dx].all(), case
        target = targets.task_boundary_target(mask, "kidney_tumor")
        non_empty = mask.any(axis=(1, 2))
        np.testing.assert_allclose(target.max(axis=(1, 2))[non_empty], 1.0, atol=1e-6, err_msg=case)
        assert not target[~non_empty].any(), case
