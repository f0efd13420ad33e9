"""Shared fixtures: the real KiTS19 masks beside the repository and small real crops of them.

``shared/`` lies beside the repository root (``/work/shared`` next to ``/work/main``; CI clones the
same way). Tests that need it skip when it is absent. Small real masks come from
``Testing/Data/kits19/`` when that folder holds NIfTI files, else they are cropped around the
kidneys from two shared cases in the fixture.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

TESTING_DIR = Path(__file__).resolve().parent
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_MASKS_DIR = SHARED_DATA_DIR / "kits19" / "masks"
TEST_DATA_DIR = TESTING_DIR / "Data"
# Shared cases cropped when Testing/Data/kits19 is empty: 0.5 mm slices and 1.0 mm slices.
_CROPPED_CASES = ("case_00022", "case_00002")
_CROP_MARGIN_VOXELS = 6


def crop_nifti(image: nib.Nifti1Image, margin: int = _CROP_MARGIN_VOXELS) -> nib.Nifti1Image:
    """``image`` cropped to the box of its non-zero voxels plus ``margin`` voxels, affine shifted to match."""
    array = np.asarray(image.dataobj)
    hits = [np.flatnonzero(np.any(array, axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    start = [max(0, int(h[0]) - margin) for h in hits]
    stop = [min(n, int(h[-1]) + 1 + margin) for h, n in zip(hits, array.shape)]
    affine = image.affine.copy()
    affine[:3, 3] = (image.affine @ np.r_[start, 1.0])[:3]
    crop = np.ascontiguousarray(array[tuple(slice(a, b) for a, b in zip(start, stop))])
    return nib.Nifti1Image(crop, affine)


@pytest.fixture(scope="session")
def shared_masks_dir() -> Path:
    """The folder of the 100 real KiTS19 masks; skips the test when it is absent."""
    if not SHARED_MASKS_DIR.is_dir():
        pytest.skip(f"{SHARED_MASKS_DIR} is absent")
    return SHARED_MASKS_DIR


@pytest.fixture(scope="session")
def real_kits_crops() -> dict[str, nib.Nifti1Image]:
    """Small real KiTS19 label maps (I,P,L, 0/1/2) by name, cropped around the kidneys.

    Prefers ``Testing/Data/kits19/*.nii.gz``; otherwise crops shared cases; skips when neither exists.
    """
    packaged = sorted((TEST_DATA_DIR / "kits19").glob("*.nii.gz"))
    if packaged:
        return {path.name.removesuffix(".nii.gz"): nib.load(str(path)) for path in packaged}
    if not SHARED_MASKS_DIR.is_dir():
        pytest.skip("no real KiTS19 masks: Testing/Data/kits19 is empty and shared/ is absent")
    crops = {}
    for case in _CROPPED_CASES:
        image = nib.load(str(SHARED_MASKS_DIR / f"{case}.nii.gz"))
        crops[case] = crop_nifti(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.uint8), image.affine))
    return crops


@pytest.fixture(scope="session")
def thin_slice_mask(real_kits_crops: dict[str, nib.Nifti1Image]) -> nib.Nifti1Image:
    """The real crop with the thinnest slices (must be thinner than the 3 mm working slices)."""
    image = min(real_kits_crops.values(), key=lambda img: float(img.header.get_zooms()[0]))
    if float(image.header.get_zooms()[0]) >= 3.0:
        pytest.skip("no thin-slice real mask available")
    return image


@pytest.fixture(scope="session")
def example_ct_path() -> Path:
    """A real abdominal CT (RAS, int16 HU, 3 mm) from TotalSegmentator's test files."""
    for path in (TEST_DATA_DIR / "totalsegmentator" / "example_ct_sm.nii.gz",
                 SHARED_DATA_DIR / "totalsegmentator" / "example_ct_sm.nii.gz"):
        if path.is_file():
            return path
    pytest.skip("example_ct_sm.nii.gz is absent")
