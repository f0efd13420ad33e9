"""Small batch output folders for the review tests: per case a CT, a label map, an uncertainty map
and a report as `batch` writes them, with chosen review flags and scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from KidneyTumorSegLib.uncertainty import uncertainty_to_bytes
from KidneyTumorSegLib.imageio import write_image, write_label_map

SHAPE = (48, 40, 12)  # [i, j, k]
AFFINE = np.diag([-2.0, -2.0, 4.0, 1.0])  # RAS x = -2 i: i grows towards the patient's left
KIDNEY = (slice(6, 18), slice(12, 28), slice(2, 10))
TUMOR = (slice(30, 42), slice(12, 28), slice(2, 10))
UNCERTAIN = (slice(20, 44), slice(4, 36), slice(0, 12))


def labels() -> np.ndarray:
    """0/1/2 ``[i, j, k]``: a kidney block on the patient's right (small i) and a tumor block on
    the patient's left (large i)."""
    array = np.zeros(SHAPE, np.uint8)
    array[KIDNEY] = 1
    array[TUMOR] = 2
    return array


def report(case: str, image: Path, flagged: bool | None, score: float | None) -> dict:
    """A report as `batch` writes it (the fields review reads), or without a review when ``flagged`` is None."""
    data = {
        "case": case, "image": str(image),
        "crop": {"ijk": [[2, 45], [2, 37], [0, 11]], "ras": [[-91.0, -75.0, -2.0], [-3.0, -3.0, 46.0]]},
        "measurements": {"kidney_ml": {"left": 0.0, "right": 12.288, "total": 12.288},
                         "tumor_ml": {"left": 12.288, "right": 0.0, "total": 12.288}, "tumor_count": 1,
                         "largest_tumor_diameter_mm": 30.0},
    }
    if flagged is not None:
        data["review"] = flagged
        data["uncertainty"] = {"score": score, "review": flagged, "disputed_ml": 1.0}
    return data


def make_batch_folder(root: Path, flags: dict[str, tuple[bool | None, float | None]]) -> Path:
    """``root/out`` holding ``<case>.json``, ``<case>.nii.gz`` and ``<case>.uncertainty.nii.gz`` of each
    case of ``flags`` (name -> review flag, score); CTs (and truths) in ``root/images/<case>/``."""
    out = root / "out"
    out.mkdir(parents=True)
    ct = np.full(SHAPE, 40, np.int16)  # soft tissue, mid-grey in the abdomen window
    uncertainty = np.zeros(SHAPE, np.float32)
    uncertainty[UNCERTAIN] = 0.9
    for case, (flagged, score) in flags.items():
        folder = root / "images" / case
        folder.mkdir(parents=True)
        write_image(folder / "imaging.nii.gz", ct, AFFINE)
        write_label_map(folder / "segmentation.nii.gz", labels(), AFFINE)
        write_label_map(out / f"{case}.nii.gz", labels(), AFFINE)
        write_image(out / f"{case}.uncertainty.nii.gz", uncertainty_to_bytes(uncertainty), AFFINE)  # as the CLI stores it
        (out / f"{case}.json").write_text(json.dumps(report(case, folder / "imaging.nii.gz", flagged, score)), encoding="utf-8")
    return out
