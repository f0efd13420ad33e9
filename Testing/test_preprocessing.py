"""Tests of preprocessing: HU window [-200, 300] -> [0, 1] and x4 block down-sampling (mean / max)."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.preprocessing import downsample_max, downsample_mean, normalize_hu
from KidneyTumorSegLib.settings import GeometrySettings, IntensitySettings

# ---------------------------------------------------------------- normalize_hu


def test_hu_window_is_spec_value() -> None:
    assert (IntensitySettings().hu_min, IntensitySettings().hu_max) == (-200.0, 300.0)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_normalize_hu_maps_window_onto_unit_interval(dtype: type) -> None:
    ct = np.array([-3024, -1000, -201, -200, -199, 0, 50, 299, 300, 301, 3071], dtype=dtype).reshape(1, 1, -1)
    out = normalize_hu(ct)
    assert out.dtype == np.float32 and out.shape == ct.shape
    expected = [0, 0, 0, 0, 1 / 500, 0.4, 0.5, 499 / 500, 1, 1, 1]
    np.testing.assert_allclose(out.ravel(), expected, atol=1e-6)
    assert out.ravel()[3] == 0.0 and out.ravel()[8] == 1.0  # -200 -> exactly 0, 300 -> exactly 1
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_normalize_hu_leaves_its_input_alone() -> None:
    ct = np.array([[[-500.0, 100.0, 800.0]]], np.float32)
    kept = ct.copy()
    out = normalize_hu(ct)
    np.testing.assert_array_equal(ct, kept)
    assert out is not ct


def test_normalize_hu_uses_the_settings_window() -> None:
    out = normalize_hu(np.array([[[0.0, 50.0, 100.0, 200.0]]]), IntensitySettings(hu_min=0.0, hu_max=100.0))
    np.testing.assert_allclose(out.ravel(), [0.0, 0.5, 1.0, 1.0])


# ---------------------------------------------------------------- downsample_mean


def test_downsampling_factor_is_four() -> None:
    assert GeometrySettings().downsample_factor == 4


def test_downsample_mean_of_a_ramp_with_a_trailing_partial_block() -> None:
    # Length 5 along z: blocks 0..3 and 4 (partial); 8 along y: 0..3, 4..7; 6 along x: 0..3, 4..5.
    z = np.arange(5, dtype=np.float32)
    volume = np.broadcast_to(z[:, None, None], (5, 8, 6))
    out = downsample_mean(volume)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], 1.5)  # mean of 0, 1, 2, 3
    np.testing.assert_array_equal(out[1], 4.0)  # the partial block: voxel 4 alone


def test_downsample_mean_by_hand_on_every_axis() -> None:
    volume = np.arange(5 * 6 * 7, dtype=np.float64).reshape(5, 6, 7)
    out = downsample_mean(volume)
    assert out.shape == (2, 2, 2)
    for bz, z in enumerate((slice(0, 4), slice(4, 5))):
        for by, y in enumerate((slice(0, 4), slice(4, 6))):
            for bx, x in enumerate((slice(0, 4), slice(4, 7))):
                assert out[bz, by, bx] == pytest.approx(volume[z, y, x].mean(), rel=1e-6)
    # Voxel (i, j, k) holds 42 i + 7 j + k: the block mean is that of the block's mean indices.
    assert out[1, 1, 1] == pytest.approx(42 * 4 + 7 * 4.5 + 5)


def test_downsample_mean_exact_multiple_and_other_factor() -> None:
    volume = np.zeros((8, 8, 8), np.int16)
    volume[4:, :4, 4:] = 100
    volume[0, 0, 0] = 64
    out = downsample_mean(volume)
    np.testing.assert_array_equal(out, [[[1, 0], [0, 0]], [[0, 100], [0, 0]]])
    two = downsample_mean(np.arange(27, dtype=np.float32).reshape(3, 3, 3), factor=2)
    assert two.shape == (2, 2, 2)
    assert two[1, 1, 1] == 26.0 and two[0, 0, 0] == pytest.approx(np.mean([0, 1, 3, 4, 9, 10, 12, 13]))


# ---------------------------------------------------------------- downsample_max


def test_downsample_max_is_any_foreground_per_block() -> None:
    mask = np.zeros((5, 9, 4), np.uint8)
    mask[4, 8, 3] = 1  # only in the trailing partial blocks of z (4) and y (8)
    mask[1, 2, 0] = 1
    out = downsample_max(mask)
    assert out.shape == (2, 3, 1) and out.dtype == np.uint8
    expected = np.zeros((2, 3, 1), np.uint8)
    expected[1, 2, 0] = 1
    expected[0, 0, 0] = 1
    np.testing.assert_array_equal(out, expected)


def test_downsample_max_keeps_bool_and_label_values() -> None:
    mask = np.zeros((4, 4, 8), bool)
    mask[3, 3, 7] = True
    out = downsample_max(mask)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [[[False, True]]])
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0], labels[3, 3, 3] = 1, 2
    assert downsample_max(labels).tolist() == [[[2]]]


def test_downsample_max_agrees_with_mean_on_foreground() -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((9, 13, 10)) > 0.97
    np.testing.assert_array_equal(downsample_max(mask), downsample_mean(mask.astype(np.float32)) > 0)


def test_normalize_hu_of_an_int16_ct_makes_no_float64_copy() -> None:
    import tracemalloc

    ct = (np.arange(64 * 128 * 128) % 2000 - 1000).astype(np.int16).reshape(64, 128, 128)
    tracemalloc.start()
    try:
        out = normalize_hu(ct)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * out.nbytes  # the float32 result only (a float64 copy would be 3 x)
