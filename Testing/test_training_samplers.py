"""The patch samplers against SPEC §2, on a synthetic case whose boxes are known by hand."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.networks.registry import ROLES
from training_tools.augment import Augmentation
from training_tools.samplers import (
    Stage1Sampler,
    StridePatchSampler,
    TumorPatchSampler,
    TumorSliceSampler,
    centred_start,
    make_sampler,
    random_start,
    read_window,
    stride_counts,
    stride_positions,
    stride_starts,
)
from training_helpers import CROP_SHAPE, CROP_START, TUMOR_CROP_SIZE, TUMOR_CROP_START, write_synthetic_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_synthetic_case(tmp_path_factory.mktemp("cache"), "case_00000")


def test_cached_crop_is_the_ground_truth_box_grown_by_16_128_128(case):
    assert case.crop_box == Box(CROP_START, tuple(s + n - 1 for s, n in zip(CROP_START, CROP_SHAPE)))
    assert case.labels.shape == CROP_SHAPE
    assert case.tumor_crop_box == Box(TUMOR_CROP_START, tuple(s + n - 1 for s, n in zip(TUMOR_CROP_START, TUMOR_CROP_SIZE)))


def test_read_window_zero_pads_outside_the_array_and_the_limit():
    array = np.arange(1, 5 * 6 + 1, dtype=np.float32).reshape(5, 6)
    window = read_window(array, (-1, 4), (3, 4))
    expected = np.zeros((3, 4), np.float32)
    expected[1:, :2] = array[0:2, 4:6]
    np.testing.assert_array_equal(window, expected)
    limited = read_window(array, (0, 0), (5, 6), limit=Box((1, 1, 1), (1, 2, 3)))
    assert np.count_nonzero(limited) == 2 * 3 and limited[1, 1] == array[1, 1] and limited[0, 0] == 0


def test_random_start_stays_inside_or_places_a_short_extent_inside_the_window():
    rng = np.random.default_rng(0)
    inside = {random_start(rng, 100, 64) for _ in range(500)}
    assert min(inside) == 0 and max(inside) == 36
    padded = {random_start(rng, 40, 64) for _ in range(500)}
    assert min(padded) == -24 and max(padded) == 0


def test_stride_grid_has_exactly_200_evenly_spaced_patches_covering_the_crop():
    positions = stride_positions(CROP_SHAPE, (32, 128, 128), 200)
    assert positions.shape == (200, 3)
    assert stride_counts(CROP_SHAPE, (32, 128, 128), 200) == (1, 8, 25)
    assert len({tuple(p) for p in positions}) == 200
    for axis, (length, patch) in enumerate(zip(CROP_SHAPE, (32, 128, 128))):
        starts = np.unique(positions[:, axis])
        if length <= patch:  # z: 30 < 32 -> one centred position, zero-padded
            assert starts.tolist() == [(length - patch) // 2]
            continue
        assert starts[0] == 0 and starts[-1] == length - patch  # first and last patch touch the crop's ends
        steps = np.diff(starts)
        assert steps.max() - steps.min() <= 1  # a regular grid (up to rounding)
        assert steps.max() <= patch  # no gap between neighbouring patches


def test_stride_starts_and_counts_rules():
    assert stride_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert stride_starts(3, 4, 2).tolist() == [-1, -1]
    assert int(np.prod(stride_counts((200, 400, 400), (32, 128, 128), 200))) == 200


def test_kt_and_k_samplers_give_the_200_stride_patches_with_their_targets(case):
    for role, label_set in (("KT", (1, 2)), ("K1", (1,)), ("K2", (1,))):
        sampler = make_sampler(ROLES[role])
        assert isinstance(sampler, StridePatchSampler) and sampler.patch == (32, 128, 128)
        assert sampler.count(case) == 200
        start = sampler.positions(case)[57]
        image, seg, reg = sampler.sample(case, 57, np.random.default_rng(0))
        assert image.shape == seg.shape == reg.shape == (1, 32, 128, 128)
        window = tuple(slice(s, s + n) for s, n in zip(np.maximum(start, 0), (32, 128, 128)))
        labels = case.labels[window]
        inner = (slice(1, 31), slice(None), slice(None))  # z start -1: first slice and last (30) are padding
        np.testing.assert_array_equal(seg[0][inner], np.isin(labels, label_set))
        np.testing.assert_array_equal(image[0][inner], case.image[window].astype(np.float32))
        assert not image[0, 0].any() and not image[0, 31].any()
        channel = 0 if role == "KT" else 1
        np.testing.assert_array_equal(reg[0][inner], case.boundary[channel][window].astype(np.float32))


def test_tumor_sampler_centres_its_100_patches_uniformly_in_the_expanded_tumor_box(case):
    sampler = make_sampler(ROLES["T-vnet"], tumor_padding="zeros")  # zeros show where the box lies
    assert isinstance(sampler, TumorPatchSampler) and sampler.patch == (32, 64, 64)
    assert sampler.count(case) == 100
    box = case.tumor_crop_box
    box_voxels = int(np.prod(TUMOR_CROP_SIZE))
    for index in range(100):
        image, seg, reg = sampler.sample(case, index, np.random.default_rng(index))
        assert image.shape == seg.shape == reg.shape == (1, 32, 64, 64)
        start = centred_start(box, (32, 64, 64), np.random.default_rng(index))  # the same draw
        centre = [s + p // 2 for s, p in zip(start, (32, 64, 64))]
        assert all(a <= c <= b for a, c, b in zip(box.start, centre, box.stop))
        assert np.count_nonzero(image) <= box_voxels and np.count_nonzero(reg) <= box_voxels
        assert seg.sum() > 0  # the box is smaller than the patch: some tumor in every window


def test_the_tumor_falls_anywhere_in_the_window_as_the_paper_draws_it(case):
    """The tumor's place in the window is the window centre's uniform draw over the box mirrored:
    along each axis its spread is the box's (std = size / sqrt(12)), not the patch's room."""
    sampler = make_sampler(ROLES["T-vnet"])
    rng = np.random.default_rng(5)
    centroids = []
    for index in range(600):
        seg = sampler.sample(case, index % 100, rng)[1][0]
        centroids.append(np.argwhere(seg > 0).mean(axis=0))
    spread = np.std(centroids, axis=0)
    expected = np.array(TUMOR_CROP_SIZE) / np.sqrt(12.0)
    np.testing.assert_allclose(spread, expected, rtol=0.15)
    patch_centre = np.array([16, 32, 32])
    np.testing.assert_allclose(np.mean(centroids, axis=0), patch_centre, atol=2.5)


def test_image_padding_fills_the_tumor_patch_from_the_crop_by_default(case):
    zeros = make_sampler(ROLES["T-vnet"], tumor_padding="zeros")
    image_padded = make_sampler(ROLES["T-vnet"])  # SPEC, revised: the image's own voxels
    for index in range(20):
        plain = zeros.sample(case, index, np.random.default_rng(index))
        padded = image_padded.sample(case, index, np.random.default_rng(index))  # the same window
        inside = plain[0] != 0
        np.testing.assert_array_equal(padded[0][inside], plain[0][inside])  # the box itself is unchanged
        assert np.count_nonzero(padded[0]) > np.count_nonzero(plain[0])  # and real voxels surround it
        np.testing.assert_array_equal(padded[1], plain[1])  # all the tumor lies in its box either way
    window = image_padded.sample(case, 0, np.random.default_rng(0))[0][0]
    values = set(np.unique(np.asarray(case.image)).tolist())
    assert set(np.unique(window).tolist()) <= values | {0.0}
    with pytest.raises(ValueError, match="padding"):
        TumorPatchSampler(padding="mirror")


def test_tumor_sampler_skips_cases_without_tumor(tmp_path):
    from training_helpers import write_synthetic_case as write

    case = write(tmp_path, "case_00001")
    case.meta["tumor_crop_box"] = None
    assert TumorPatchSampler().count(case) == 0


def test_inference_share_of_tumor_patches_is_centred_anywhere_in_the_crop(case):
    sampler = make_sampler(ROLES["T-unet"], inference_fraction=0.4, tumor_padding="zeros")
    assert sampler.count(case) == 100
    box_voxels = int(np.prod(TUMOR_CROP_SIZE))
    crop = Box.full(case.labels.shape)
    without_tumor, other_kidney = 0, 0
    for index in range(100):
        image, seg, _ = sampler.sample(case, index, np.random.default_rng(index))
        if index < 60:  # the paper's windows: the zero frame shows them limited to the tumor box
            assert np.count_nonzero(image) <= box_voxels and seg.sum() > 0
            continue
        start = centred_start(crop, (32, 64, 64), np.random.default_rng(index))  # the same draw
        assert all(0 <= s + p // 2 < n for s, p, n in zip(start, (32, 64, 64), case.labels.shape))
        assert np.count_nonzero(image) > box_voxels  # the crop's own image, not a frame
        without_tumor += seg.sum() == 0
        window = read_window(case.labels, start, (32, 64, 64))
        other_kidney += bool((window[..., 32:] == 1).any() and start[2] > 120)
    assert without_tumor >= 20  # most of the crop holds no tumor: so do most of these windows
    assert other_kidney >= 1  # and some see the kidney without tumor
    with pytest.raises(ValueError, match="inference_fraction"):
        TumorPatchSampler(inference_fraction=1.5)


def test_a_healthy_case_gives_only_inference_windows_without_tumor(tmp_path):
    from training_helpers import write_synthetic_case as write

    case = write(tmp_path, "case_00001")
    case.meta["tumor_crop_box"] = None
    for name in ("axial", "coronal", "sagittal"):
        case.meta["tumor_slices"][name] = []
    assert TumorPatchSampler().count(case) == 0  # the paper's sampler has nothing to draw
    sampler = TumorPatchSampler(inference_fraction=0.5)
    assert sampler.count(case) == 50
    image, seg, _ = sampler.sample(case, 0, np.random.default_rng(0))
    assert image.shape == (1, 32, 64, 64) and np.count_nonzero(image) > 0
    slices = TumorSliceSampler("axial", inference_fraction=0.5)
    assert slices.count(case) == round(0.5 * case.labels.shape[0])
    assert TumorSliceSampler("axial").count(case) == 0


def test_2d_inference_share_adds_slices_from_the_whole_crop(case):
    sampler = make_sampler(ROLES["T2D-co-dice"], inference_fraction=0.5)
    tumor_slices = case.tumor_slices("coronal")
    assert sampler.count(case) == 2 * len(tumor_slices)  # as many again, drawn from all 168 coronal slices
    rng = np.random.default_rng(4)
    empty = [sampler.sample(case, i, rng)[1].sum() == 0 for i in range(sampler.count(case))]
    assert not any(empty[:len(tumor_slices)])  # the paper's slices all hold tumor
    assert sum(empty[len(tumor_slices):]) >= len(tumor_slices) // 2  # most of the crop's slices hold none


def test_2d_samplers_use_only_tumor_slices_cropped_or_padded_to_256(case):
    expected_slices = {"axial": list(range(12, 16)), "coronal": list(range(74, 84)), "sagittal": list(range(70, 82))}
    for role in ("T2D-ax-dice", "T2D-co-dice", "T2D-sa-bce"):
        sampler = make_sampler(ROLES[role])
        assert isinstance(sampler, TumorSliceSampler)
        assert case.tumor_slices(sampler.axis) == expected_slices[sampler.axis]
        assert sampler.count(case) == len(expected_slices[sampler.axis])
        rng = np.random.default_rng(2)
        for index in range(sampler.count(case)):
            image, seg, reg = sampler.sample(case, index, rng)
            assert image.shape == seg.shape == reg.shape == (1, 256, 256)
            assert seg.sum() > 0  # every sample holds tumor
    # Axial slices are 168 x 300: y zero-padded to 256, x a random 256 window -> 168 x 256 real pixels.
    image, seg, _ = TumorSliceSampler("axial").sample(case, 0, np.random.default_rng(3))
    assert np.count_nonzero(image) == 168 * 256
    assert seg.sum() == 10 * 12


def test_stage1_sampler_draws_random_16_64_64_patches_of_the_x4_grid(case):
    sampler = make_sampler(ROLES["stage1"])
    assert isinstance(sampler, Stage1Sampler) and sampler.patch == (16, 64, 64) and sampler.count(case) == 100
    down = case.image_down.shape
    assert down == (10, 55, 75)  # ceil(40 / 4), ceil(220 / 4), ceil(300 / 4)
    for index in range(20):
        image, seg, reg = sampler.sample(case, index, np.random.default_rng(index))
        assert image.shape == seg.shape == (1, 16, 64, 64) and reg.shape == (5, 16, 64, 64)
        assert np.count_nonzero(image) == 10 * 55 * 64  # z and y padded, x a window of the whole volume
        replay = np.random.default_rng(index)
        start = [random_start(replay, n, p) for n, p in zip(down, (16, 64, 64))]
        np.testing.assert_array_equal(seg[0], read_window(case.foreground_down, start, (16, 64, 64)))
        np.testing.assert_array_equal(reg, read_window(case.landmarks_down, start, (16, 64, 64)))
        assert reg.max() <= 1.0


def test_augmentation_is_off_by_default_and_flips_landmark_channels():
    from training_tools.configs import all_configs

    assert all(c.augmentation is None for c in all_configs().values())
    image = np.zeros((1, 2, 2, 4), np.float32)
    reg = np.stack([np.full((2, 2, 4), c, np.float32) for c in range(5)])
    reg[:, :, :, 0] += 10
    _, _, flipped = Augmentation(scale=0, shift=0, noise=0, flip_x=1.0)((image, image.copy(), reg), np.random.default_rng(0))
    assert flipped[0, 0, 0, 3] == 12 and flipped[2, 0, 0, 3] == 10  # left <-> right swapped and mirrored


def test_2d_regression_target_is_the_tumor_boundary_of_the_same_window(case):
    """SPEC §2: every 2D U-Net regresses the tumor's soft boundary (σ 2, per axial slice), cut
    from the crop along the model's axis like its image: not the kidney's."""
    from KidneyTumorSegLib.targets import task_boundary_target

    boundary = task_boundary_target(np.asarray(case.labels) == 2, "tumor")  # [z, y, x] of the crop
    for axis, array_axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        sampler = TumorSliceSampler(axis)
        for index in range(sampler.count(case)):
            _, seg, reg = sampler.sample(case, index, np.random.default_rng(index))
            plane = np.take(boundary, case.tumor_slices(axis)[index], axis=array_axis)
            replay = np.random.default_rng(index)
            start = [random_start(replay, n, p) for n, p in zip(plane.shape, (256, 256))]
            np.testing.assert_allclose(reg[0], read_window(plane, start, (256, 256)), atol=1e-3)
            assert reg[0][seg[0] > 0].max() > 0.5 and reg[0][seg[0] == 0].max() > 0.5  # rings the tumor's edge


def test_2d_window_is_drawn_at_random_over_the_whole_slice(case):
    """Axial slices of the crop are 168 x 300: each draw places the 168 rows anywhere in the 256
    (88 free) and takes a random 256 of the 300 columns (44 free)."""
    sampler = TumorSliceSampler("axial")
    starts = set()
    for seed in range(20):
        _, seg, _ = sampler.sample(case, 0, np.random.default_rng(seed))
        rows, columns = np.nonzero(seg[0])
        starts.add((90 - CROP_START[1] - rows.min(), 70 - CROP_START[2] - columns.min()))  # the tumor's first row and column
    assert len({y for y, _ in starts}) > 5 and len({x for _, x in starts}) > 5
    assert all(-88 <= y <= 0 and 0 <= x <= 44 for y, x in starts)
