"""Speed and memory of the cascade against stage 2 over the whole volume, side by side, as JSON.

Each configuration runs in its own child process so peak RSS and GPU memory are its own. A case
is a phantom CT built on a real KiTS19 mask (``--mask``), optionally padded or cut to
``--slices`` slices along its slice axis, written as NIfTI and read back like a user's file.

    python benchmarks/cascade_benchmark.py --mask Testing/Data/kits19/<case>.nii.gz \
        --bundle KidneyTumorSeg/Resources/Models/demo --modes cascade,full --out bench.json
    python benchmarks/cascade_benchmark.py --mask M --untrained paper --crop-from-truth --device cuda
    python benchmarks/cascade_benchmark.py --mask M --slices 64,300,600 --threads 1,2   # depth and threads
    python benchmarks/cascade_benchmark.py --mask M --layouts channels_last,contiguous  # memory layouts
    python benchmarks/cascade_benchmark.py --mask M --uncertainty on,off                # the uncertainty's cost

``full`` is stage 2 alone over the whole volume, as a method without stage 1 would run it: no
stage 1, so no support rule either (support.py). With an untrained bundle stage 1 predicts
nothing useful, so ``--crop-from-truth`` still runs (and times) stage 1 but crops stage 2 like a
trained stage 1 would: the true kidney box plus the stage-2 margin, without the support rule.

``--uncertainty on`` (the default) runs as the Slicer module does: the ensemble's uncertainty and
review score, and the uncertainty map on the input grid written beside the labels; ``off`` writes
the labels only. With both, ``uncertainty_cost`` holds the ratios of time and peak memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUTS = ("channels_last", "contiguous")
UNCERTAINTY = ("on", "off")


def make_case(mask_path: Path, slices: int | None, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Phantom CT + labels of ``mask_path`` (slice axis padded/cut to ``slices``) as NIfTI files."""
    import nibabel as nib

    from training_tools.phantoms import make_phantom

    mask = nib.load(str(mask_path))
    labels = np.asarray(mask.dataobj, dtype=np.uint8)
    if slices is not None and slices != labels.shape[0]:
        z = np.flatnonzero(labels.any(axis=(1, 2)))
        centre = int(z.mean()) if z.size else labels.shape[0] // 2
        start = max(0, centre - slices // 2)
        labels = labels[start:start + slices]
        if labels.shape[0] < slices:
            labels = np.pad(labels, ((0, slices - labels.shape[0]), (0, 0), (0, 0)))
    spacing = tuple(float(s) for s in mask.header.get_zooms()[:3])
    ct = make_phantom(labels, spacing, np.random.default_rng(seed))
    image_path, labels_path = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    nib.save(nib.Nifti1Image(ct, mask.affine), str(image_path))
    nib.save(nib.Nifti1Image(labels, mask.affine), str(labels_path))
    return image_path, labels_path


def run_single(args: argparse.Namespace) -> dict:
    """One configuration in this process: read, prepare, stage 1, stage 2, back to the input grid, write."""
    import torch

    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.bundle import load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.crop_values import crop_to_source
    from KidneyTumorSegLib.imageio import read_image, write_image, write_label_map
    from KidneyTumorSegLib.metrics import kits_dice
    from KidneyTumorSegLib.settings import DEFAULT_SETTINGS
    from KidneyTumorSegLib.stage1 import stage2_crop

    if args.threads:
        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bundle = load_bundle(args.bundle)
    timings["load_bundle"] = time.perf_counter() - start
    settings = DEFAULT_SETTINGS
    if args.crop_from_truth:  # untrained stage 1: time its network, not a refinement of a random box or its support
        settings = dataclasses.replace(settings, stage1=dataclasses.replace(settings.stage1, refine_enabled=False,
                                                                            support_components=False))
    elif args.mode == "full":  # stage 2 alone, as a method without stage 1 runs it: no support either
        settings = dataclasses.replace(settings, stage1=dataclasses.replace(settings.stage1, support_components=False))
    cascade = Cascade(bundle, InferenceOptions(device=args.device, overlap=args.overlap, batch_size=args.batch_size,
                                               channels_last=args.layout == "channels_last", compile=args.compile,
                                               uncertainty=args.uncertainty == "on", settings=settings))
    if cascade.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    image = read_image(args.image)
    timings["read"] = time.perf_counter() - begin
    case = cascade.prepare(image)
    crop = None
    stage1_timings: dict[str, float] = {}
    if args.mode == "full":
        crop = Box.full(case.frame.shape)
    elif args.crop_from_truth:
        from KidneyTumorSegLib.geometry import to_working_frame

        truth = to_working_frame(read_image(args.labels).array, case.frame, order=0, dtype=np.uint8)
        crop = stage2_crop(Box.from_mask(truth > 0), case.frame.shape)
        cascade.locate(case)  # timed, result unused
        stage1_timings = {f"stage1/{k}": v for k, v in cascade.timings.items()}
    result = cascade.segment(image, crop, case=case)
    with tempfile.TemporaryDirectory() as folder:
        begin = time.perf_counter()
        write_label_map(Path(folder) / "out.nii.gz", result.labels, image.affine)
        timings["write"] = time.perf_counter() - begin
        if result.uncertainty is not None:  # as `segment --uncertainty` and the Slicer module write it
            begin = time.perf_counter()
            on_input = crop_to_source(result.uncertainty, result.crop_box, case.frame)
            timings["uncertainty_to_input_grid"] = time.perf_counter() - begin
            write_image(Path(folder) / "uncertainty.nii.gz", on_input, image.affine)
            timings["write_uncertainty"] = time.perf_counter() - begin - timings["uncertainty_to_input_grid"]
            del on_input
    end_to_end = time.perf_counter() - start - timings["load_bundle"]
    if cascade.device.type == "cuda":
        torch.cuda.synchronize()
    truth = np.asarray(read_image(args.labels).array, np.uint8)
    return {
        "mode": args.mode,
        "layout": args.layout,
        "uncertainty": args.uncertainty,
        "compile": args.compile,
        "device": str(cascade.device),
        "gpu": torch.cuda.get_device_name() if cascade.device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "input_shape": list(image.array.shape),
        "working_shape": list(case.frame.shape),
        "crop_shape": list(result.crop_box.size),
        "models": list(result.models),
        "seconds_end_to_end": round(end_to_end, 3),
        "seconds": {k: round(v, 3) for k, v in {**timings, **stage1_timings, **result.timings}.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cascade.device.type == "cuda" else None,
        "dice": kits_dice(result.labels, truth),
        "review": None if result.review is None else result.review.to_json(),
    }


def run_child(args: argparse.Namespace, mode: str, threads: str, layout: str, uncertainty: str, image: Path, labels: Path) -> dict:
    """One configuration in a child process (its own peak RSS and GPU memory): its JSON, or its error."""
    command = [sys.executable, __file__, "--mode", mode, "--image", str(image), "--labels", str(labels),
               "--bundle", str(args.bundle), "--device", args.device, "--threads", threads, "--layout", layout,
               "--overlap", str(args.overlap), "--batch-size", str(args.batch_size), "--uncertainty", uncertainty]
    if args.crop_from_truth:
        command.append("--crop-from-truth")
    if args.compile:
        command.append("--compile")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        return {"mode": mode, "threads": threads, "layout": layout, "uncertainty": uncertainty,
                "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def speedups(runs: list[dict]) -> list[dict]:
    """End-to-end seconds of ``full`` over ``cascade`` for each depth, thread count and layout that
    has both (with the uncertainty on, else off)."""
    chosen = "on" if any(r.get("uncertainty") == "on" for r in runs) else "off"
    timed = {(r["slices"], r["threads"], r["layout"], r["mode"]): r["seconds_end_to_end"]
             for r in runs if "error" not in r and r["uncertainty"] == chosen}
    return [{"slices": depth, "threads": threads, "layout": layout,
             "speedup": round(timed[(depth, threads, layout, "full")] / seconds, 2)}
            for (depth, threads, layout, mode), seconds in timed.items()
            if mode == "cascade" and (depth, threads, layout, "full") in timed]


def uncertainty_costs(runs: list[dict]) -> list[dict]:
    """Time and peak memory with the uncertainty over without, for each configuration run both ways."""
    by_setting = {(r["slices"], r["threads"], r["layout"], r["mode"], r["uncertainty"]): r for r in runs if "error" not in r}
    costs = []
    for (depth, threads, layout, mode, setting), on in by_setting.items():
        off = by_setting.get((depth, threads, layout, mode, "off"))
        if setting != "on" or off is None:
            continue
        cost = {"slices": depth, "threads": threads, "layout": layout, "mode": mode,
                "time_ratio": round(on["seconds_end_to_end"] / off["seconds_end_to_end"], 3),
                "peak_rss_ratio": round(on["peak_rss_mb"] / off["peak_rss_mb"], 3),
                "seconds_added": {key: on["seconds"].get(key) for key in ("uncertainty", "uncertainty_to_input_grid", "write_uncertainty")}}
        if on["peak_gpu_mb"] and off["peak_gpu_mb"]:
            cost["peak_gpu_ratio"] = round(on["peak_gpu_mb"] / off["peak_gpu_mb"], 3)
        costs.append(cost)
    return costs


def main(argv: list[str] | None = None) -> int:
    from KidneyTumorSegLib.cascade import InferenceOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, help="real KiTS19 mask to build the phantom case on")
    parser.add_argument("--slices", default=None,
                        help="comma-separated slice counts to scale over: the slice axis is padded / cut to each")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--untrained", default=None, help="build an untrained bundle of this width ('paper' = network defaults)")
    parser.add_argument("--modes", default="cascade,full", help="cascade and/or full (stage 2 over the whole volume)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="0", help="comma-separated torch thread counts to scale over (0 = default)")
    parser.add_argument("--overlap", type=float, default=InferenceOptions.overlap)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop-from-truth", action="store_true")
    parser.add_argument("--layouts", default="channels_last",
                        help="comma-separated memory layouts of the networks: channels_last (default) and/or contiguous")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network")
    parser.add_argument("--uncertainty", default="on",
                        help="comma-separated: on (the ensemble's uncertainty, review score and map on the input grid, "
                             "as the Slicer module runs) and/or off (labels only)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    # internal: one configuration in a child process
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="channels_last", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--labels", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layouts = args.layouts.split(",")
    if set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts must name {' and/or '.join(LAYOUTS)}, got {args.layouts}")
    settings = args.uncertainty.split(",")
    if set(settings) - set(UNCERTAINTY):
        parser.error(f"--uncertainty must name {' and/or '.join(UNCERTAINTY)}, got {args.uncertainty}")
    if args.mode is not None:
        args.threads = int(args.threads)
        print(json.dumps(run_single(args)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.untrained is not None:
            from training_tools.untrained import make_untrained_bundle

            width = None if args.untrained == "paper" else int(args.untrained)
            args.bundle = make_untrained_bundle(folder / "bundle", base_channels=width)
        depths = [None] if args.slices is None else [int(n) for n in args.slices.split(",")]
        runs = []
        for depth in depths:
            case_folder = folder / f"case_{depth}"
            case_folder.mkdir()
            image, labels = make_case(args.mask, depth, case_folder)
            for threads in args.threads.split(","):
                for layout in layouts:
                    for mode in args.modes.split(","):
                        for setting in settings:
                            runs.append({"slices": depth, **run_child(args, mode, threads, layout, setting, image, labels)})
        bundle = f"untrained (width {args.untrained}, temporary)" if args.untrained is not None else str(args.bundle)
        result = {"machine": platform.node(), "cpu_count": os.cpu_count(), "mask": str(args.mask), "bundle": bundle,
                  "overlap": args.overlap, "batch_size": args.batch_size, "compile": args.compile, "runs": runs,
                  "speedup_cascade_vs_full": speedups(runs), "uncertainty_cost": uncertainty_costs(runs)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
