"""``prepare``: KiTS19-layout cases -> working-frame cache with every target; re-runs skip finished cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.preprocessing import downsample_max, downsample_mean
from KidneyTumorSegLib.targets import landmark_heatmaps, task_boundary_target
from training_tools.cache import (
    BOUNDARY_CHANNELS,
    CachedCase,
    case_arrays,
    find_kits_cases,
    open_cache,
    prepare_cache,
    tumor_slices,
    working_case,
    write_case,
)
from training_tools.cli import main
from training_helpers import write_kits_case


@pytest.fixture(scope="module")
def kits_folder(real_kits_crops, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kits")
    for index, mask in enumerate(list(real_kits_crops.values())[:2]):
        write_kits_case(folder, f"case_{index:05d}", mask, seed=index)
    return folder


@pytest.fixture(scope="module")
def cache(kits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    assert main(["prepare", "--data", str(kits_folder), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    return out


def test_prepare_caches_every_case_with_targets_equal_to_the_engines(kits_folder, cache):
    cases = open_cache(cache)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001"]
    assert json.loads((cache / "cache.json").read_text())["boundary_channels"] == list(BOUNDARY_CHANNELS)
    for case, kits in zip(cases, find_kits_cases(kits_folder)):
        normalized, labels = working_case(kits.imaging, kits.segmentation)
        assert case.meta["working_shape"] == list(labels.shape)
        assert 0.0 <= normalized.min() and normalized.max() <= 1.0
        crop = Box.from_mask(labels > 0).expanded((16, 128, 128)).clipped(labels.shape)
        assert case.crop_box == crop
        np.testing.assert_array_equal(case.labels, labels[crop.slices])
        np.testing.assert_array_equal(case.image, normalized[crop.slices].astype(np.float16))
        # Targets on the crop equal those computed on the whole working frame, then cropped.
        for channel, (mask, task) in enumerate(((labels > 0, "kidney_tumor"), (labels == 1, "kidney"), (labels == 2, "tumor"))):
            whole = task_boundary_target(mask, task)[crop.slices]
            np.testing.assert_allclose(case.boundary[channel].astype(np.float32), whole, atol=1e-3)
        down = downsample_max((labels > 0).astype(np.uint8))
        np.testing.assert_array_equal(case.foreground_down, down)
        np.testing.assert_allclose(case.image_down.astype(np.float32), downsample_mean(normalized), atol=1e-3)
        np.testing.assert_allclose(case.landmarks_down.astype(np.float32), landmark_heatmaps(down), atol=1e-3)
        assert case.meta["tumor_slices"] == tumor_slices(labels[crop.slices])
        assert case.meta["tumor_slices"]["axial"], "the real crops hold tumor"


def test_prepare_again_skips_finished_cases_and_redoes_incomplete_ones(kits_folder, cache):
    finished = cache / "case_00000" / "meta.json"
    before = finished.stat().st_mtime_ns
    incomplete = cache / "case_00001" / "meta.json"
    incomplete.unlink()  # as if the first run had been interrupted before the case was complete
    (cache / ".case_00002.abc.partial").mkdir()  # a stale temporary folder
    assert prepare_cache(kits_folder, cache, workers=1, progress=False) == ["case_00000", "case_00001"]
    assert finished.stat().st_mtime_ns == before
    assert incomplete.is_file()
    assert not (cache / ".case_00002.abc.partial").exists()


def test_labels_reach_the_working_frame_by_nearest_neighbour(thin_slice_mask):
    """The real 0.5 mm mask, its kidney removed so tumor (2) meets background (0): resampled to
    3 mm slices, every working voxel keeps a label of its nearest input voxel, never a blend (1)."""
    from KidneyTumorSegLib.geometry import to_working_frame, working_frame_for
    from training_tools.cache import working_arrays

    labels = np.asarray(thin_slice_mask.dataobj, dtype=np.uint8).copy()
    tumor = Box.from_mask(labels == 2)
    start = [max(0, a - 8) for a in tumor.start]  # the tumor and 8 voxels around it (speed)
    labels = np.ascontiguousarray(labels[tuple(slice(a, b + 9) for a, b in zip(start, tumor.stop))])
    labels[labels == 1] = 0
    affine = thin_slice_mask.affine.copy()
    affine[:3, 3] = (thin_slice_mask.affine @ np.r_[start, 1.0])[:3]
    _, working = working_arrays(labels.astype(np.int16), labels, affine)
    assert set(np.unique(working)) == {0, 2}
    frame = working_frame_for(labels.shape, affine)
    np.testing.assert_array_equal(working, to_working_frame(labels, frame, order=0, dtype=np.uint8))


def test_a_volume_without_kidney_caches_stage_1_only_and_stage_2_skips_it(tmp_path):
    from KidneyTumorSegLib.networks.registry import ROLES
    from training_helpers import synthetic_image
    from training_tools.samplers import make_sampler

    labels = np.zeros((24, 64, 80), np.uint8)
    with pytest.raises(ValueError, match="no kidney or tumor"):
        case_arrays(synthetic_image(labels), labels)
    arrays, meta = case_arrays(synthetic_image(labels), labels, allow_empty=True)
    assert sorted(arrays) == ["foreground_down", "image_down", "landmarks_down"]
    assert not arrays["foreground_down"].any() and not arrays["landmarks_down"].any()
    assert meta["crop_box"] is None and meta["voxels"] == {"kidney": 0, "tumor": 0}
    case = CachedCase(write_case(tmp_path, "case_00007", arrays, meta))
    assert not case.has_kidney
    counts = {role: make_sampler(spec).count(case) for role, spec in ROLES.items()}
    assert counts.pop("stage1") == 100 and set(counts.values()) == {0}
