"""Stage 1's foreground as the support of stage 2's components (support.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS, MethodSettings
from KidneyTumorSegLib.preprocessing import downsample_max
from KidneyTumorSegLib.support import (grown_support, keep_supported, stage1_support, support_in_box, supported_part,
                                      trim_region)


def _stage1(**changes) -> MethodSettings:
    return dataclasses.replace(DEFAULT_SETTINGS, stage1=dataclasses.replace(DEFAULT_SETTINGS.stage1, **changes))


def test_stage1_support_drops_islands_below_a_tenth_of_the_largest() -> None:
    probability = np.zeros((8, 40, 40), np.float32)
    probability[1:5, 2:12, 2:12] = 0.9  # 400 voxels: the largest
    probability[1:5, 2:12, 20:30] = 0.5  # 400 voxels at exactly the threshold
    probability[6:8, 30:35, 30:34] = 0.8  # 40 voxels = 10 %: kept
    probability[6:8, 2:5, 30:36] = 0.8  # 36 voxels < 10 %: dropped
    probability[6, 38, 2] = 0.49  # below the threshold
    many = _stage1(support_max_components=10)
    support = stage1_support(probability, many)
    expected = probability >= 0.5
    expected[6:8, 2:5, 30:36] = False
    np.testing.assert_array_equal(support, expected)
    assert stage1_support(probability, _stage1(support_min_fraction=0.05, support_max_components=10))[6:8, 2:5, 30:36].all()


def test_stage1_support_keeps_the_two_largest_components() -> None:
    """Two kidneys and a third large look-alike (the femoral heads of a long scan): two count."""
    probability = np.zeros((8, 40, 60), np.float32)
    probability[0:4, 2:12, 2:12] = 0.9  # 400 voxels
    probability[0:4, 2:12, 20:29] = 0.9  # 360 voxels
    probability[5:8, 30:40, 40:50] = 0.9  # 300 voxels: third largest, dropped
    support = stage1_support(probability)
    assert support[0:4, 2:12, 2:12].all() and support[0:4, 2:12, 20:29].all() and not support[5:8, 30:40, 40:50].any()
    np.testing.assert_array_equal(stage1_support(probability, _stage1(support_max_components=3)), probability >= 0.5)


def test_stage1_support_components_are_26_connected() -> None:
    probability = np.zeros((6, 20, 20), np.float32)
    probability[0:3, 0:10, 0:10] = 1.0  # 300 voxels
    probability[3, 10, 10] = 1.0  # touches the block's corner only: part of it
    probability[5, 18, 18] = 1.0  # alone: 1 voxel < 30
    support = stage1_support(probability)
    assert support[3, 10, 10] and not support[5, 18, 18]


def test_empty_stage1_gives_empty_support() -> None:
    assert not stage1_support(np.zeros((4, 8, 8), np.float32)).any()


def test_support_in_box_reads_each_voxels_block() -> None:
    support_down = np.zeros((3, 4, 5), bool)
    support_down[1, 2, 3] = True  # working voxels z 4..7, y 8..11, x 12..15
    box = Box((3, 7, 11), (8, 12, 16))
    seen = support_in_box(support_down, box, 4)
    assert seen.shape == box.size
    expected = np.zeros(box.size, bool)
    expected[1:5, 1:5, 1:5] = True
    np.testing.assert_array_equal(seen, expected)


def test_support_in_box_past_the_grid_reads_false() -> None:
    support_down = np.ones((2, 2, 2), bool)  # covers working voxels 0..7
    seen = support_in_box(support_down, Box((6, 0, 0), (9, 1, 1)), 4)
    np.testing.assert_array_equal(seen[:, 0, 0], [True, True, False, False])


def test_keep_supported_keeps_whole_components_mostly_inside() -> None:
    mask = np.zeros((6, 20, 20), bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels, 32 supported: exactly half, kept whole
    mask[5, 5, 5] = True  # diagonal neighbour of the first: the same 26-connected component (65)
    mask[1:5, 12:16, 12:16] = True  # 64 voxels, 31 supported: dropped
    mask[0:2, 0:1, 18:20] = True  # 4 voxels, none supported: dropped
    support = np.zeros(mask.shape, bool)
    support[1:5, 1:5, 1:3] = True  # 32 voxels of the first
    support[5, 5, 5] = True  # ... and its diagonal voxel: 33 of 65
    support[1:5, 12:16, 12:14] = True
    support[1, 12, 12] = False  # 31 of 64
    support[0, 19, 0] = True  # outside the mask: touches nothing
    kept = keep_supported(mask, support, 0.5)
    expected = np.zeros(mask.shape, bool)
    expected[1:5, 1:5, 1:5] = True
    expected[5, 5, 5] = True
    np.testing.assert_array_equal(kept, expected)
    assert keep_supported(mask, support, 0.0)[1:5, 12:16, 12:16].all()  # any support voxel is enough at 0
    assert not keep_supported(mask, support, 0.0)[0:2, 0:1, 18:20].any()  # ... but one is needed
    assert not keep_supported(np.zeros((2, 3, 3), bool), np.ones((2, 3, 3), bool), 0.5).any()


def test_keep_supported_trims_components_mostly_outside_to_the_trim_region() -> None:
    mask = np.zeros((4, 20, 20), bool)
    mask[0:4, 0:4, 0:4] = True  # 64 voxels, 32 supported: whole, also past the trim region
    mask[0:4, 10:14, 0:16] = True  # 256 voxels, 16 supported: only its part in the trim region
    support = np.zeros(mask.shape, bool)
    support[0:4, 0:4, 0:2] = True
    support[0:4, 10:14, 0:1] = True
    trim_to = np.zeros(mask.shape, bool)
    trim_to[:, :, 0:3] = True
    kept = keep_supported(mask, support, 0.5, trim_to)
    expected = np.zeros(mask.shape, bool)
    expected[0:4, 0:4, 0:4] = True
    expected[0:4, 10:14, 0:3] = True
    np.testing.assert_array_equal(kept, expected)
    expected[0:4, 10:14, 0:3] = False  # without a trim region the second is dropped whole
    np.testing.assert_array_equal(keep_supported(mask, support, 0.5), expected)


def test_keep_supported_checks_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        keep_supported(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 4), bool), 0.5)
    with pytest.raises(ValueError, match="trim_to"):
        keep_supported(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool), 0.5, np.zeros((2, 3, 4), bool))


def test_grown_support_grows_by_whole_blocks_along_axes_and_diagonals() -> None:
    support = np.zeros((7, 7, 7), bool)
    support[3, 3, 3] = True
    np.testing.assert_array_equal(grown_support(support, 0), support)
    one = np.zeros_like(support)
    one[2:5, 2:5, 2:5] = True
    np.testing.assert_array_equal(grown_support(support, 1), one)
    assert grown_support(support, 2)[1:6, 1:6, 1:6].all() and grown_support(support, 2).sum() == 125


def test_trim_region_follows_the_named_rule() -> None:
    support = np.zeros((5, 5, 5), bool)
    support[2, 2, 2] = True
    assert trim_region(support, _stage1(support_outside="drop")) is None
    assert trim_region(support, _stage1(support_outside="trim", support_trim_margin_blocks=1)).sum() == 27
    with pytest.raises(ValueError, match="support_outside"):
        trim_region(support, _stage1(support_outside="keep"))


def test_a_real_kidney_merged_with_tissue_beside_it_keeps_its_kidney_part(real_kits_crops) -> None:
    """A short scan's failure, on real KiTS19 kidneys: KT's kidney merges with a slab of false
    positive tissue (bowel beside it) into one component lying mostly outside stage 1's support.
    Dropping it loses the kidney; trimming to the support's neighbourhood keeps the kidney and
    little of the slab."""
    for name, image in real_kits_crops.items():
        kidneys = np.pad(np.asarray(image.dataobj) > 0, ((4, 4), (96, 8), (8, 8)))  # 75 mm in front
        box = Box((0, 0, 0), tuple(n - 1 for n in kidneys.shape))
        support_down = downsample_max(kidneys, 4)  # stage 1 found both kidneys, blockily
        slab = np.maximum.accumulate(kidneys[:, ::-1], axis=1)[:, ::-1]  # all in front of a kidney (y: posterior)
        merged = kidneys | slab
        assert (merged & support_in_box(support_down, box, 4)).sum() < 0.5 * merged.sum(), name  # mostly outside
        dropped = supported_part(merged, box, support_down, _stage1(support_outside="drop"))
        trimmed = supported_part(merged, box, support_down, _stage1(support_outside="trim", support_trim_margin_blocks=1))
        assert not dropped.any(), name
        assert trimmed[kidneys].all(), name  # every kidney voxel lies in its own support
        assert (trimmed & ~kidneys).sum() < 0.5 * kidneys.sum() < (slab & ~kidneys).sum(), name
