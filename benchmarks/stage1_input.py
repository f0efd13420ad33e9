"""Whether stage 1's x4 input can come from less than every full-resolution voxel, as JSON.

SPEC: stage 1 sees the pre-processed image (linear resampling to the working frame, HU clipped
to [-200, 300], scaled to [0, 1]) down-sampled by a x4 block mean. Resampling only the stage-2
crop at full resolution would need the x4 grid from something cheaper, which can only be linear
in the CT (resampling straight to the x4 grid): the block mean of the unclipped HU, clipped after.
This measures, on a phantom of a real mask (as cascade_benchmark.py builds it), how many x4
blocks hold a clipped full-resolution voxel, how far the cheaper input lies from the rule's,
and what stage 1 of ``--bundle`` makes of each (its boxes and its support).

    python benchmarks/stage1_input.py --mask case_00098.nii.gz --slices 600 --bundle KidneyTumorSeg/Resources/Models/demo
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cascade_benchmark import cached_case, emit_json, shown_path  # noqa: E402


def stage1_view(cascade, down: np.ndarray, shape: tuple[int, int, int]) -> dict:
    """Stage 1's boxes and support for the x4 input ``down``."""
    from KidneyTumorSegLib.stage1 import landmark_box, segmentation_box
    from KidneyTumorSegLib.support import stage1_support

    outputs = cascade._run_3d("stage1", down, "seg+reg", lambda *args: None, "stage1", None)
    boxes = {"segmentation_box": segmentation_box(outputs[0], shape), "landmark_box": landmark_box(outputs[1:], shape)}
    return {"boxes": {name: None if box is None else box.to_json() for name, box in boxes.items()},
            "support": stage1_support(outputs[0])}


def main(argv: list[str] | None = None) -> int:
    import torch

    from KidneyTumorSegLib.bundle import load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.imageio import read_image
    from KidneyTumorSegLib.preprocessing import downsample_mean
    from KidneyTumorSegLib.resample_torch import to_working_frame_torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    cascade = Cascade(load_bundle(args.bundle, roles=("stage1",)), InferenceOptions(device="cpu"))
    window = cascade.bundle.intensity
    with tempfile.TemporaryDirectory() as folder:
        image = read_image(cached_case(args.mask, args.slices, Path(folder))[0])
    case = cascade.prepare(image)
    with torch.inference_mode():
        hu = to_working_frame_torch(image.array, case.frame, "cpu", order=1).numpy()
    rule = downsample_mean(case.normalized)  # clip each voxel, then average: what the cascade feeds stage 1
    cheaper = ((np.clip(downsample_mean(hu), window.hu_min, window.hu_max) - window.hu_min)
               / (window.hu_max - window.hu_min)).astype(np.float32)  # average, then clip
    clipped = downsample_mean(((hu < window.hu_min) | (hu > window.hu_max)).astype(np.float32)) > 0
    difference = np.abs(cheaper - rule)
    views = {name: stage1_view(cascade, down, case.frame.shape) for name, down in (("rule", rule), ("cheaper", cheaper))}
    result = {
        "mask": shown_path(args.mask), "slices": args.slices, "bundle": shown_path(args.bundle), "working_shape": list(case.frame.shape),
        "x4_voxels": int(rule.size),
        "x4_blocks_with_a_clipped_voxel": round(float(clipped.mean()), 4),
        "cheaper_input_differs_in": round(float((difference > 0).mean()), 4),
        "cheaper_input_largest_difference": round(float(difference.max()), 4),
        "stage1_boxes": {name: view["boxes"] for name, view in views.items()},
        "stage1_support_voxels": {name: int(view["support"].sum()) for name, view in views.items()},
        "stage1_support_differs_in": int(np.count_nonzero(views["rule"]["support"] != views["cheaper"]["support"])),
    }
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
