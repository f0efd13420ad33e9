"""How a bundle does on the one real CT in the repository, as JSON: kidney Dice, crop coverage, seconds.

The CT is TotalSegmentator's example (non-contrast, 3 mm voxels, Apache-2.0). Its reference is the
TotalSegmentator label map of the 30-slice excerpt (classes 2 and 3: right and left kidney).

- ``example_ct_sm`` (the 30 slices, ``Testing/Data/totalsegmentator``): kidney Dice (label > 0
  against the reference), precision, recall, the share of reference kidney voxels inside stage 1's
  crop, whether a kidney was found, the share of the labelled voxels (whole image) called tumor
  (the scan has no tumor), and the seconds of the whole cascade.
- ``example_ct`` (the whole scan, 112 slices, in ``Testing/Data/totalsegmentator`` too): the cascade
  runs on the whole scan and is scored on the reference's 30 slices only (``example_ct_sm`` is its
  slices 82-111; the kidneys reach below them, where there is no reference), or on a whole-volume
  reference given with ``--whole-reference``.

    python benchmarks/real_ct.py                               # shipped bundle, both volumes
    python benchmarks/real_ct.py --bundle my_bundle --out real_ct.json

The real CT is a test, never training data: nothing here feeds back into training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = ROOT / "Testing" / "Data" / "totalsegmentator"
KIDNEY_CLASSES = (2, 3)  # TotalSegmentator "total": right and left kidney
EXCERPT_FIRST_SLICE = 82  # example_ct_sm is example_ct[:, :, 82:112]


def reference_kidneys(path: Path) -> np.ndarray:
    """Boolean kidney mask of a TotalSegmentator label map (input grid ``[i, j, k]``)."""
    from KidneyTumorSegLib.imageio import read_image

    return np.isin(np.asarray(read_image(path).array), KIDNEY_CLASSES)


def measure(image_path: Path, reference: np.ndarray, bundle: Path | None, threads: int,
            scored: tuple[slice, ...] | None = None) -> dict:
    """The cascade on one image, scored against a kidney ``reference`` on the image's grid, inside
    the ``scored`` region of that grid only (default: all of it)."""
    import torch

    from KidneyTumorSegLib.bundle import default_bundle_path, load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.geometry import labels_to_source, working_frame_for
    from KidneyTumorSegLib.imageio import read_image
    from KidneyTumorSegLib.metrics import dice

    torch.set_num_threads(threads)
    loaded = load_bundle(bundle or default_bundle_path())
    start = time.perf_counter()
    image = read_image(image_path)
    result = Cascade(loaded, InferenceOptions(device="cpu")).segment(image)
    seconds = time.perf_counter() - start
    crop = np.zeros(result.labels_working.shape, np.uint8)
    crop[result.crop_box.slices] = 1
    in_crop = labels_to_source(crop, working_frame_for(image.array.shape, image.affine)) > 0
    whole = result.labels > 0
    scored = scored or tuple(slice(None) for _ in range(3))
    found, reference, in_crop = whole[scored], reference[scored], in_crop[scored]
    overlap = int(np.count_nonzero(found & reference))
    return {
        "image": image_path.name,
        "bundle": loaded.manifest.get("name"),
        "kidney_dice": round(dice(found, reference), 4),
        "precision": round(overlap / max(int(found.sum()), 1), 4),
        "recall": round(overlap / max(int(reference.sum()), 1), 4),
        "crop_coverage": round(int(np.count_nonzero(in_crop & reference)) / max(int(reference.sum()), 1), 4),
        "kidney_found": bool(found.any()),
        "labelled_called_tumor": round(int((result.labels == 2).sum()) / max(int(whole.sum()), 1), 4),
        "kidney_voxels": {"found": int(found.sum()), "reference": int(reference.sum()),
                          "found_in_the_whole_image": int(whole.sum())},
        "crop_box_working": result.crop_box.to_json(),
        "stage1_decisions": list(result.stage1.decisions) if result.stage1 else [],
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped demo bundle)")
    parser.add_argument("--excerpt", type=Path, default=TEST_DATA / "example_ct_sm.nii.gz", help="the 30-slice CT")
    parser.add_argument("--reference", type=Path, default=TEST_DATA / "example_seg.nii.gz",
                        help="its TotalSegmentator label map")
    parser.add_argument("--whole", type=Path, default=TEST_DATA / "example_ct.nii.gz", help="the whole scan")
    parser.add_argument("--whole-reference", type=Path, default=None,
                        help="a TotalSegmentator label map of the whole scan (default: the excerpt's, on its slices)")
    parser.add_argument("--skip-whole", action="store_true", help="only the excerpt")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))

    excerpt_reference = reference_kidneys(args.reference)
    result = {"example_ct_sm": measure(args.excerpt, excerpt_reference, args.bundle, args.threads)}
    if not args.skip_whole:
        from KidneyTumorSegLib.imageio import read_image

        if args.whole_reference is not None:
            reference, scored = reference_kidneys(args.whole_reference), None
            note = args.whole_reference.name
        else:
            reference = np.zeros(read_image(args.whole).array.shape, bool)
            last = EXCERPT_FIRST_SLICE + excerpt_reference.shape[2]
            reference[:, :, EXCERPT_FIRST_SLICE:last] = excerpt_reference
            scored = (slice(None), slice(None), slice(EXCERPT_FIRST_SLICE, last))
            note = f"{args.reference.name}: scored on slices {EXCERPT_FIRST_SLICE}-{last - 1} only"
        result["example_ct"] = {**measure(args.whole, reference, args.bundle, args.threads, scored), "reference": note}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
