"""Tests of KidneyTumorSegLib.metrics: KiTS19 Dice, surface Dice, 95 % Hausdorff distance."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from KidneyTumorSegLib import metrics
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS

REAL_CASES = ("case_00061", "case_00038")  # small files
SPACING = (3.0, 0.78162497, 0.78162497)


def official_formula(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The formula of neheller/kits19 starter_code/evaluation.py, written out independently."""
    kidney_p, kidney_g = pred > 0, gt > 0
    tumor_p, tumor_g = pred > 1, gt > 1
    kidney = 2 * np.logical_and(kidney_p, kidney_g).sum() / (kidney_p.sum() + kidney_g.sum())
    tumor = 2 * np.logical_and(tumor_p, tumor_g).sum() / (tumor_p.sum() + tumor_g.sum())
    return float(kidney), float(tumor)


# --- KiTS19 Dice ------------------------------------------------------------------------------

def test_kits_dice_hand_computed():
    pred = np.array([[[0, 1, 1, 2, 2, 0]]], dtype=np.uint8)
    gt = np.array([[[0, 1, 2, 2, 0, 0]]], dtype=np.uint8)
    # kidney (label > 0): |P| = 4, |G| = 3, overlap 3 -> 6/7; tumor (label 2): 2, 2, overlap 1 -> 1/2
    assert metrics.kits_dice(pred, gt) == {"kidney_dice": 6 / 7, "tumor_dice": 0.5}


def test_kits_dice_kidney_includes_tumor_and_tumor_excludes_kidney():
    pred = np.array([[[2, 2, 1, 1]]], dtype=np.uint8)
    gt = np.array([[[1, 1, 2, 2]]], dtype=np.uint8)
    assert metrics.kits_dice(pred, gt) == {"kidney_dice": 1.0, "tumor_dice": 0.0}


def test_kits_dice_empty_conventions():
    empty = np.zeros((2, 3, 3), dtype=np.uint8)
    kidney_only = empty.copy()
    kidney_only[0, 1, 1] = 1
    assert metrics.kits_dice(empty, empty) == {"kidney_dice": 1.0, "tumor_dice": 1.0}
    assert metrics.kits_dice(kidney_only, kidney_only) == {"kidney_dice": 1.0, "tumor_dice": 1.0}
    assert metrics.kits_dice(kidney_only, empty) == {"kidney_dice": 0.0, "tumor_dice": 1.0}
    with np.errstate(invalid="ignore"):  # the official code gives NaN there (0 / 0 on numpy ints)
        assert math.isnan(official_formula(kidney_only, kidney_only)[1])


def test_kits_dice_rejects_float_and_mismatched_maps():
    with pytest.raises(TypeError):
        metrics.kits_dice(np.zeros((2, 2, 2), dtype=np.float32), np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError):
        metrics.kits_dice(np.zeros((2, 2, 2), dtype=np.uint8), np.zeros((2, 2, 3), dtype=np.uint8))


def test_kits_dice_matches_official_formula_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred = rng.integers(0, 3, size=(7, 11, 13), dtype=np.uint8)
        gt = rng.integers(0, 3, size=(7, 11, 13), dtype=np.uint8)
        result = metrics.kits_dice(pred, gt)
        assert (result["kidney_dice"], result["tumor_dice"]) == official_formula(pred, gt)


# --- surface Dice and HD95 --------------------------------------------------------------------

def _box(shape, z, y, x) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z, y, x] = True
    return mask


def test_identical_masks():
    mask = _box((10, 20, 20), slice(2, 6), slice(3, 12), slice(4, 15))
    assert metrics.surface_dice(mask, mask, SPACING, 2.0) == 1.0
    assert metrics.hausdorff95(mask, mask, SPACING) == 0.0


def test_slab_shifted_two_slices_along_z_is_six_mm_away():
    a = _box((10, 20, 20), 3, slice(2, 18), slice(2, 18))
    b = _box((10, 20, 20), 5, slice(2, 18), slice(2, 18))
    assert metrics.hausdorff95(a, b, SPACING) == 6.0
    assert metrics.surface_dice(a, b, SPACING, 5.99) == 0.0
    assert metrics.surface_dice(a, b, SPACING, 6.0) == 1.0  # a distance equal to the tolerance counts


def test_thick_box_shifted_two_slices_along_z():
    a = _box((14, 24, 24), slice(2, 6), slice(2, 22), slice(2, 22))
    b = _box((14, 24, 24), slice(4, 8), slice(2, 22), slice(2, 22))
    assert metrics.hausdorff95(a, b, SPACING) == 6.0


def test_shift_along_y_uses_in_plane_spacing():
    a = _box((10, 20, 20), slice(2, 8), 5, slice(2, 18))
    b = _box((10, 20, 20), slice(2, 8), 7, slice(2, 18))
    assert metrics.hausdorff95(a, b, SPACING) == pytest.approx(2 * SPACING[1], rel=1e-12)
    assert metrics.surface_dice(a, b, SPACING, 2.0) == 1.0
    assert metrics.surface_dice(a, b, SPACING, 1.5) == 0.0


def test_empty_mask_conventions():
    empty = np.zeros((4, 5, 5), dtype=bool)
    mask = _box((4, 5, 5), 1, 2, 2)
    assert metrics.surface_dice(empty, empty, SPACING, 2.0) == 1.0
    assert metrics.hausdorff95(empty, empty, SPACING) == 0.0
    assert metrics.surface_dice(mask, empty, SPACING, 2.0) == 0.0
    assert metrics.surface_dice(empty, mask, SPACING, 2.0) == 0.0
    assert metrics.hausdorff95(mask, empty, SPACING) == float("inf")
    assert metrics.hausdorff95(empty, mask, SPACING) == float("inf")


def _brute_force_surface(mask: np.ndarray) -> np.ndarray:
    """Coordinates of voxels with a 6-neighbour outside the mask or outside the array."""
    padded = np.pad(mask, 1)
    points = []
    for z, y, x in zip(*np.nonzero(mask)):
        neighbours = [padded[z + 1 + dz, y + 1 + dy, x + 1 + dx]
                      for dz, dy, dx in ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))]
        if not all(neighbours):
            points.append((z, y, x))
    return np.array(points, dtype=float)


def _brute_force(pred, gt, spacing, tolerance):
    p = _brute_force_surface(pred) * spacing
    g = _brute_force_surface(gt) * spacing
    distances = np.linalg.norm(p[:, None, :] - g[None, :, :], axis=2)
    to_gt, to_pred = distances.min(axis=1), distances.min(axis=0)
    hd95 = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
    sdice = (np.sum(to_gt <= tolerance) + np.sum(to_pred <= tolerance)) / (len(p) + len(g))
    return sdice, hd95


@pytest.mark.parametrize("seed", range(4))
def test_surface_metrics_match_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (6, 14, 14)  # blobs reach the array edge: edge voxels count as surface
    pred = ndimage.binary_closing(rng.random(shape) < 0.45)
    gt = ndimage.binary_closing(rng.random(shape) < 0.45)
    spacing = np.array((2.5, 0.8, 0.7))
    sdice, hd95 = _brute_force(pred, gt, spacing, tolerance=1.0)
    assert metrics.surface_dice(pred, gt, spacing, 1.0) == pytest.approx(sdice, abs=1e-12)
    assert metrics.hausdorff95(pred, gt, spacing) == pytest.approx(hd95, rel=1e-9)


def test_surface_metrics_do_not_depend_on_padding():
    a = _box((8, 12, 12), slice(0, 4), slice(0, 9), slice(3, 12))  # touches three array faces
    b = _box((8, 12, 12), slice(1, 6), slice(2, 10), slice(1, 10))
    padded = [np.pad(m, ((5, 3), (2, 7), (4, 4))) for m in (a, b)]
    assert metrics.surface_dice(a, b, SPACING, 2.0) == metrics.surface_dice(*padded, SPACING, 2.0)
    assert metrics.hausdorff95(a, b, SPACING) == metrics.hausdorff95(*padded, SPACING)
    assert metrics.surface(a).sum() == metrics.surface(padded[0]).sum()  # edge faces are surface


# --- per case and summary ---------------------------------------------------------------------

def test_evaluate_case_keys_and_values():
    gt = np.zeros((6, 16, 16), dtype=np.uint8)
    gt[1:5, 2:14, 2:14] = 1
    gt[2:4, 5:9, 5:9] = 2
    pred = gt.copy()
    pred[2:4, 5:9, 5:7] = 1  # half the tumor predicted as kidney
    row = metrics.evaluate_case(pred, gt, SPACING)
    assert all(type(value) in (float, int) for value in row.values())  # plain numbers, ready for JSON
    assert row["kidney_dice"] == 1.0 and row["tumor_dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert row["mean_dice"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert row["kidney_surface_dice"] == 1.0 and row["kidney_hd95_mm"] == 0.0
    assert row["tumor_surface_dice"] == metrics.surface_dice(pred == 2, gt == 2, SPACING, 2.0)
    assert row["tumor_hd95_mm"] == metrics.hausdorff95(pred == 2, gt == 2, SPACING)
    assert (row["tumor_tp"], row["tumor_fp"], row["tumor_fn"]) == (16, 0, 16)
    assert row["tumor_precision"] == 1.0 and row["tumor_recall"] == 0.5 and row["healthy_called_tumor"] == 0.0
    assert set(row) == {"kidney_dice", "tumor_dice", "mean_dice", "kidney_surface_dice",
                        "tumor_surface_dice", "kidney_hd95_mm", "tumor_hd95_mm", "tumor_tp", "tumor_fp",
                        "tumor_fn", "tumor_precision", "tumor_recall", "healthy_called_tumor"}


def test_evaluate_case_tolerance_from_settings():
    a = np.zeros((10, 20, 20), dtype=np.uint8)
    b = a.copy()
    a[3, 2:18, 2:18] = 1
    b[5, 2:18, 2:18] = 1  # 6 mm apart
    assert DEFAULT_SETTINGS.evaluation.surface_tolerance_mm == 2.0
    assert metrics.evaluate_case(a, b, SPACING)["kidney_surface_dice"] == 0.0
    wide = dataclasses.replace(DEFAULT_SETTINGS, evaluation=dataclasses.replace(
        DEFAULT_SETTINGS.evaluation, surface_tolerance_mm=6.0))
    assert metrics.evaluate_case(a, b, SPACING, settings=wide)["kidney_surface_dice"] == 1.0
    assert metrics.evaluate_case(a, b, SPACING, tolerance_mm=6.0)["kidney_surface_dice"] == 1.0


def test_summarise_means_dice_and_pools_tumor_calls_over_cases():
    rows = [{"kidney_dice": 0.9, "tumor_dice": 0.5, "mean_dice": 0.7, "tumor_hd95_mm": float("inf"),
             "tumor_tp": 10, "tumor_fp": 90, "tumor_fn": 0, "healthy_called_tumor": 0.3},
            {"kidney_dice": 1.0, "tumor_dice": 0.7, "mean_dice": 0.85, "tumor_hd95_mm": 3.0,
             "tumor_tp": 0, "tumor_fp": 0, "tumor_fn": 100, "healthy_called_tumor": math.nan}]
    summary = metrics.summarise(rows)
    assert summary == pytest.approx({"kidney_dice": 0.95, "tumor_dice": 0.6, "mean_dice": 0.775, "cases": 2,
                                     "tumor_precision_pooled": 0.1, "tumor_recall_pooled": 10 / 110,
                                     "median_healthy_called_tumor": 0.3})  # a case without healthy kidney is left out
    with pytest.raises(ValueError):
        metrics.summarise([])


# --- real KiTS19 masks ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_labels(shared_masks_dir: Path) -> dict[str, np.ndarray]:
    """Label maps of a few real KiTS19 cases, cropped around the kidneys."""
    labels = {}
    for case in REAL_CASES:
        volume = np.asarray(nib.load(shared_masks_dir / f"{case}.nii.gz").dataobj)
        present = np.nonzero(volume)
        crop = tuple(slice(max(int(p.min()) - 4, 0), int(p.max()) + 5) for p in present)
        labels[case] = np.ascontiguousarray(volume[crop], dtype=np.uint8)
    return labels


@pytest.mark.shared
def test_real_kits_dice_equals_official_formula(real_labels):
    for case, gt in real_labels.items():
        shifted = np.roll(gt, shift=(1, 3, -2), axis=(0, 1, 2))
        eroded = np.where(ndimage.binary_erosion(gt > 0), gt, 0).astype(np.uint8)
        half_tumor = gt.copy()  # tumor in the lower half of the crop called kidney
        half_tumor[gt.shape[0] // 2:][gt[gt.shape[0] // 2:] == 2] = 1
        for pred in (shifted, eroded, half_tumor, gt):
            result = metrics.kits_dice(pred, gt)
            assert (result["kidney_dice"], result["tumor_dice"]) == official_formula(pred, gt), case
        assert 0.5 < metrics.kits_dice(shifted, gt)["kidney_dice"] < 1.0, case


@pytest.mark.shared
def test_real_surface_metrics_of_a_one_voxel_erosion(real_labels):
    for case, gt in real_labels.items():
        kidney = gt > 0
        eroded = ndimage.binary_erosion(kidney, structure=ndimage.generate_binary_structure(3, 1))
        # Each eroded surface voxel has an eroded-away 6-neighbour, which is on the kidney surface;
        # thin parts erode away entirely, so the way back can be longer.
        to_kidney, _ = metrics.surface_distances(eroded, kidney, SPACING)
        assert to_kidney.max() <= SPACING[0], case
        assert 0 < metrics.hausdorff95(eroded, kidney, SPACING) <= 2 * SPACING[0], case
        assert 0.95 < metrics.surface_dice(eroded, kidney, SPACING, SPACING[0]) < 1.0, case
        assert metrics.hausdorff95(kidney, kidney, SPACING) == 0.0



def test_tumor_calls_on_real_masks(real_labels):
    """The three ways the tumor label is read, on real KiTS19 kidneys: all kidney called tumor, the
    tumor missed, and the same kidneys with no tumor in the truth."""
    for labels in real_labels.values():
        tumor, labelled = int((labels == 2).sum()), int((labels > 0).sum())
        everything = np.where(labels > 0, 2, 0).astype(np.uint8)
        calls = metrics.tumor_calls(everything, labels)
        assert calls["healthy_called_tumor"] == 1.0 and calls["tumor_recall"] == 1.0
        assert calls["tumor_precision"] == pytest.approx(tumor / labelled)
        assert (calls["tumor_tp"], calls["tumor_fp"], calls["tumor_fn"]) == (tumor, labelled - tumor, 0)
        missed = metrics.tumor_calls(np.where(labels > 0, 1, 0).astype(np.uint8), labels)
        assert math.isnan(missed["tumor_precision"]) and missed["tumor_recall"] == 0.0
        assert missed["healthy_called_tumor"] == 0.0
        healthy_truth = np.where(labels > 0, 1, 0).astype(np.uint8)  # the same kidneys without tumor
        read = metrics.tumor_calls(labels, healthy_truth)
        assert read["healthy_called_tumor"] == pytest.approx(tumor / labelled) and math.isnan(read["tumor_recall"])
