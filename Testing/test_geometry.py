"""Tests of geometry: the working frame (3.0 x 0.78 x 0.78 mm, axes I,P,L) and resampling to it and back."""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.geometry import (
    WorkingFrame,
    index_to_world,
    labels_to_source,
    to_working_frame,
    working_frame_for,
    world_to_index,
)
from KidneyTumorSegLib.imageio import read_image
from KidneyTumorSegLib.settings import WORKING_AXCODES, WORKING_SPACING_ZYX

SPACING = np.array(WORKING_SPACING_ZYX)
# A KiTS19 header: axes I,P,L, 0.5 mm slices, 0.92 mm pixels, origin 0 (case_00000).
KITS_SHAPE = (611, 512, 512)
KITS_AFFINE = np.array([[0, 0, -0.91992188, 0], [0, -0.91992188, 0, 0], [-0.5, 0, 0, 0], [0, 0, 0, 1]])
# Floors a little under what the real masks measure (minimum over the 100 shared cases: kidney
# 0.970 (case_00068), tumor 0.915 (case_00001) over the 96 tumors > 1000 voxels).
KIDNEY_DICE_FLOOR = 0.95
TUMOR_DICE_FLOOR = 0.88
LARGE_TUMOR_VOXELS = 1000


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape."""
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def expected_working_shape(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Working-frame shape for an I,P,L input: every working centre inside the input's centre hull."""
    return tuple(math.floor((n - 1) * s / w + 1e-4) + 1 for n, s, w in zip(shape, spacing, SPACING))


def reoriented(array: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with array axes ``axcodes`` (a permutation/flip, no resampling)."""
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(axcodes))
    return np.ascontiguousarray(nio.apply_orientation(array, transform)), affine @ nio.inv_ornt_aff(transform, array.shape)


def rotated_about_centre(affine: np.ndarray, shape: tuple[int, ...], degrees: float, axis: int) -> np.ndarray:
    """``affine`` rotated by ``degrees`` about world ``axis`` through the grid's centre (an oblique grid)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    rotation = np.eye(4)
    rotation[[a, a, b, b], [a, b, a, b]] = [c, -s, s, c]
    centre = (affine @ np.r_[(np.array(shape) - 1) / 2.0, 1.0])[:3]
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre, centre
    return back @ rotation @ to_centre @ affine


def shift(start: tuple[int, ...]) -> np.ndarray:
    """4 x 4 index translation by ``start``."""
    matrix = np.eye(4)
    matrix[:3, 3] = start
    return matrix


def sub_frame(frame: WorkingFrame, source_box: Box) -> WorkingFrame:
    """The part of ``frame`` that covers ``source_box`` of its input grid, same voxels as the full frame."""
    working_box = source_box.transformed(frame.source_to_working(), frame.shape)
    return WorkingFrame(working_box.size, frame.affine @ shift(working_box.start),
                        source_box.size, frame.source_affine @ shift(source_box.start))


def centre_hull_excess(frame: WorkingFrame) -> np.ndarray:
    """For every working voxel centre, how far (input index units, per input axis) it lies outside the input's centre hull."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in frame.shape], indexing="ij"), -1).reshape(-1, 3)
    source = (frame.working_to_source() @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    last = np.array(frame.source_shape) - 1
    return np.maximum(0.0, np.maximum(-source, source - last))


def real_labels(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.dataobj, dtype=np.uint8)


# ---------------------------------------------------------------- the working frame of a KiTS19 file


def test_kits_frame_starts_at_first_voxel_with_working_spacing_and_axes() -> None:
    frame = working_frame_for(KITS_SHAPE, KITS_AFFINE)
    assert nib.aff2axcodes(frame.affine) == ("I", "P", "L") == WORKING_AXCODES
    assert frame.spacing == pytest.approx((3.0, 0.78162497, 0.78162497), abs=1e-9)
    np.testing.assert_allclose(frame.affine[:3, 3], KITS_AFFINE[:3, 3], atol=1e-9)
    # (610 * 0.5 / 3 = 101.7 -> 102 slices; 511 * 0.9199 / 0.7816 = 601.4 -> 602 pixels)
    assert frame.shape == (102, 602, 602) == expected_working_shape(KITS_SHAPE, (0.5, 0.91992188, 0.91992188))
    assert frame.source_shape == KITS_SHAPE
    np.testing.assert_array_equal(frame.source_affine, KITS_AFFINE)
    # The working axes are the input's axes, only rescaled: a diagonal index map.
    mapping = frame.working_to_source()
    np.testing.assert_allclose(mapping[:3, :3], np.diag([6.0, 0.78162497 / 0.91992188, 0.78162497 / 0.91992188]), atol=1e-12)
    np.testing.assert_allclose(frame.source_to_working() @ mapping, np.eye(4), atol=1e-12)


def test_working_frame_for_uses_spacing_and_axcodes_arguments() -> None:
    frame = working_frame_for((10, 20, 30), KITS_AFFINE, spacing_zyx=(1.0, 2.0, 4.0), axcodes=("R", "A", "S"))
    assert nib.aff2axcodes(frame.affine) == ("R", "A", "S")
    assert frame.spacing == pytest.approx((1.0, 2.0, 4.0))
    # R spans the input's k axis (29 * 0.92 mm), A its j axis, S its i axis (9 * 0.5 mm).
    assert frame.shape == (math.floor(29 * 0.91992188) + 1, math.floor(19 * 0.91992188 / 2) + 1, math.floor(4.5 / 4) + 1)


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("S", "L", "A"), ("I", "P", "L")])
def test_custom_axcodes_resample_like_a_general_affine_transform(axcodes: tuple[str, str, str]) -> None:
    array = np.random.default_rng(2).random((6, 7, 8)).astype(np.float32)
    affine = np.diag([-1.2, -0.9, 2.0, 1.0])
    frame = working_frame_for(array.shape, affine, spacing_zyx=(0.7, 1.1, 1.3), axcodes=axcodes)
    mapping = frame.working_to_source()
    expected = ndimage.affine_transform(array, mapping[:3, :3], mapping[:3, 3], output_shape=frame.shape, order=1, mode="nearest")
    np.testing.assert_allclose(to_working_frame(array, frame, order=1), expected, atol=1e-5)
    labels = (expected * 3).astype(np.uint8)
    back = labels_to_source(labels, frame)
    assert back.shape == array.shape


# ---------------------------------------------------------------- orientations of the same real data


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("P", "S", "R")])
def test_same_mask_in_any_axis_aligned_orientation_gives_the_same_working_array(
        thin_slice_mask: nib.Nifti1Image, axcodes: tuple[str, str, str]) -> None:
    labels, affine = real_labels(thin_slice_mask), thin_slice_mask.affine
    other, other_affine = reoriented(labels, affine, axcodes)
    assert nib.aff2axcodes(other_affine) == axcodes
    frame, other_frame = working_frame_for(labels.shape, affine), working_frame_for(other.shape, other_affine)
    assert other_frame.shape == frame.shape
    np.testing.assert_allclose(other_frame.affine, frame.affine, atol=1e-6)
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    np.testing.assert_array_equal(to_working_frame(other, other_frame, order=0, dtype=np.uint8), working)
    ct = labels.astype(np.int16) * 100
    ct_other, _ = reoriented(ct, affine, axcodes)
    np.testing.assert_allclose(to_working_frame(ct_other, other_frame, order=1),
                               to_working_frame(ct, frame, order=1), atol=1e-3)
    back = labels_to_source(working, other_frame)
    assert back.shape == other.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, reoriented(labels_to_source(working, frame), affine, axcodes)[0])


def _look_up_every_voxel(labels_zyx: np.ndarray, frame: WorkingFrame) -> np.ndarray:
    """The plain formulation of going back: every input voxel takes the label of its nearest
    working voxel (per-axis nearest indices over the whole input grid)."""
    transform = nio.ornt_transform(nio.io_orientation(frame.source_affine), nio.io_orientation(frame.affine))
    shape = nio.apply_orientation(np.empty(frame.source_shape, bool), transform).shape
    mapping = np.linalg.inv(frame.affine) @ (frame.source_affine @ nio.inv_ornt_aff(transform, frame.source_shape))
    index = [np.clip(np.floor(np.arange(n) * mapping[a, a] + mapping[a, 3] + 0.5), 0, frame.shape[a] - 1).astype(int)
             for a, n in enumerate(shape)]
    back = nio.ornt_transform(nio.io_orientation(frame.affine), nio.io_orientation(frame.source_affine))
    return nio.apply_orientation(labels_zyx[np.ix_(*index)], back)


@pytest.mark.parametrize("axcodes", [("I", "P", "L"), ("R", "A", "S"), ("P", "S", "R")])
def test_labels_go_back_like_a_look_up_of_every_input_voxel(thin_slice_mask: nib.Nifti1Image,
                                                           axcodes: tuple[str, str, str]) -> None:
    """Only the input voxels in the box of the non-zero labels are looked up (the rest stay 0), and
    the result is in NIfTI's Fortran order; every voxel is what a look-up of all of them gives."""
    labels, affine = reoriented(real_labels(thin_slice_mask), thin_slice_mask.affine, axcodes)
    frame = working_frame_for(labels.shape, affine)
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    one_kidney = working.copy()
    one_kidney[:, :, : working.shape[2] // 2] = 0
    for kept in (working, one_kidney, np.zeros_like(working)):
        back = labels_to_source(kept, frame)
        assert back.flags.f_contiguous and back.dtype == np.uint8
        np.testing.assert_array_equal(back, _look_up_every_voxel(kept, frame))
    assert labels_to_source(one_kidney, frame).any() and not labels_to_source(np.zeros_like(working), frame).any()


def test_as_closest_canonical_ras_gives_the_same_working_array(thin_slice_mask: nib.Nifti1Image) -> None:
    labels = real_labels(thin_slice_mask)
    ras = nib.as_closest_canonical(nib.Nifti1Image(labels, thin_slice_mask.affine))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    frame = working_frame_for(labels.shape, thin_slice_mask.affine)
    ras_frame = working_frame_for(ras.shape, ras.affine)
    np.testing.assert_array_equal(to_working_frame(np.asarray(ras.dataobj), ras_frame, order=0, dtype=np.uint8),
                                  to_working_frame(labels, frame, order=0, dtype=np.uint8))


def test_real_ras_ct_is_resampled_to_an_ipl_frame(example_ct_path: Path) -> None:
    image = read_image(example_ct_path)
    frame = working_frame_for(image.array.shape, image.affine)
    assert nib.aff2axcodes(frame.affine) == ("I", "P", "L")
    # 3 mm RAS (R 122, A 101, S 30) -> I: 30 slices; P: 100 * 3 / 0.7816 -> 384; L: 121 * 3 / 0.7816 -> 465.
    assert frame.shape == (30, 384, 465)
    working = to_working_frame(image.array, frame, order=1)
    assert working.dtype == np.float32
    # The first working voxel is the most right, anterior, superior input voxel; working slice z is
    # input slice S = 29 - z (both 3 mm), so the corner column is the input's, reversed.
    np.testing.assert_array_equal(working[:, 0, 0], image.array[-1, -1, ::-1])
    assert image.array.min() <= working.min() and working.max() <= image.array.max()
    # The separable fast path equals a general (non-separable) linear resampling.
    mapping = frame.working_to_source()
    general = ndimage.affine_transform(image.array.astype(np.float32), mapping[:3, :3], mapping[:3, 3],
                                       output_shape=frame.shape, order=1, mode="nearest")
    np.testing.assert_allclose(working, general, atol=0.05)


def test_oblique_input_keeps_world_positions(thin_slice_mask: nib.Nifti1Image) -> None:
    labels = real_labels(thin_slice_mask)
    oblique = rotated_about_centre(thin_slice_mask.affine, labels.shape, 20.0, axis=1)
    frame = working_frame_for(labels.shape, oblique)
    assert nib.aff2axcodes(frame.affine) == ("I", "P", "L")
    assert frame.spacing == pytest.approx(WORKING_SPACING_ZYX)
    np.testing.assert_array_equal(frame.affine[:3, :3] != 0, KITS_AFFINE[:3, :3] != 0)  # axis-aligned, I,P,L
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    for label in (1, 2):
        source_centroid = index_to_world(np.argwhere(labels == label).mean(axis=0), oblique)
        working_centroid = index_to_world(np.argwhere(working == label).mean(axis=0), frame.affine)
        assert np.abs(source_centroid - working_centroid).max() < 0.5  # mm, well under one voxel
    voxel_mm3 = abs(np.linalg.det(oblique[:3, :3])), abs(np.linalg.det(frame.affine[:3, :3]))
    assert np.count_nonzero(working) * voxel_mm3[1] == pytest.approx(np.count_nonzero(labels) * voxel_mm3[0], rel=0.01)
    back = labels_to_source(working, frame)
    assert back.shape == labels.shape and back.dtype == np.uint8
    assert dice(labels > 0, back > 0) >= KIDNEY_DICE_FLOOR


def test_oblique_labels_come_back_by_their_nearest_working_voxel(thin_slice_mask: nib.Nifti1Image) -> None:
    """Back onto an oblique input grid each voxel takes the label of its nearest working voxel:
    with tumor (2) next to background (0), a linear kernel would invent kidney (1) between them."""
    labels = real_labels(thin_slice_mask)
    tumor = Box.from_mask(labels == 2)  # the tumor and 8 voxels around it (speed)
    start = [max(0, a - 8) for a in tumor.start]
    labels = labels[tuple(slice(a, b + 9) for a, b in zip(start, tumor.stop))]
    affine = thin_slice_mask.affine.copy()
    affine[:3, 3] = (thin_slice_mask.affine @ np.r_[start, 1.0])[:3]
    oblique = rotated_about_centre(affine, labels.shape, 20.0, axis=1)
    frame = working_frame_for(labels.shape, oblique)
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    working[working == 1] = 0  # tumor and background only
    back = labels_to_source(working, frame)
    index = np.indices(labels.shape).reshape(3, -1)
    nearest = np.rint((frame.source_to_working() @ np.r_[index, np.ones((1, index.shape[1]))])[:3]).astype(int)
    nearest = np.clip(nearest, 0, np.array(frame.shape)[:, None] - 1)
    np.testing.assert_array_equal(back, working[tuple(nearest)].reshape(labels.shape))
    assert set(np.unique(back)) == {0, 2}


def test_thin_slice_real_mask_round_trip(thin_slice_mask: nib.Nifti1Image) -> None:
    labels = real_labels(thin_slice_mask)
    frame = working_frame_for(labels.shape, thin_slice_mask.affine)
    assert frame.shape == expected_working_shape(labels.shape, thin_slice_mask.header.get_zooms())
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    assert set(np.unique(working)) <= {0, 1, 2}
    back = labels_to_source(working, frame)
    assert back.shape == labels.shape
    assert dice(labels > 0, back > 0) >= KIDNEY_DICE_FLOOR
    if np.count_nonzero(labels == 2) > LARGE_TUMOR_VOXELS:
        assert dice(labels == 2, back == 2) >= TUMOR_DICE_FLOOR


# ---------------------------------------------------------------- exact cases


@pytest.mark.parametrize("axcodes", [("I", "P", "L"), ("R", "A", "S"), ("L", "P", "S"), ("A", "I", "R")])
def test_working_frame_grid_round_trips_exactly(axcodes: tuple[str, str, str]) -> None:
    rng = np.random.default_rng(3)
    working_grid = np.array([[0, 0, -SPACING[2], 17.3], [0, -SPACING[1], 0, -250.1], [-SPACING[0], 0, 0, 81.0], [0, 0, 0, 1]])
    labels = rng.integers(0, 3, size=(9, 11, 13), dtype=np.uint8)
    source, source_affine = reoriented(labels, working_grid, axcodes)
    frame = working_frame_for(source.shape, source_affine)
    assert frame.shape == labels.shape
    np.testing.assert_allclose(frame.affine, working_grid, atol=1e-9)
    working = to_working_frame(source, frame, order=0, dtype=np.uint8)
    np.testing.assert_array_equal(working, labels)
    np.testing.assert_array_equal(labels_to_source(working, frame), source)
    np.testing.assert_allclose(to_working_frame(source.astype(np.float32), frame, order=1), labels, atol=1e-4)


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_linear_ramp_is_resampled_exactly(degrees: float) -> None:
    shape = (14, 17, 19)
    affine = rotated_about_centre(KITS_AFFINE, shape, degrees, axis=0) if degrees else KITS_AFFINE
    index = np.indices(shape, dtype=np.float64)
    ramp = (-300 + 40.0 * index[0] - 7.0 * index[1] + 3.0 * index[2]).astype(np.float32)
    frame = working_frame_for(shape, affine)
    working = to_working_frame(ramp, frame, order=1)
    grid = np.indices(frame.shape).reshape(3, -1)
    source = (frame.working_to_source() @ np.r_[grid, np.ones((1, grid.shape[1]))])[:3]
    expected = (-300 + 40.0 * source[0] - 7.0 * source[1] + 3.0 * source[2]).reshape(frame.shape)
    inside = (centre_hull_excess(frame).max(axis=1) < 1e-9).reshape(frame.shape)
    assert inside.all() if degrees == 0 else inside.sum() > 500
    np.testing.assert_allclose(working[inside], expected[inside], atol=2e-3)


def test_int16_ct_resamples_to_float32_and_bool_masks_work() -> None:
    ct = (np.indices((6, 7, 8)).sum(axis=0) * 50 - 400).astype(np.int16)
    frame = working_frame_for(ct.shape, KITS_AFFINE)
    working = to_working_frame(ct, frame, order=1)
    assert working.dtype == np.float32 and working.shape == frame.shape
    mask = ct > 0
    working_mask = to_working_frame(mask, frame, order=0, dtype=np.uint8)
    assert working_mask.dtype == np.uint8 and set(np.unique(working_mask)) == {0, 1}
    assert labels_to_source(working_mask.astype(bool), frame).dtype == bool


def test_shape_mismatches_are_refused() -> None:
    frame = working_frame_for((6, 7, 8), KITS_AFFINE)
    with pytest.raises(ValueError, match="does not match"):
        to_working_frame(np.zeros((6, 7, 9)), frame, order=1)
    with pytest.raises(ValueError, match="does not match"):
        labels_to_source(np.zeros((1, 2, 3), np.uint8), frame)


def test_world_index_conversions_are_inverse() -> None:
    affine = rotated_about_centre(KITS_AFFINE, (10, 10, 10), 13.0, axis=2)
    indices = np.array([[0, 0, 0], [9.5, 1.25, -3], [2, 3, 4]])
    world = index_to_world(indices, affine)
    np.testing.assert_allclose(world[0], affine[:3, 3])
    np.testing.assert_allclose(world_to_index(world, affine), indices, atol=1e-9)
    assert index_to_world(np.array([1, 2, 3]), affine).shape == (1, 3)


def test_796_pixel_wide_grid_keeps_y_and_x_apart() -> None:
    """KiTS19 has a case 796 px wide (not among the 100 masks in shared/): y and x must not be mixed up."""
    shape = (8, 512, 796)
    affine = KITS_AFFINE.copy()
    affine[2, 0] = -5.0  # 5 mm slices
    frame = working_frame_for(shape, affine)
    assert frame.shape == expected_working_shape(shape, (5.0, 0.91992188, 0.91992188)) == (12, 602, 936)
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 40:80, 700:790] = 1  # a block near the far end of x only
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    box = Box.from_mask(working)
    assert box is not None and box.start[2] > 800 and box.stop[1] < 100
    back = labels_to_source(working, frame)
    assert back.shape == shape
    assert dice(labels > 0, back > 0) > 0.97


# ---------------------------------------------------------------- properties on random grids


@st.composite
def grids(draw: st.DrawFn, oblique: bool) -> tuple[tuple[int, int, int], np.ndarray, float]:
    """A random grid: shape 2-12, spacing 0.5-5 mm, any axis permutation/flip, and a 2-15 degree tilt if ``oblique``."""
    shape = tuple(draw(st.integers(2, 12)) for _ in range(3))
    spacing = [draw(st.floats(0.5, 5.0)) for _ in range(3)]
    permutation = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    matrix = np.zeros((3, 3))
    matrix[permutation, [0, 1, 2]] = np.array(signs) * spacing
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = [draw(st.floats(-200, 200)) for _ in range(3)]
    degrees = draw(st.floats(2.0, 15.0)) * draw(st.sampled_from([-1, 1])) if oblique else 0.0
    if oblique:
        affine = rotated_about_centre(affine, shape, degrees, axis=draw(st.integers(0, 2)))
    return shape, affine, abs(degrees)


def _check_cover(shape: tuple[int, ...], affine: np.ndarray, frame: WorkingFrame) -> None:
    """The working grid is the smallest one along its axes that holds every input voxel centre."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    along = world_to_index(index_to_world(corners, affine), frame.affine)
    np.testing.assert_allclose(along.min(axis=0), 0.0, atol=1e-6)
    assert np.all(along.max(axis=0) < np.array(frame.shape))
    assert np.all(along.max(axis=0) > np.array(frame.shape) - 1 - 1e-3)


@settings(max_examples=30, deadline=None)
@given(grids(oblique=False))
def test_axis_aligned_working_frame_covers_input_and_round_trips_shape(grid: tuple) -> None:
    shape, affine, _ = grid
    frame = working_frame_for(shape, affine)
    assert nib.aff2axcodes(frame.affine) == WORKING_AXCODES
    assert frame.spacing == pytest.approx(WORKING_SPACING_ZYX)
    _check_cover(shape, affine, frame)
    assert centre_hull_excess(frame).max() < 1e-3  # every working centre inside the input's centre hull
    labels = np.random.default_rng(sum(shape)).integers(0, 3, size=shape, dtype=np.uint8)
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    back = labels_to_source(working, frame)
    assert back.shape == shape and back.dtype == np.uint8
    assert set(np.unique(back)) <= set(np.unique(labels))
    # A working voxel takes the label of its nearest input voxel (exact ties left out).
    source = (frame.working_to_source() @ np.r_[np.indices(frame.shape).reshape(3, -1), np.ones((1, working.size))])[:3]
    untied = np.all(np.abs(source - np.floor(source) - 0.5) > 1e-6, axis=0)
    nearest = np.clip(np.floor(source + 0.5).astype(int).T, 0, np.array(shape) - 1)
    np.testing.assert_array_equal(working.ravel()[untied], labels[tuple(nearest[untied].T)])


@settings(max_examples=25, deadline=None)
@given(grids(oblique=True))
def test_oblique_working_frame_covers_input(grid: tuple) -> None:
    shape, affine, degrees = grid
    frame = working_frame_for(shape, affine)
    assert nib.aff2axcodes(frame.affine) == WORKING_AXCODES
    _check_cover(shape, affine, frame)
    # Corners of the axis-aligned box around a tilted grid stick out of it by at most diameter * sin(tilt).
    diameter = np.linalg.norm(affine[:3, :3] @ (np.array(shape) - 1))
    excess_mm = np.linalg.norm(centre_hull_excess(frame) * np.linalg.norm(affine[:3, :3], axis=0), axis=1)
    assert excess_mm.max() <= diameter * math.sin(math.radians(degrees)) + 1e-6
    labels = np.ones(shape, np.uint8)
    back = labels_to_source(to_working_frame(labels, frame, order=0, dtype=np.uint8), frame)
    assert back.shape == shape and np.all(back == 1)


@settings(max_examples=25, deadline=None)
@given(st.permutations([0, 1, 2]), st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3),
       st.tuples(*[st.integers(2, 12)] * 3), st.tuples(*[st.floats(-300, 300)] * 3))
def test_working_aligned_grids_round_trip_exactly(permutation: list[int], signs: list[float],
                                                  working_shape: tuple[int, int, int], origin: tuple) -> None:
    # A grid whose voxels are working-frame voxels, stored with any axis order and direction.
    ipl = np.array([[0, 0, -1.0], [0, -1.0, 0], [-1.0, 0, 0]]) * SPACING  # columns: I, P, L
    affine = np.eye(4)
    affine[:3, :3] = ipl[:, permutation] * signs
    affine[:3, 3] = origin
    shape = tuple(working_shape[p] for p in permutation)
    labels = np.random.default_rng(len(shape)).integers(0, 3, size=shape, dtype=np.uint8)
    frame = working_frame_for(shape, affine)
    assert frame.shape == tuple(working_shape)
    working = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(WORKING_AXCODES))
    np.testing.assert_array_equal(working, nio.apply_orientation(labels, transform))
    np.testing.assert_array_equal(labels_to_source(working, frame), labels)


# ---------------------------------------------------------------- all 100 real KiTS19 masks


def _shared_cases() -> list[str]:
    masks = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits19" / "masks"
    return sorted(p.name.removesuffix(".nii.gz") for p in masks.glob("case_*.nii.gz"))


@pytest.mark.shared
@pytest.mark.parametrize("case", _shared_cases())
def test_every_kits_mask_working_frame_and_round_trip(shared_masks_dir: Path, case: str) -> None:
    """Per case: frame shape and axes from the full header; round trip on the kidney region.

    Only the kidney region (label box + 10 voxels) is resampled, through the part of the full
    case's working frame that covers it, so the labels are those of the whole-volume round trip
    (``test_kidney_region_round_trip_equals_whole_volume`` checks that) at a fraction of the time.
    """
    image = read_image(shared_masks_dir / f"{case}.nii.gz")
    labels = image.array
    frame = working_frame_for(labels.shape, image.affine)
    assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(frame.affine) == ("I", "P", "L")
    assert frame.shape == expected_working_shape(labels.shape, image.spacing)
    np.testing.assert_allclose(frame.affine[:3, 3], image.affine[:3, 3], atol=1e-6)
    box = Box.from_mask(labels).expanded((20, 20, 20)).clipped(labels.shape)
    part = sub_frame(frame, box)
    crop = labels[box.slices]
    back = labels_to_source(to_working_frame(crop, part, order=0, dtype=np.uint8), part)
    assert back.shape == crop.shape
    assert dice(crop > 0, back > 0) >= KIDNEY_DICE_FLOOR
    if np.count_nonzero(crop == 2) > LARGE_TUMOR_VOXELS:
        assert dice(crop == 2, back == 2) >= TUMOR_DICE_FLOOR


@pytest.mark.shared
def test_kidney_region_round_trip_equals_whole_volume(shared_masks_dir: Path) -> None:
    image = read_image(shared_masks_dir / "case_00002.nii.gz")
    frame = working_frame_for(image.array.shape, image.affine)
    whole = labels_to_source(to_working_frame(image.array, frame, order=0, dtype=np.uint8), frame)
    assert whole.shape == image.array.shape
    box = Box.from_mask(image.array).expanded((20, 20, 20)).clipped(image.array.shape)
    part = sub_frame(frame, box)
    region = labels_to_source(to_working_frame(image.array[box.slices], part, order=0, dtype=np.uint8), part)
    np.testing.assert_array_equal(region, whole[box.slices])
    assert np.count_nonzero(whole) == np.count_nonzero(region)
