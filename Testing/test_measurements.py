"""Clinical measurements: volumes per side in any orientation, tumor count and largest diameter."""
from __future__ import annotations

import math

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest

from KidneyTumorSegLib.measurements import measure

SPACING = (1.0, 1.0, 2.0)  # RAS voxel size, mm
VOXEL_ML = 2.0 / 1000.0


def _two_kidneys_ras() -> np.ndarray:
    """Labels [i, j, k] on a RAS grid: RAS x grows towards the patient's right, so the patient's
    left kidney has the small i. Left: 10 x 10 x 10 voxels with a 4^3 tumor; right: 8 x 8 x 8
    with a 3^3 tumor."""
    labels = np.zeros((60, 40, 30), np.uint8)
    labels[5:15, 10:20, 5:15] = 1  # patient left
    labels[6:10, 11:15, 6:10] = 2
    labels[40:48, 12:20, 8:16] = 1  # patient right
    labels[41:44, 13:16, 9:12] = 2
    return labels


def _ras_affine() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-30.0, -20.0, 100.0)
    return affine


def _reoriented(labels: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    image = nib.Nifti1Image(labels, affine)
    image = image.as_reoriented(nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(axcodes)))
    assert nib.aff2axcodes(image.affine) == axcodes
    return np.asarray(image.dataobj), image.affine


EXPECTED_KIDNEY = {"left": (1000 - 64) * VOXEL_ML, "right": (512 - 27) * VOXEL_ML}
EXPECTED_TUMOR = {"left": 64 * VOXEL_ML, "right": 27 * VOXEL_ML}


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("I", "P", "L"), ("L", "P", "S"), ("P", "S", "L")])
def test_volumes_per_side_in_any_orientation(axcodes: tuple[str, str, str]) -> None:
    labels, affine = _reoriented(_two_kidneys_ras(), _ras_affine(), axcodes)
    result = measure(labels, affine)
    for side in ("left", "right"):
        assert result["kidney_ml"][side] == pytest.approx(EXPECTED_KIDNEY[side])
        assert result["tumor_ml"][side] == pytest.approx(EXPECTED_TUMOR[side])
    assert result["kidney_ml"]["total"] == pytest.approx(sum(EXPECTED_KIDNEY.values()))
    assert result["tumor_ml"]["total"] == pytest.approx(sum(EXPECTED_TUMOR.values()))
    assert result["tumor_count"] == 2
    assert [t["side"] for t in result["tumors"]] == ["left", "right"]  # largest first
    assert [t["volume_ml"] for t in result["tumors"]] == pytest.approx([64 * VOXEL_ML, 27 * VOXEL_ML])


def test_ipl_array_has_the_patient_left_kidney_at_large_x() -> None:
    """I,P,L's x points Left: the patient-left kidney (with the 4^3 tumor) lies in the high-x half."""
    labels, affine = _reoriented(_two_kidneys_ras(), _ras_affine(), ("I", "P", "L"))
    assert np.count_nonzero(labels[:, :, labels.shape[2] // 2:] == 2) == 64
    assert measure(labels, affine)["tumors"][0]["side"] == "left"


def test_one_kidney_is_sided_by_the_image_centre() -> None:
    labels = _two_kidneys_ras()
    labels[30:] = 0  # only the patient-left kidney remains, left of the image centre
    result = measure(labels, _ras_affine())
    assert result["kidney_ml"]["right"] == 0 and result["kidney_ml"]["left"] == pytest.approx(EXPECTED_KIDNEY["left"])
    assert result["tumor_count"] == 1


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 1.0), (0.8, 0.8, 2.5)])
def test_largest_diameter_of_a_cube(spacing: tuple[float, float, float]) -> None:
    """A 10 mm cube: its largest voxel-centre distance is the diagonal of (10 mm - one voxel)."""
    counts = [round(10.0 / s) for s in spacing]
    labels = np.zeros([c + 10 for c in counts], np.uint8)
    labels[tuple(slice(5, 5 + c) for c in counts)] = 2
    result = measure(labels, np.diag([*spacing, 1.0]))
    expected = math.sqrt(sum(((c - 1) * s) ** 2 for c, s in zip(counts, spacing)))
    assert result["tumor_count"] == 1
    assert result["tumors"][0]["diameter_mm"] == pytest.approx(expected)
    assert result["largest_tumor_diameter_mm"] == pytest.approx(expected)
    assert result["tumors"][0]["volume_ml"] == pytest.approx(np.prod(counts) * np.prod(spacing) / 1000)


def test_diameter_is_rotation_invariant() -> None:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:15, 8:12, 10:13] = 2  # a 10 x 4 x 3 bar
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rotation * 1.5
    expected = 1.5 * math.sqrt(9 ** 2 + 3 ** 2 + 2 ** 2)
    assert measure(labels, np.diag([1.5, 1.5, 1.5, 1.0]))["largest_tumor_diameter_mm"] == pytest.approx(expected)
    assert measure(labels, oblique)["largest_tumor_diameter_mm"] == pytest.approx(expected)


def test_tumors_touching_diagonally_are_one() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:5, 2:5, 2:5] = 2
    labels[5:8, 5:8, 5:8] = 2  # shares only a corner with the first: 26-connected
    assert measure(labels, np.eye(4))["tumor_count"] == 1
    labels[5, 5, 5] = 0
    assert measure(labels, np.eye(4))["tumor_count"] == 2


def test_single_voxel_and_flat_tumors() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[3, 3, 3] = 2
    labels[10, 5:15, 5:15] = 2  # flat: a degenerate hull
    result = measure(labels, np.eye(4))
    assert result["tumor_count"] == 2
    assert [t["diameter_mm"] for t in result["tumors"]] == pytest.approx([9 * math.sqrt(2), 0.0])


def test_empty_label_map() -> None:
    result = measure(np.zeros((10, 12, 14), np.uint8), _ras_affine())
    assert result["kidney_ml"] == {"left": 0.0, "right": 0.0, "total": 0.0}
    assert result["tumor_ml"] == {"left": 0.0, "right": 0.0, "total": 0.0}
    assert result["tumor_count"] == 0 and result["tumors"] == [] and result["largest_tumor_diameter_mm"] == 0.0
