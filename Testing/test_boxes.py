"""Tests of boxes: inclusive voxel boxes from masks, x4 scaling, margins, clipping and world coordinates."""
from __future__ import annotations

import math

import numpy as np
import pytest

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.geometry import labels_to_source, working_frame_for
from KidneyTumorSegLib.preprocessing import downsample_max
from KidneyTumorSegLib.settings import CropSettings, GeometrySettings

KITS_AFFINE = np.array([[0, 0, -0.91992188, 10.0], [0, -0.91992188, 0, -20.0], [-0.5, 0, 0, 30.0], [0, 0, 0, 1]])
RAS_AFFINE = np.array([[0.8, 0, 0, -100.0], [0, 0.8, 0, 50.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])


def _oblique(affine: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = np.eye(4)
    rotation[:2, :2] = [[c, -s], [s, c]]
    return rotation @ affine


# ---------------------------------------------------------------- construction


def test_from_mask_on_hand_made_masks() -> None:
    mask = np.zeros((6, 7, 8), np.uint8)
    mask[1, 2, 3] = 1
    mask[4, 0, 5] = 2
    assert Box.from_mask(mask) == Box((1, 0, 3), (4, 2, 5))
    assert Box.from_mask(mask.astype(bool)) == Box((1, 0, 3), (4, 2, 5))
    single = np.zeros((3, 3, 3), bool)
    single[2, 0, 1] = True
    assert Box.from_mask(single) == Box((2, 0, 1), (2, 0, 1))
    assert Box.from_mask(np.ones((2, 3, 4))) == Box((0, 0, 0), (1, 2, 3)) == Box.full((2, 3, 4))


def test_from_mask_is_none_for_an_empty_mask() -> None:
    assert Box.from_mask(np.zeros((4, 4, 4), np.uint8)) is None
    assert Box.from_mask(np.zeros((4, 4, 4), np.float32)) is None


def test_from_points_and_full() -> None:
    assert Box.from_points(np.array([[3, 1, 9], [0, 5, 2]])) == Box((0, 1, 2), (3, 5, 9))
    assert Box.from_points(np.zeros((0, 3))) is None
    assert Box.full((5, 6, 7, 1)) == Box((0, 0, 0), (4, 5, 6))


def test_empty_box_is_refused() -> None:
    with pytest.raises(ValueError, match="empty box"):
        Box((0, 5, 0), (3, 4, 3))


def test_size_volume_width_slices_contains_and_json() -> None:
    box = Box((1, 2, 3), (4, 6, 10))
    assert box.size == (4, 5, 8)
    assert box.volume == 160
    assert box.width == 8  # along x, the last working axis
    array = np.arange(12 * 12 * 12).reshape(12, 12, 12)
    assert array[box.slices].shape == box.size
    assert array[box.slices][0, 0, 0] == array[1, 2, 3] and array[box.slices][-1, -1, -1] == array[4, 6, 10]
    assert box.contains(Box((2, 2, 3), (4, 5, 10))) and box.contains(box)
    assert not box.contains(Box((0, 2, 3), (4, 6, 10)))
    assert Box.from_json(box.to_json()) == box
    assert box.to_json() == {"start": [1, 2, 3], "stop": [4, 6, 10]}


# ---------------------------------------------------------------- x4 scaling, margins, clipping


def test_scaled_up_maps_a_to_4a_and_b_to_4b_plus_3() -> None:
    assert GeometrySettings().downsample_factor == 4
    box = Box((1, 2, 3), (2, 3, 4))
    assert box.scaled_up(4, (100, 100, 100)) == Box((4, 8, 12), (11, 15, 19))
    assert Box((0, 0, 0), (0, 0, 0)).scaled_up(4, (100, 100, 100)) == Box((0, 0, 0), (3, 3, 3))


def test_scaled_up_clips_the_trailing_partial_block() -> None:
    # A working grid of 10 x 14 x 21 voxels down-samples to 3 x 4 x 6; the last blocks are partial.
    box = Box((2, 3, 5), (2, 3, 5))
    assert box.scaled_up(4, (10, 14, 21)) == Box((8, 12, 20), (9, 13, 20))


def test_scaled_up_downsampled_mask_box_is_the_block_aligned_box() -> None:
    rng = np.random.default_rng(4)
    shape = (13, 18, 22)
    for _ in range(20):
        mask = np.zeros(shape, bool)
        start = rng.integers(0, shape, 3)
        stop = [rng.integers(a, n) for a, n in zip(start, shape)]
        mask[tuple(slice(a, b + 1) for a, b in zip(start, stop))] = True
        truth = Box.from_mask(mask)
        scaled = Box.from_mask(downsample_max(mask)).scaled_up(4, shape)
        assert scaled.contains(truth)
        assert scaled.start == tuple(4 * (a // 4) for a in truth.start)
        assert scaled.stop == tuple(min(4 * (b // 4) + 3, n - 1) for b, n in zip(truth.stop, shape))


def test_expanded_by_the_kidney_margin_grows_8_64_64_per_side() -> None:
    margin = CropSettings().kidney_margin_zyx
    assert margin == (16, 128, 128)
    box = Box((20, 100, 100), (30, 150, 160))
    assert box.expanded(margin) == Box((12, 36, 36), (38, 214, 224))
    assert box.expanded(margin).size == tuple(s + g for s, g in zip(box.size, margin))


def test_expanded_by_the_tumor_margin_grows_4_8_8_per_side() -> None:
    assert CropSettings().tumor_margin_zyx == (8, 16, 16)
    assert Box((10, 10, 10), (12, 20, 30)).expanded((8, 16, 16)) == Box((6, 2, 2), (16, 28, 38))


def test_expanded_is_not_clipped_and_clipped_cuts_to_the_image() -> None:
    grown = Box((2, 10, 500), (5, 20, 510)).expanded((16, 128, 128))
    assert grown == Box((-6, -54, 436), (13, 84, 574))
    assert grown.clipped((10, 512, 512)) == Box((0, 0, 436), (9, 84, 511))
    assert Box((0, 0, 0), (3, 3, 3)).clipped((10, 10, 10)) == Box((0, 0, 0), (3, 3, 3))


@pytest.mark.parametrize("box", [Box((10, 0, 0), (12, 3, 3)), Box((-5, 0, 0), (-1, 3, 3)), Box((0, 0, 20), (3, 3, 25))])
def test_clipped_refuses_a_box_wholly_outside(box: Box) -> None:
    with pytest.raises(ValueError, match="lies outside the image"):
        box.clipped((10, 10, 10))


# ---------------------------------------------------------------- world coordinates


def test_edge_corners_ras_by_hand_on_a_kits_grid() -> None:
    # Voxel (i, j, k) of KITS_AFFINE is at R = 10 - 0.92 k, A = -20 - 0.92 j, S = 30 - 0.5 i.
    corners = Box((2, 3, 4), (5, 6, 7)).edge_corners_ras(KITS_AFFINE)
    p = 0.91992188
    expected_low = [10 - 7.5 * p, -20 - 6.5 * p, 30 - 5.5 * 0.5]
    expected_high = [10 - 3.5 * p, -20 - 2.5 * p, 30 - 1.5 * 0.5]
    np.testing.assert_allclose(corners, [expected_low, expected_high])
    centres = Box((2, 3, 4), (5, 6, 7)).centre_corners_ras(KITS_AFFINE)
    np.testing.assert_allclose(centres, [[10 - 4 * p, -20 - 3 * p, 29.0], [10 - 7 * p, -20 - 6 * p, 27.5]])


@pytest.mark.parametrize("affine", [KITS_AFFINE, RAS_AFFINE], ids=["IPL", "RAS"])
def test_edge_corners_and_from_ras_bounds_round_trip(affine: np.ndarray) -> None:
    shape = (20, 30, 40)
    rng = np.random.default_rng(5)
    for _ in range(25):
        start = rng.integers(0, shape, 3)
        box = Box(tuple(int(v) for v in start), tuple(int(rng.integers(a, n)) for a, n in zip(start, shape)))
        low, high = box.edge_corners_ras(affine)
        assert np.all(low < high)
        assert Box.from_ras_bounds(low, high, affine, shape) == box


def test_from_ras_bounds_selects_centres_inside_and_clips() -> None:
    # RAS_AFFINE: voxel i at R = -100 + 0.8 i; centres 1..3 lie in R [-99.3, -97.5].
    box = Box.from_ras_bounds(np.array([-99.3, 50.0, -300.0]), np.array([-97.5, 50.0, -300.0]), RAS_AFFINE, (10, 10, 10))
    assert box == Box((1, 0, 0), (3, 0, 0))
    everything = Box.from_ras_bounds(np.array([-1e3] * 3), np.array([1e3] * 3), RAS_AFFINE, (10, 10, 10))
    assert everything == Box.full((10, 10, 10))
    with pytest.raises(ValueError, match="outside"):
        Box.from_ras_bounds(np.array([500.0] * 3), np.array([600.0] * 3), RAS_AFFINE, (10, 10, 10))


def test_the_same_ras_box_selects_the_same_voxels_on_an_ipl_and_an_ras_grid() -> None:
    shape = (10, 12, 14)
    # The RAS grid of the same voxels as KITS_AFFINE: flip all three axes and reverse their order.
    flip = np.array([[0, 0, -1, shape[0] - 1], [0, -1, 0, shape[1] - 1], [-1, 0, 0, shape[2] - 1], [0, 0, 0, 1.0]])
    ras_affine = KITS_AFFINE @ flip
    box = Box((1, 2, 3), (4, 8, 9))
    low, high = box.edge_corners_ras(KITS_AFFINE)
    on_ras = Box.from_ras_bounds(low, high, ras_affine, shape[::-1])
    assert on_ras == Box((shape[2] - 1 - 9, shape[1] - 1 - 8, shape[0] - 1 - 4), (shape[2] - 1 - 3, shape[1] - 1 - 2, shape[0] - 1 - 1))
    np.testing.assert_allclose(on_ras.edge_corners_ras(ras_affine), [low, high])


# ---------------------------------------------------------------- transformed()


def test_transformed_identity_and_hand_computed_scaling() -> None:
    box = Box((2, 3, 4), (5, 6, 7))
    assert box.transformed(np.eye(4), (20, 20, 20)) == box
    # Other grid twice as coarse: edges 1.5..5.5 -> 0.75..2.75, touching voxels 1..3.
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    assert box.transformed(half, (20, 20, 20)) == Box((1, 1, 2), (3, 3, 4))
    # Shifted by half a voxel: edges 1.5..5.5 -> 2.0..6.0, touching voxels 2..6 (identity above:
    # edges on the other grid's edges take no extra voxel).
    shifted = np.eye(4)
    shifted[:3, 3] = 0.5
    assert box.transformed(shifted, (20, 20, 20)) == Box((2, 3, 4), (6, 7, 8))
    # A flip on the other grid: index 19 - v.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 19
    assert box.transformed(flip, (20, 20, 20)) == Box((14, 3, 4), (17, 6, 7))


def test_transformed_is_clipped_and_refuses_a_box_mapped_outside() -> None:
    far = np.eye(4)
    far[:3, 3] = [-3, 0, 0]
    assert Box((1, 1, 1), (5, 5, 5)).transformed(far, (20, 20, 20)) == Box((0, 1, 1), (2, 5, 5))
    far[:3, 3] = [100, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        Box((1, 1, 1), (5, 5, 5)).transformed(far, (20, 20, 20))


def _nearest_in_box(box: Box, mapping: np.ndarray, shape: tuple[int, ...]) -> tuple[Box | None, Box | None]:
    """Boxes of the voxels of a grid of ``shape`` whose nearest voxel on the box's grid is in ``box``.

    ``mapping`` takes their indices to the box grid's. A voxel half-way between two (a tie, common:
    0.5 mm slices against 3 mm ones) may go either way: returns (sure, possible) -- the voxels that
    are in under both tie rules, and those in under either.
    """
    index = np.indices(shape).reshape(3, -1)
    mapped = (mapping @ np.r_[index, np.ones((1, index.shape[1]))])[:3]
    low, high = np.array(box.start)[:, None], np.array(box.stop)[:, None]
    ins = [np.all((nearest >= low) & (nearest <= high), axis=0)
           for nearest in (np.floor(mapped + 0.5 + 1e-9), np.ceil(mapped - 0.5 - 1e-9))]
    return Box.from_points(index[:, ins[0] & ins[1]].T), Box.from_points(index[:, ins[0] | ins[1]].T)


@pytest.mark.parametrize("affine", [KITS_AFFINE, RAS_AFFINE, _oblique(KITS_AFFINE, 25.0)], ids=["IPL", "RAS", "oblique"])
def test_transformed_holds_every_input_voxel_whose_nearest_working_voxel_is_in_the_box(affine: np.ndarray) -> None:
    shape = (30, 24, 26)
    frame = working_frame_for(shape, affine)
    oblique = affine is not RAS_AFFINE and affine is not KITS_AFFINE
    rng = np.random.default_rng(6)
    checked = 0
    for _ in range(30):
        start = rng.integers(0, np.array(frame.shape) - 1, 3)
        box = Box(tuple(int(v) for v in start),
                  tuple(int(rng.integers(a, min(a + 8, n))) for a, n in zip(start, frame.shape)))
        sure, possible = _nearest_in_box(box, frame.source_to_working(), shape)
        try:
            on_input = box.transformed(frame.working_to_source(), shape)
        except ValueError as error:  # an oblique frame's corner, outside the input
            assert possible is None and "outside" in str(error)
            continue
        if possible is None:  # a working voxel finer than the input that is no input voxel's nearest
            continue
        assert on_input.contains(possible)
        checked += 1
        if oblique:
            continue
        # Axis-aligned: labels_to_source puts the box's label on those voxels (unless the box touches
        # the working frame's far end: input voxels past its last voxel take that voxel's label).
        if all(b < n - 1 for b, n in zip(box.stop, frame.shape)):
            in_box = np.zeros(frame.shape, np.uint8)
            in_box[box.slices] = 1
            labelled = Box.from_mask(labels_to_source(in_box, frame))
            assert possible.contains(labelled) and (sure is None or labelled.contains(sure))
        # ... and no more than one voxel beyond the input voxels whose centres lie in the box's voxels.
        low, high = box.edge_corners_ras(frame.affine)
        centres_inside = Box.from_ras_bounds(low, high, affine, shape)
        assert on_input.contains(centres_inside)
        assert all(a >= c - 1 and b <= d + 1 for a, b, c, d in zip(on_input.start, on_input.stop,
                                                                   centres_inside.start, centres_inside.stop))
    assert checked >= 15
