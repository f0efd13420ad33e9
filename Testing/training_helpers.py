"""Small synthetic cases for the training-toolkit tests (imported by ``test_training_*.py``).

``synthetic_labels`` is a working-frame label map ``[z, y, x]`` with two box kidneys and one box
tumor at hand-chosen places, so every box, crop and slice set has a known value.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from training_tools.cache import CachedCase, case_arrays, write_case

SHAPE = (40, 220, 300)
KIDNEYS = ((slice(10, 22), slice(80, 120), slice(60, 100)), (slice(12, 24), slice(80, 118), slice(200, 240)))
TUMOR = (slice(14, 18), slice(90, 100), slice(70, 82))
# Known results: kidney+tumor box z 10..23, y 80..119, x 60..239, grown by 8 / 64 / 64 per side, clipped.
CROP_START, CROP_SHAPE = (2, 16, 0), (30, 168, 300)
# Tumor box z 14..17, y 90..99, x 70..81, grown by 4 / 8 / 8 per side, relative to the crop.
TUMOR_CROP_START, TUMOR_CROP_SIZE = (8, 66, 62), (12, 26, 28)


def synthetic_labels(shift_x: int = 0) -> np.ndarray:
    """uint8 labels ``[z, y, x]`` of :data:`SHAPE` (two box kidneys, one box tumor), moved by ``shift_x``."""
    labels = np.zeros(SHAPE, np.uint8)
    for box in KIDNEYS:
        labels[box[0], box[1], slice(box[2].start + shift_x, box[2].stop + shift_x)] = 1
    labels[TUMOR[0], TUMOR[1], slice(TUMOR[2].start + shift_x, TUMOR[2].stop + shift_x)] = 2
    return labels


def synthetic_image(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Normalised image in (0, 1]: background 0.3, kidney 0.7, tumor 0.55, small noise; never 0."""
    rng = np.random.default_rng(seed)
    image = np.choose(labels, [0.3, 0.7, 0.55]).astype(np.float32)
    image += rng.normal(0.0, 0.02, labels.shape).astype(np.float32)
    return np.clip(image, 0.05, 1.0)


def write_synthetic_case(cache_dir: Path, case_id: str, shift_x: int = 0, seed: int = 0) -> CachedCase:
    """Cache one synthetic case directly (no resampling) and open it."""
    labels = synthetic_labels(shift_x)
    arrays, meta = case_arrays(synthetic_image(labels, seed), labels)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return CachedCase(write_case(cache_dir, case_id, arrays, meta))


def write_kits_case(folder: Path, case_id: str, mask: nib.Nifti1Image, seed: int = 0) -> Path:
    """A KiTS19-layout case from a real label map: a simple CT (HU by label plus noise) on its grid."""
    labels = np.asarray(mask.dataobj, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    hu = np.choose(labels, [-60.0, 160.0, 90.0]) + rng.normal(0.0, 15.0, labels.shape)
    case = folder / case_id
    case.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), mask.affine), str(case / "imaging.nii.gz"))
    nib.save(nib.Nifti1Image(labels, mask.affine), str(case / "segmentation.nii.gz"))
    return case
