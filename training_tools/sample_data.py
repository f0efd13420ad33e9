"""Rebuild the small data shipped in the repository from the full data set in ``../shared``.

    python -m training_tools.sample_data --shared ../shared/data

writes ``Testing/Data/kits19`` (real KiTS19 masks, cropped), ``Testing/Data/totalsegmentator``
(the real 3 mm CT and its label map) and the demo case
``KidneyTumorSeg/Resources/Sample/case_sample`` (a phantom around one real mask, cropped to the
kidneys' slab and the body). Crops keep world coordinates: the new origin is the old affine
applied to the crop's first voxel.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from training_tools.phantoms import make_phantom_case

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

# Half-open voxel ranges (z, y, x) of each mask kept for the tests; None keeps the whole volume.
KITS_CROPS: dict[str, Box | None] = {
    "case_00005": ((159, 482), (241, 363), (180, 450)),  # 0.5 mm slices, one (left) kidney, 60 mL tumor
    "case_00015": ((24, 70), (248, 413), (94, 433)),  # 3 mm slices, stored as uint16, two kidneys
    "case_00030": None,  # 5 mm slices, whole 512 x 512 slices, 1.46 L tumor
}
TOTALSEG_FILES = ("example_ct.nii.gz", "example_ct_sm.nii.gz", "example_seg.nii.gz", "LICENSE")
SAMPLE_CASE, SAMPLE_SEED, SAMPLE_SLICES = "case_00048", 5, (11, 41)  # 5 mm slices, two kidneys
BODY_HU = -500  # the demo sample is cropped in-plane to voxels above this, plus a margin
BODY_MARGIN_PX = 8


def crop_image(img: nib.Nifti1Image, box: Box) -> nib.Nifti1Image:
    """Crop a NIfTI image to half-open voxel ranges, keeping its world coordinates."""
    index = tuple(slice(lo, hi) for lo, hi in box)
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.array([box[0][0], box[1][0], box[2][0], 1.0]))[:3]
    data = np.asarray(img.dataobj)[index]
    header = img.header.copy()
    return nib.Nifti1Image(data, affine, header)


def save_compressed(img: nib.Nifti1Image, path: Path) -> None:
    """Write ``.nii.gz`` at gzip level 9 (nibabel's default is 1): the shipped files stay small."""
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def write_kits_masks(masks_dir: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, box in KITS_CROPS.items():
        img = nib.load(str(masks_dir / f"{name}.nii.gz"))
        out = img if box is None else crop_image(img, box)
        save_compressed(out, out_dir / f"{name}.nii.gz")
        written.append(out_dir / f"{name}.nii.gz")
    return written


def _body_box(hu: np.ndarray, slices: tuple[int, int]) -> Box:
    body = (hu[slices[0] : slices[1]] > BODY_HU).any(axis=0)
    ys, xs = np.nonzero(body.any(axis=1))[0], np.nonzero(body.any(axis=0))[0]
    grow = BODY_MARGIN_PX
    return (
        slices,
        (max(int(ys[0]) - grow, 0), min(int(ys[-1]) + grow + 1, hu.shape[1])),
        (max(int(xs[0]) - grow, 0), min(int(xs[-1]) + grow + 1, hu.shape[2])),
    )


def write_demo_sample(masks_dir: Path, out_dir: Path) -> Path:
    """The phantom of ``SAMPLE_CASE`` (seed ``SAMPLE_SEED``) cropped to ``SAMPLE_SLICES`` and the body."""
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = make_phantom_case(masks_dir / f"{SAMPLE_CASE}.nii.gz", tmp, SAMPLE_SEED)
        imaging = nib.load(str(case_dir / "imaging.nii.gz"))
        box = _body_box(np.asarray(imaging.dataobj), SAMPLE_SLICES)
        target = out_dir / "case_sample"
        target.mkdir(parents=True, exist_ok=True)
        for filename in ("imaging.nii.gz", "segmentation.nii.gz"):
            save_compressed(crop_image(nib.load(str(case_dir / filename)), box), target / filename)
    logger.info("demo sample: %s seed %d, voxels %s", SAMPLE_CASE, SAMPLE_SEED, box)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the full data folder")
    parser.add_argument("--repo", type=Path, default=REPO, help="repository root to write into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    masks = args.shared / "kits19" / "masks"
    kits_out = args.repo / "Testing" / "Data" / "kits19"
    write_kits_masks(masks, kits_out)
    shutil.copyfile(args.shared / "kits19" / "LICENSE", kits_out / "LICENSE")
    totalseg_out = args.repo / "Testing" / "Data" / "totalsegmentator"
    totalseg_out.mkdir(parents=True, exist_ok=True)
    for filename in TOTALSEG_FILES:
        shutil.copyfile(args.shared / "totalsegmentator" / filename, totalseg_out / filename)
    sample_out = args.repo / "KidneyTumorSeg" / "Resources" / "Sample"
    write_demo_sample(masks, sample_out)
    shutil.copyfile(args.shared / "kits19" / "LICENSE", sample_out / "LICENSE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
