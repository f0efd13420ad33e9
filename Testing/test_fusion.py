"""Tests of KidneyTumorSegLib.fusion: ensemble label assignment and per-slice tumor clean-up."""
from __future__ import annotations

import dataclasses
import time
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from KidneyTumorSegLib import fusion
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS

STRICT = dataclasses.replace(DEFAULT_SETTINGS, fusion=dataclasses.replace(DEFAULT_SETTINGS.fusion, kt_only_label=0))


def _voxel(value: float) -> np.ndarray:
    return np.full((1, 1, 1), value, dtype=np.float32)


def _label(kt: float, k: float | None, ts: list[float], settings=DEFAULT_SETTINGS) -> int:
    k_prob = None if k is None else _voxel(k)
    return int(fusion.assign_labels(_voxel(kt), k_prob, [_voxel(t) for t in ts], settings)[0, 0, 0])


@pytest.mark.parametrize("kt, k, ts, expected", [
    (0.9, 0.9, [0.1, 0.1, 0.1], 1),  # KT and K -> kidney
    (0.9, 0.9, [0.1, 0.9, 0.1], 2),  # any T -> tumor, and tumor wins over kidney
    (0.9, 0.1, [0.9], 2),  # KT and T -> tumor
    (0.1, 0.9, [0.9, 0.9, 0.9], 0),  # KT = 0 -> background whatever K and T say
    (0.9, 0.1, [0.1, 0.1, 0.1], 1),  # [D] KT only -> kidney
    (0.5, 0.5, [0.1], 1),  # p = 0.5 counts as 1
    (0.4999, 0.9, [0.9], 0),  # p = 0.4999 does not
    (0.9, 0.1, [0.5], 2),
    (0.9, 0.1, [0.4999], 1),
    (0.9, None, [], 1),  # no K models, no T models
    (0.9, None, [0.7], 2),
])
def test_assign_labels_rules(kt, k, ts, expected):
    assert _label(kt, k, ts) == expected


@pytest.mark.parametrize("kt, k, ts, expected", [
    (0.9, 0.1, [0.1], 0),  # KT only -> background in strict consensus
    (0.9, None, [], 0),
    (0.9, 0.9, [0.1], 1),
    (0.9, 0.1, [0.9], 2),
    (0.1, 0.9, [0.9], 0),
])
def test_assign_labels_strict_consensus(kt, k, ts, expected):
    assert _label(kt, k, ts, STRICT) == expected


def test_k_changes_no_label_under_the_default():
    """Why stage 2 skips K1/K2 unless in strict consensus: the labels are the same without K."""
    rng = np.random.default_rng(3)
    kt, k, t1, t2 = (rng.random((6, 16, 16)).astype(np.float16) for _ in range(4))
    np.testing.assert_array_equal(fusion.assign_labels(kt, k, [t1, t2]), fusion.assign_labels(kt, None, [t1, t2]))
    strict = dataclasses.replace(DEFAULT_SETTINGS, fusion=dataclasses.replace(DEFAULT_SETTINGS.fusion, kt_only_label=0))
    assert not np.array_equal(fusion.assign_labels(kt, k, [t1, t2], strict), fusion.assign_labels(kt, None, [t1, t2], strict))


def test_assign_labels_threshold_on_k_in_strict_mode():
    assert _label(0.9, 0.5, [], STRICT) == 1
    assert _label(0.9, 0.4999, [], STRICT) == 0


def test_assign_labels_volume_float16_and_dtype():
    kt = np.array([[[0.0, 0.6, 0.6, 0.6]]], dtype=np.float16)
    k = np.array([[[0.9, 0.9, 0.0, 0.2]]], dtype=np.float16)
    t = np.array([[[0.9, 0.0, 0.0, 0.8]]], dtype=np.float16)
    labels = fusion.assign_labels(kt, k, [t])
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[[0, 1, 1, 2]]])


def test_assign_labels_rejects_mismatched_shapes_and_bad_setting():
    with pytest.raises(ValueError):
        fusion.assign_labels(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), [])
    bad = dataclasses.replace(DEFAULT_SETTINGS, fusion=dataclasses.replace(DEFAULT_SETTINGS.fusion, kt_only_label=2))
    with pytest.raises(ValueError):
        fusion.assign_labels(np.zeros((2, 2, 2)), None, [], bad)


def test_average_probabilities_float16_mean_in_float32():
    a = np.array([0.2, 1.0, 0.0], dtype=np.float16)
    b = np.array([0.6, 0.5, 0.0], dtype=np.float32)
    mean = fusion.average_probabilities([a, b])
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, [(np.float32(np.float16(0.2)) + 0.6) / 2, 0.75, 0.0], rtol=1e-6)


def test_average_probabilities_makes_no_float64_copy():
    probs = [np.full((64, 64, 64), 0.25 * i, dtype=np.float16) for i in range(4)]
    tracemalloc.start()
    mean = fusion.average_probabilities(probs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.25 * mean.nbytes  # the float32 result plus small buffers, no float64 volume
    np.testing.assert_allclose(mean, 0.375)


def test_average_probabilities_rejects_empty_and_mismatched():
    with pytest.raises(ValueError):
        fusion.average_probabilities([])
    with pytest.raises(ValueError):
        fusion.average_probabilities([np.zeros((2, 2)), np.zeros((2, 3))])


# --- tumor clean-up ---------------------------------------------------------------------------

def _with_tumor(shape, *rectangles) -> np.ndarray:
    labels = np.ones(shape, dtype=np.uint8)  # all kidney (inside KT)
    for z, ys, xs in rectangles:
        labels[z, ys, xs] = 2
    return labels


@pytest.mark.parametrize("height, width, kept", [(5, 13, True), (8, 8, False)])  # 65 and 64 pixels
def test_clean_tumor_keeps_more_than_64_pixels(height, width, kept):
    labels = _with_tumor((1, 20, 20), (0, slice(2, 2 + height), slice(2, 2 + width)))
    cleaned = fusion.clean_tumor(labels)
    assert np.count_nonzero(labels == 2) == (65 if kept else 64)
    assert np.count_nonzero(cleaned == 2) == (65 if kept else 0)
    assert np.count_nonzero(cleaned == 1) == labels.size - np.count_nonzero(cleaned == 2)  # removed -> kidney


def test_clean_tumor_components_are_8_connected():
    labels = _with_tumor((1, 30, 30), (0, slice(0, 5), slice(0, 8)), (0, slice(5, 10), slice(8, 13)))
    # 40 + 25 = 65 pixels joined only by the corner (4, 7)-(5, 8): one component, kept
    np.testing.assert_array_equal(fusion.clean_tumor(labels), labels)


def test_clean_tumor_counts_each_slice_on_its_own():
    labels = _with_tumor((3, 20, 20), (slice(0, 2), slice(2, 8), slice(2, 12)),  # 60 px per slice
                         (2, slice(2, 8), slice(2, 13)))  # 66 px in slice 2
    cleaned = fusion.clean_tumor(labels)
    assert not np.any(cleaned[:2] == 2)  # 120 voxels in 3D, but 60 per slice
    np.testing.assert_array_equal(cleaned[2], labels[2])


def test_clean_tumor_removed_label_setting_and_background_untouched():
    labels = np.zeros((1, 10, 10), dtype=np.uint8)
    labels[0, 1:4, 1:4] = 2
    labels[0, 6:9, 6:9] = 1
    settings = dataclasses.replace(DEFAULT_SETTINGS,
                                   fusion=dataclasses.replace(DEFAULT_SETTINGS.fusion, removed_tumor_label=0))
    cleaned = fusion.clean_tumor(labels, settings)
    assert not np.any(cleaned == 2)
    assert np.count_nonzero(cleaned == 1) == 9 and np.count_nonzero(cleaned) == 9
    np.testing.assert_array_equal(labels[0, 1:4, 1:4], 2)  # the input is not modified


def test_clean_tumor_matches_slice_by_slice_reference():
    rng = np.random.default_rng(0)
    tumor = ndimage.binary_opening(rng.random((6, 80, 80)) < 0.55, structure=np.ones((1, 2, 2)))
    labels = np.where(tumor, 2, 1).astype(np.uint8)
    expected = labels.copy()
    for z in range(labels.shape[0]):
        components, _ = ndimage.label(labels[z] == 2, structure=np.ones((3, 3)))
        sizes = np.bincount(components.ravel())
        small = np.flatnonzero(sizes <= 64)
        expected[z][np.isin(components, small[small > 0])] = 1
    assert 0 < np.count_nonzero(expected == 2) < np.count_nonzero(labels == 2)
    np.testing.assert_array_equal(fusion.clean_tumor(labels), expected)


def test_clean_tumor_is_fast_on_a_stage2_crop():
    rng = np.random.default_rng(1)
    labels = np.where(rng.random((200, 300, 300)) < 0.3, 2, 1).astype(np.uint8)
    start = time.perf_counter()
    fusion.clean_tumor(labels)
    assert time.perf_counter() - start < 10.0
