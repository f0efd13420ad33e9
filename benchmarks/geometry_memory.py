"""Peak memory and time of the geometry round trip on the largest KiTS19 case (the issue asks < 2 GB).

Steps, each timed, in a fresh child process so that its peak RSS is the pipeline's alone:
read_image(mask) -> working_frame_for -> to_working_frame(CT-like int16 = mask * 100, order 1, float32)
-> to_working_frame(mask, order 0, uint8) -> labels_to_source.

    python benchmarks/geometry_memory.py                  # largest case in ../shared/data/kits19/masks
    python benchmarks/geometry_memory.py --slices 1059    # the same case padded to 1059 slices
    python benchmarks/geometry_memory.py --mask some.nii.gz

Prints one JSON object: case, shapes, seconds per step, peak RSS in MB (of the child).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MASKS = REPO.parent / "shared" / "data" / "kits19" / "masks"


def largest_mask(folder: Path) -> Path:
    """The mask with the most voxels (read from headers only)."""
    import nibabel as nib
    import numpy as np

    return max(sorted(folder.glob("*.nii.gz")), key=lambda p: int(np.prod(nib.load(str(p)).shape)))


def padded_copy(mask: Path, slices: int, folder: Path) -> Path:
    """``mask`` padded with empty slices (axis 0) to ``slices``, written to ``folder``."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(mask))
    array = np.asarray(image.dataobj, dtype=np.uint8)
    padded = np.zeros((slices, *array.shape[1:]), np.uint8)
    padded[: min(slices, array.shape[0])] = array[:slices]
    path = folder / f"{mask.name.removesuffix('.nii.gz')}_{slices}.nii.gz"
    nib.save(nib.Nifti1Image(padded, image.affine), str(path))
    return path


def measure(mask: Path) -> dict:
    """Run the round trip on ``mask`` in this process; seconds per step and peak RSS (MB)."""
    sys.path.insert(0, str(REPO / "KidneyTumorSeg"))
    import numpy as np

    from KidneyTumorSegLib.geometry import labels_to_source, to_working_frame, working_frame_for
    from KidneyTumorSegLib.imageio import read_image

    seconds = {}
    start = time.perf_counter()
    image = read_image(mask)
    seconds["read_image"] = time.perf_counter() - start
    start = time.perf_counter()
    frame = working_frame_for(image.array.shape, image.affine)
    seconds["working_frame_for"] = time.perf_counter() - start
    ct = image.array.astype(np.int16)
    ct *= 100
    start = time.perf_counter()
    ct_working = to_working_frame(ct, frame, order=1)
    seconds["to_working_frame_ct_order1"] = time.perf_counter() - start
    del ct, ct_working
    start = time.perf_counter()
    labels_working = to_working_frame(image.array, frame, order=0, dtype=np.uint8)
    seconds["to_working_frame_labels_order0"] = time.perf_counter() - start
    start = time.perf_counter()
    back = labels_to_source(labels_working, frame)
    seconds["labels_to_source"] = time.perf_counter() - start
    assert back.shape == image.array.shape
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB
    return {
        "case": mask.name, "input_shape": list(image.array.shape), "input_dtype": str(image.array.dtype),
        "working_shape": list(frame.shape), "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 2), "peak_rss_mb": round(peak_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, help="a label map; default: the largest shared KiTS19 mask")
    parser.add_argument("--slices", type=int, help="pad (or cut) the mask to this many slices first")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.mask)))
        return
    mask = args.mask or largest_mask(MASKS)
    with tempfile.TemporaryDirectory() as folder:
        if args.slices:
            mask = padded_copy(mask, args.slices, Path(folder))
        child = subprocess.run([sys.executable, __file__, "--child", "--mask", str(mask)],
                               check=True, capture_output=True, text=True)
    print(child.stdout.strip())


if __name__ == "__main__":
    main()
