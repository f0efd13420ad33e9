"""The data shipped in the repository (training_tools.sample_data): crops keep world coordinates."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from training_tools.sample_data import KITS_CROPS, SAMPLE_CASE, crop_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "KidneyTumorSeg" / "Resources" / "Sample" / "case_sample"
SHARED_MASKS = REPO.parent / "shared" / "data" / "kits19" / "masks"


def test_crop_keeps_world_coordinates():
    affine = np.array([[0.0, 0.0, -0.8, 200.0], [0.0, -0.8, 0.0, 150.0], [-3.0, 0.0, 0.0, -20.0], [0, 0, 0, 1]])
    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    crop = crop_image(nib.Nifti1Image(data, affine), ((1, 5), (2, 7), (3, 8)))
    assert crop.shape == (4, 5, 5)
    assert np.allclose(crop.affine @ [0, 0, 0, 1], affine @ [1, 2, 3, 1])
    assert crop.get_fdata()[0, 0, 0] == data[1, 2, 3]


def test_shipped_sample_is_one_small_kits_case():
    imaging, labels = (nib.load(str(SAMPLE / name)) for name in ("imaging.nii.gz", "segmentation.nii.gz"))
    assert imaging.shape == labels.shape and np.allclose(imaging.affine, labels.affine)
    assert imaging.get_data_dtype() == np.int16 and nib.aff2axcodes(imaging.affine) == ("I", "P", "L")
    assert set(np.unique(np.asarray(labels.dataobj)).tolist()) == {0, 1, 2}
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) <= 4_000_000


@pytest.mark.shared
def test_shipped_masks_are_the_real_masks_cropped():
    if not SHARED_MASKS.is_dir():
        pytest.skip(f"{SHARED_MASKS} is absent")
    for name, box in KITS_CROPS.items():
        source = nib.load(str(SHARED_MASKS / f"{name}.nii.gz"))
        shipped = nib.load(str(REPO / "Testing" / "Data" / "kits19" / f"{name}.nii.gz"))
        expected = source if box is None else crop_image(source, box)
        assert np.allclose(shipped.affine, expected.affine)
        assert np.array_equal(np.asarray(shipped.dataobj), np.asarray(expected.dataobj))
        assert np.count_nonzero(np.asarray(shipped.dataobj)) == np.count_nonzero(np.asarray(source.dataobj))
    source = nib.load(str(SHARED_MASKS / f"{SAMPLE_CASE}.nii.gz"))
    sample = nib.load(str(SAMPLE / "segmentation.nii.gz"))
    start = np.rint(np.linalg.solve(source.affine, sample.affine @ [0, 0, 0, 1])[:3]).astype(int)
    box = tuple(slice(s, s + n) for s, n in zip(start, sample.shape))
    assert np.array_equal(np.asarray(sample.dataobj), np.asarray(source.dataobj)[box])
