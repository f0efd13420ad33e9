"""Tissue HU statistics measured on a real CT with its TotalSegmentator label map.

The phantom generator (``training_tools.phantoms``) takes every unenhanced tissue value from
``tissue_hu.json``, written once by this module from TotalSegmentator's example CT
(``example_ct_sm.nii.gz``, 3 mm, with the 117-class map ``example_seg.nii.gz``):

    python -m training_tools.tissue_hu CT.nii.gz SEG.nii.gz --out training_tools/tissue_hu.json

Organ statistics are taken inside the organ eroded by one voxel (less partial volume); fat,
air, gas and the scanner table, which have no class, are found from the intensities themselves.
That scan is unenhanced (aorta ~ liver ~ 40 HU), so contrast enhancement is not measured here.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

TISSUE_HU_JSON = Path(__file__).with_name("tissue_hu.json")

# TotalSegmentator v2 "total" classes (totalsegmentator/map_to_binary.py, class_map["total"]).
TOTALSEG_CLASSES: dict[str, tuple[int, ...]] = {
    "spleen": (1,),
    "kidney": (2, 3),
    "gallbladder": (4,),
    "liver": (5,),
    "stomach": (6,),
    "pancreas": (7,),
    "adrenal": (8, 9),
    "lung": (10, 11, 12, 13, 14),
    "small_bowel": (18,),
    "duodenum": (19,),
    "colon": (20,),
    "vertebrae": tuple(range(25, 51)),  # sacrum, S1, L5 ... C1
    "aorta": (52,),
    "inferior_vena_cava": (63,),
    "portal_vein": (64,),
    "spinal_cord": (79,),
    "autochthon": (86, 87),
    "iliopsoas": (88, 89),
    "muscle": (86, 87, 88, 89),
    "rib": tuple(range(92, 116)),
    "costal_cartilage": (117,),
}

BODY_THRESHOLD_HU = -500.0  # body = largest connected region above this, holes filled per slice
GAS_THRESHOLD_HU = -500.0  # gas inside the bowel / stomach
FAT_WINDOW_HU = (-250.0, -20.0)  # where the fat peak of unlabelled body voxels is searched
MIN_ERODED_VOXELS = 50
THIN_STRUCTURES = ("rib", "costal_cartilage")  # thinner than two 3 mm voxels: never eroded


def _stats(values: np.ndarray, classes: Sequence[int] = ()) -> dict:
    """Mean, standard deviation and percentiles of a 1-D array of HU values."""
    p05, p50, p95, p99 = np.percentile(values, [5, 50, 95, 99])
    return {
        "classes": [int(c) for c in classes],
        "n": int(values.size),
        "mean": round(float(values.mean()), 2),
        "std": round(float(values.std()), 2),
        "p05": round(float(p05), 2),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
    }


def _interior(mask: np.ndarray) -> np.ndarray:
    """The mask eroded by one voxel (6-connectivity), or the mask itself when too little is left."""
    eroded = ndimage.binary_erosion(mask)
    return eroded if eroded.sum() >= MIN_ERODED_VOXELS else mask


def body_mask(ct: np.ndarray, slice_axis: int) -> np.ndarray:
    """Largest connected region above ``BODY_THRESHOLD_HU``, holes filled slice by slice."""
    labels, n = ndimage.label(ct > BODY_THRESHOLD_HU)
    if n == 0:
        return np.zeros(ct.shape, bool)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    body = labels == largest
    for k in range(ct.shape[slice_axis]):
        index = [slice(None)] * ct.ndim
        index[slice_axis] = k
        body[tuple(index)] = ndimage.binary_fill_holes(body[tuple(index)])
    return body


def _fat_peak(values: np.ndarray) -> dict:
    """Fat as the histogram peak in ``FAT_WINDOW_HU``; spread from the peak's lower half.

    Unlabelled body voxels mix fat with unlabelled soft tissue above the peak, so the
    spread is the median distance below the mode divided by 0.6745 (a Gaussian's MAD).
    """
    lo, hi = FAT_WINDOW_HU
    window = values[(values > lo) & (values < hi)]
    counts, edges = np.histogram(window, bins=np.arange(lo, hi + 5.0, 5.0))
    smooth = np.convolve(counts, np.ones(5) / 5.0, mode="same")
    mode = float(edges[np.argmax(smooth)] + 2.5)
    below = mode - window[(window <= mode) & (window > mode - 150.0)]
    stats = _stats(window[np.abs(window - mode) < 150.0])
    stats.update(mean=round(mode, 2), std=round(float(np.median(below)) / 0.6745, 2))
    return stats


def _noise(ct: np.ndarray, mask: np.ndarray) -> dict:
    """White-noise estimate: std of (voxel - mean of its 6 neighbours) / sqrt(7/6) inside mask."""
    neighbours = ndimage.convolve(ct, _six_neighbour_kernel(), mode="nearest")
    residual = (ct - neighbours)[_interior(mask)]
    return {"n": int(residual.size), "std": round(float(residual.std() / np.sqrt(7.0 / 6.0)), 2)}


def _six_neighbour_kernel() -> np.ndarray:
    kernel = np.zeros((3, 3, 3), np.float32)
    kernel[[0, 2, 1, 1, 1, 1], [1, 1, 0, 2, 1, 1], [1, 1, 1, 1, 0, 2]] = 1.0 / 6.0
    return kernel


def measure_tissue_hu(ct_path: str | Path, seg_path: str | Path) -> dict:
    """Measure HU statistics per tissue on a CT and its TotalSegmentator (v2, 117 classes) map.

    Returns ``{"source": ..., "tissues": {name: {classes, n, mean, std, p05, p50, p95, p99}},
    "noise": {...}}``. Organs: classes of ``TOTALSEG_CLASSES`` eroded by one voxel (except
    ``THIN_STRUCTURES``);
    ``vertebra_cancellous`` the vertebrae eroded twice; ``fat`` the peak of unlabelled body
    voxels; ``air`` outside the body above the table; ``bowel_gas`` bowel/stomach voxels below
    ``GAS_THRESHOLD_HU``; ``table`` voxels above ``BODY_THRESHOLD_HU`` outside the body.
    """
    ct_img, seg_img = nib.load(str(ct_path)), nib.load(str(seg_path))
    if ct_img.shape != seg_img.shape or not np.allclose(ct_img.affine, seg_img.affine, atol=1e-3):
        raise ValueError("CT and label map must share one voxel grid")
    ct = np.asarray(ct_img.dataobj, dtype=np.float32)
    seg = np.asarray(seg_img.dataobj).astype(np.int16)
    slice_axis = int(np.argmax(np.abs(ct_img.affine[2, :3])))
    body = body_mask(ct, slice_axis)

    tissues = {}
    for name, classes in TOTALSEG_CLASSES.items():
        mask = np.isin(seg, classes)
        if name in ("stomach", "small_bowel", "duodenum", "colon"):
            mask &= ct > GAS_THRESHOLD_HU  # the wall and contents; gas is measured apart
        if mask.any():
            inside = mask if name in THIN_STRUCTURES else _interior(mask)
            tissues[name] = _stats(ct[inside], classes)
    vertebrae = np.isin(seg, TOTALSEG_CLASSES["vertebrae"])
    cancellous = ndimage.binary_erosion(vertebrae, iterations=2)
    tissues["vertebra_cancellous"] = _stats(ct[cancellous], TOTALSEG_CLASSES["vertebrae"])
    bowel = np.isin(seg, (6, 18, 19, 20))
    tissues["bowel_gas"] = _stats(ct[bowel & (ct < GAS_THRESHOLD_HU)], (6, 18, 19, 20))
    unlabelled_body = ndimage.binary_erosion(body, iterations=2) & (seg == 0)
    tissues["fat"] = _fat_peak(ct[unlabelled_body])
    outside = ~ndimage.binary_dilation(body, iterations=2)
    tissues["table"] = _stats(ct[outside & (ct > BODY_THRESHOLD_HU)])
    air = outside & ~ndimage.binary_dilation(ct > BODY_THRESHOLD_HU, iterations=2)
    tissues["air"] = _stats(ct[air])

    soft = np.isin(seg, TOTALSEG_CLASSES["liver"] + TOTALSEG_CLASSES["spleen"])
    return {
        "source": {
            "ct": Path(ct_path).name,
            "labels": Path(seg_path).name,
            "spacing_mm": [round(float(s), 4) for s in ct_img.header.get_zooms()[:3]],
            "class_map": "TotalSegmentator v2 'total' (117 classes)",
        },
        "tissues": dict(sorted(tissues.items())),
        "noise": _noise(ct, soft),
    }


def load_tissue_hu(path: str | Path = TISSUE_HU_JSON) -> dict:
    """The committed measurements: ``{tissue: {mean, std, ...}}`` plus ``"noise"``."""
    data = json.loads(Path(path).read_text())
    return {**data["tissues"], "noise": data["noise"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", type=Path, help="CT volume (HU), NIfTI")
    parser.add_argument("labels", type=Path, help="TotalSegmentator 117-class label map, NIfTI")
    parser.add_argument("--out", type=Path, default=TISSUE_HU_JSON, help="JSON to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = measure_tissue_hu(args.ct, args.labels)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    logger.info("wrote %s (%d tissues)", args.out, len(result["tissues"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
