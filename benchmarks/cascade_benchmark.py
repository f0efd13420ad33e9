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
    python benchmarks/cascade_benchmark.py --mask M --baseline main     # today's code beside this one
    python benchmarks/cascade_benchmark.py --mask M --device cuda,cpu   # the GPU's labels against the CPU's

``full`` is stage 2 alone over the whole volume, as a method without stage 1 would run it: no
stage 1, so no support rule either (support.py); ``cascade+compile`` is the cascade through
``torch.compile``. With an untrained bundle stage 1 predicts nothing useful, so
``--crop-from-truth`` still runs (and times) stage 1 but crops stage 2 like a trained stage 1
would: the true kidney box plus the stage-2 margin, without the support rule.

``--uncertainty on`` (the default) runs as the Slicer module does: the ensemble's uncertainty and
review score, and the uncertainty map (uint8, near the crop) and review mask written beside the labels; ``off`` writes
the labels only. With both, ``uncertainty_cost`` holds the ratios of time and peak memory.

``--baseline REF`` also runs every configuration with the engine of git commit ``REF`` (exported
with ``git archive``, first on the import path of its child processes). Runs that differ only in
code or device are compared voxel by voxel (``label_comparisons``). ``seconds_fixed`` is what is
not a network: reading, preparing, going back to the input grid and writing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUTS = ("channels_last", "contiguous")
UNCERTAINTY = ("on", "off")
MODES = ("cascade", "full", "cascade+compile", "full+compile")
FIXED_STEPS = ("read", "prepare", "to_input_grid", "write")
REPOSITORY = Path(__file__).resolve().parents[1]


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


def shown_path(path: Path | None) -> str | None:
    """``path`` as a result file records it: relative to the repository when inside it, else its name
    (no machine paths in shared results)."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPOSITORY)) if resolved.is_relative_to(REPOSITORY) else resolved.name


def emit_json(result: dict, out: Path | None, quiet: bool = False) -> None:
    """Print ``result`` as JSON (unless ``quiet``) and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    if not quiet:
        print(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")


def cached_case(mask_path: Path, slices: int | None, folder: Path) -> tuple[Path, Path]:
    """:func:`make_case` in ``folder/<mask>_<slices>``, reused when it is there already."""
    case_folder = folder / f"{mask_path.name.split('.')[0]}_{slices or 'all'}"
    image, labels = case_folder / "imaging.nii.gz", case_folder / "segmentation.nii.gz"
    if image.is_file() and labels.is_file():
        return image, labels
    case_folder.mkdir(parents=True, exist_ok=True)
    return make_case(mask_path, slices, case_folder)


def peak_rss_mb() -> float | None:
    """This process's own peak RSS in MB, through this checkout's ``peak_memory`` whichever engine
    a run imports (a baseline's may count the peak of the process that started it)."""
    spec = importlib.util.spec_from_file_location("peak_memory", REPOSITORY / "KidneyTumorSeg" / "KidneyTumorSegLib" / "peak_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_rss_mb()


def run_single(args: argparse.Namespace) -> dict:
    """One configuration in this process: read, prepare, stage 1, stage 2, back to the input grid,
    write; ``args.repeat`` times (a compiled or GPU run is warm from the second on)."""
    import torch

    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.bundle import load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.imageio import read_image, write_label_map
    from KidneyTumorSegLib.metrics import kits_dice
    from KidneyTumorSegLib.settings import DEFAULT_SETTINGS
    from KidneyTumorSegLib.stage1 import stage2_crop

    if args.threads:
        torch.set_num_threads(args.threads)
    mode, compiled = args.mode.split("+")[0], args.mode.endswith("+compile")
    start = time.perf_counter()
    bundle = load_bundle(args.bundle)
    load_seconds = time.perf_counter() - start
    settings = DEFAULT_SETTINGS
    if args.crop_from_truth:  # untrained stage 1: time its network, not a refinement of a random box or its support
        settings = dataclasses.replace(settings, stage1=dataclasses.replace(settings.stage1, refine_enabled=False,
                                                                            support_components=False))
    elif mode == "full":  # stage 2 alone, as a method without stage 1 runs it: no support either
        settings = dataclasses.replace(settings, stage1=dataclasses.replace(settings.stage1, support_components=False))
    cascade = Cascade(bundle, InferenceOptions(device=args.device, amp=args.amp, overlap=args.overlap, batch_size=args.batch_size,
                                               channels_last=args.layout == "channels_last", compile=compiled,
                                               uncertainty=args.uncertainty == "on", settings=settings))
    if cascade.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    each = []
    for _ in range(args.repeat):
        timings: dict[str, float] = {}
        begin = time.perf_counter()
        image = read_image(args.image)
        timings["read"] = time.perf_counter() - begin
        case = cascade.prepare(image)
        crop = None
        stage1_timings: dict[str, float] = {}
        if mode == "full":
            crop = Box.full(case.frame.shape)
        elif args.crop_from_truth:
            from KidneyTumorSegLib.geometry import to_working_frame

            aside = time.perf_counter()
            truth = to_working_frame(read_image(args.labels).array, case.frame, order=0, dtype=np.uint8)
            crop = stage2_crop(Box.from_mask(truth > 0), case.frame.shape)
            begin += time.perf_counter() - aside  # the true box is not part of a run
            cascade.locate(case)  # timed, result unused
            stage1_timings = {f"stage1/{k}": v for k, v in cascade.timings.items()}
        result = cascade.segment(image, crop, case=case)
        with tempfile.TemporaryDirectory() as folder:
            written = time.perf_counter()
            write_label_map(Path(folder) / "out.nii.gz", result.labels, image.affine)
            timings["write"] = time.perf_counter() - written
            if result.uncertainty is not None:  # as the Slicer module asks `segment` for them
                timings.update(write_uncertainty(result, case, image.affine, Path(folder)))
        if cascade.device.type == "cuda":
            torch.cuda.synchronize()
        each.append(time.perf_counter() - begin)
        timings = {**timings, **stage1_timings, **result.timings}
    if args.labels_out is not None:
        np.save(args.labels_out, np.ascontiguousarray(result.labels))
    truth = np.asarray(read_image(args.labels).array, np.uint8)
    return {
        "mode": args.mode,
        "layout": args.layout,
        "uncertainty": args.uncertainty,
        "device": str(cascade.device),
        "gpu": torch.cuda.get_device_name() if cascade.device.type == "cuda" else None,
        "amp": str(cascade.amp_dtype).replace("torch.", "") if cascade.amp_dtype is not None else None,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "input_shape": list(image.array.shape),
        "working_shape": list(case.frame.shape),
        "crop_shape": list(result.crop_box.size),
        "models": list(result.models),
        "seconds_end_to_end": round(each[-1], 3),
        "seconds_end_to_end_each": [round(t, 3) for t in each],
        "seconds_fixed": round(sum(timings.get(step, 0.0) for step in FIXED_STEPS), 3),
        "seconds": {"load_bundle": round(load_seconds, 3), **{k: round(v, 3) for k, v in timings.items()}},
        "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),  # user + system: starved runs show
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cascade.device.type == "cuda" else None,
        "dice": kits_dice(result.labels, truth),
        "review": None if result.review is None else result.review.to_json(),
        "engine_in_this_checkout": Path(sys.modules[Cascade.__module__].__file__).resolve().is_relative_to(REPOSITORY),
    }


def write_uncertainty(result, case, affine: np.ndarray, folder: Path) -> dict[str, float]:
    """Write the uncertainty map and review mask as `segment` writes them for the Slicer module;
    seconds to bring them onto the input grid and to write them. An engine from before
    uncertainty_files.py (``--baseline``) writes its float32 map on the whole input grid."""
    start = time.perf_counter()
    try:
        from KidneyTumorSegLib.uncertainty_files import uncertainty_near_crop, write_uncertainty_files
    except ImportError:
        from KidneyTumorSegLib.crop_values import crop_to_source
        from KidneyTumorSegLib.imageio import write_image

        on_input = crop_to_source(result.uncertainty, result.crop_box, case.frame)
        resampled = time.perf_counter()
        write_image(folder / "uncertainty.nii.gz", on_input, affine)
    else:
        near = uncertainty_near_crop(result.uncertainty, result.crop_box, case.frame, affine)
        resampled = time.perf_counter()
        with contextlib.ExitStack() as stack:
            write_uncertainty_files(stack, near, result.review.disputed_threshold, False,
                                    folder / "uncertainty.nii.gz", folder / "review.nii.gz")
    return {"uncertainty_to_input_grid": resampled - start, "write_uncertainty": time.perf_counter() - resampled}


def run_child(args: argparse.Namespace, config: dict, image: Path, labels: Path, labels_out: Path,
              baseline: Path | None) -> dict:
    """One configuration in a child process (its own peak RSS and GPU memory): its JSON, or its error.
    With ``baseline`` (an exported source tree) the child imports that tree's engine."""
    command = [sys.executable, __file__, "--mode", config["mode"], "--image", str(image), "--labels", str(labels),
               "--bundle", str(args.bundle), "--device", config["device"], "--threads", config["threads"],
               "--layout", config["layout"], "--uncertainty", config["uncertainty"], "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
               "--amp", args.amp, "--repeat", str(args.repeat), "--labels-out", str(labels_out)]
    if args.crop_from_truth:
        command.append("--crop-from-truth")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if baseline is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(baseline / "KidneyTumorSeg"), str(baseline), env.get("PYTHONPATH", "")])
    load = os.getloadavg()[0]
    described = {**config, "load_average_before": round(load, 2)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**described, "error": [f"stopped after {args.timeout:.0f} s"]}
    if done.returncode != 0:
        return {**described, "error": done.stderr.strip().splitlines()[-1:]}
    return {**described, **json.loads(done.stdout.strip().splitlines()[-1])}


def export_baseline(ref: str, folder: Path) -> tuple[Path, str]:
    """The source tree of git commit ``ref`` of this repository, exported under ``folder``; and its hash."""
    commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", commit], capture_output=True, check=True).stdout
    tree = folder / "baseline"
    tree.mkdir()
    archive_path = folder / "baseline.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(tree)
    return tree, commit


def checkout_state() -> dict | None:
    """The commit this checkout is at and whether its tracked files differ from it (None outside git)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run(["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(changed.stdout.strip())}


def speedups(runs: list[dict]) -> list[dict]:
    """End-to-end seconds of ``full`` over ``cascade`` (fastest trials) for each configuration that has both."""
    best = fastest(runs)
    return [{"slices": k[0], "threads": k[1], "layout": k[2], "uncertainty": k[3], "device": k[4], "code": k[5], "mode": k[6],
             "speedup": round(best[(*k[:6], k[6].replace("cascade", "full"))]["seconds_end_to_end"] / run["seconds_end_to_end"], 2)}
            for k, run in best.items() if k[6].startswith("cascade") and (*k[:6], k[6].replace("cascade", "full")) in best]


def fastest(runs: list[dict]) -> dict[tuple, dict]:
    """The fastest trial of each configuration, by (slices, threads, layout, uncertainty, device, code, mode)."""
    best: dict[tuple, dict] = {}
    for run in (r for r in runs if "error" not in r):
        key = run["slices"], run["threads"], run["layout"], run["uncertainty"], run["device"], run["code"], run["mode"]
        if key not in best or run["seconds_end_to_end"] < best[key]["seconds_end_to_end"]:
            best[key] = run
    return best


def uncertainty_costs(runs: list[dict]) -> list[dict]:
    """Time and peak memory with the uncertainty over without (fastest trials), for each configuration run both ways."""
    best = fastest(runs)
    costs = []
    for (slices, threads, layout, setting, device, code, mode), on in best.items():
        off = best.get((slices, threads, layout, "off", device, code, mode))
        if setting != "on" or off is None:
            continue
        cost = {"slices": slices, "threads": threads, "layout": layout, "mode": mode, "device": device, "code": code,
                "time_ratio": round(on["seconds_end_to_end"] / off["seconds_end_to_end"], 3),
                "peak_rss_ratio": round(on["peak_rss_mb"] / off["peak_rss_mb"], 3),
                "seconds_added": {step: on["seconds"].get(step) for step in ("uncertainty", "uncertainty_to_input_grid", "write_uncertainty")}}
        if on["peak_gpu_mb"] and off["peak_gpu_mb"]:
            cost["peak_gpu_ratio"] = round(on["peak_gpu_mb"] / off["peak_gpu_mb"], 3)
        costs.append(cost)
    return costs


def label_comparisons(runs: list[dict], labels: list[Path]) -> list[dict]:
    """Runs of one depth, mode, layout and thread count that differ in code or device, each against the
    first (first trials only: the others repeat them)."""
    groups: dict[tuple, list[int]] = {}
    for index, run in enumerate(runs):
        if "error" not in run and run["trial"] == 0:
            groups.setdefault((run["slices"], run["mode"], run["layout"], run["uncertainty"], run["threads"]), []).append(index)
    comparisons = []
    for members in groups.values():
        reference = np.load(labels[members[0]])
        for index in members[1:]:
            other = np.load(labels[index])
            differing = int(np.count_nonzero(other != reference)) if other.shape == reference.shape else -1
            comparisons.append({"slices": runs[index]["slices"], "mode": runs[index]["mode"], "layout": runs[index]["layout"],
                                "uncertainty": runs[index]["uncertainty"], "threads": runs[index]["threads"],
                                "a": {"code": runs[members[0]]["code"], "device": runs[members[0]]["device"]},
                                "b": {"code": runs[index]["code"], "device": runs[index]["device"]},
                                "equal": differing == 0, "voxels_differing": differing})
    return comparisons


def main(argv: list[str] | None = None) -> int:
    from KidneyTumorSegLib.cascade import InferenceOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, help="real KiTS19 mask to build the phantom case on")
    parser.add_argument("--slices", default=None,
                        help="comma-separated slice counts to scale over: the slice axis is padded / cut to each")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--untrained", default=None, help="build an untrained bundle of this width ('paper' = network defaults)")
    parser.add_argument("--modes", default="cascade,full", help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--device", default="cpu", help="comma-separated devices (cpu, cuda): the same runs on each")
    parser.add_argument("--amp", default=InferenceOptions.amp, help="autocast on the GPU: auto (bf16 where supported), bf16, fp16, none")
    parser.add_argument("--threads", default="0", help="comma-separated torch thread counts to scale over (0 = default)")
    parser.add_argument("--overlap", type=float, default=InferenceOptions.overlap)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop-from-truth", action="store_true")
    parser.add_argument("--layouts", default="channels_last",
                        help="comma-separated memory layouts of the networks: channels_last (default) and/or contiguous")
    parser.add_argument("--uncertainty", default="on",
                        help="comma-separated: on (the ensemble's uncertainty, review score and map on the input grid, "
                             "as the Slicer module runs) and/or off (labels only)")
    parser.add_argument("--repeat", type=int, default=1, help="segmentations per process; the last one is reported")
    parser.add_argument("--baseline", default=None, help="git commit whose engine also runs every configuration (e.g. main)")
    parser.add_argument("--baseline-modes", default=None, help="the modes the baseline runs (default: every mode)")
    parser.add_argument("--trials", type=int, default=1,
                        help="runs of each configuration, each in its own process; speed-ups take the fastest")
    parser.add_argument("--case-dir", type=Path, default=None, help="keep the phantom cases here and reuse them")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a configuration may take; then it is an error")
    parser.add_argument("--conditions", default="", help="how the machine was loaded, recorded as given")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every configuration)")
    # internal: one configuration in a child process
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="channels_last", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--labels", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layouts, modes = args.layouts.split(","), args.modes.split(",")
    if set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts must name {' and/or '.join(LAYOUTS)}, got {args.layouts}")
    baseline_modes = modes if args.baseline_modes is None else args.baseline_modes.split(",")
    if set(modes + baseline_modes) - set(MODES):
        parser.error(f"--modes and --baseline-modes must name some of {', '.join(MODES)}, got {args.modes}")
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
        codes = {"current": None}
        baseline_commit = None
        if args.baseline is not None:
            codes["baseline"], baseline_commit = export_baseline(args.baseline, folder)
        depths = [None] if args.slices is None else [int(n) for n in args.slices.split(",")]
        header = {"machine": platform.node(), "cpu_count": os.cpu_count(), "conditions": args.conditions,
                  "mask": shown_path(args.mask),
                  "bundle": f"untrained (width {args.untrained}, temporary)" if args.untrained is not None else shown_path(args.bundle),
                  "current": checkout_state(),
                  "baseline": None if args.baseline is None else {"ref": args.baseline, "commit": baseline_commit},
                  "overlap": args.overlap, "batch_size": args.batch_size, "amp": args.amp, "repeat": args.repeat,
                  "trials": args.trials}
        runs, labels = [], []
        for depth in depths:
            image, truth = cached_case(args.mask, depth, args.case_dir or folder)
            for threads, layout, device, mode, setting, (code, tree), trial in itertools.product(
                    args.threads.split(","), layouts, args.device.split(","), modes, settings, codes.items(), range(args.trials)):
                if code == "baseline" and mode not in baseline_modes:
                    continue
                labels.append(folder / f"labels_{len(labels)}.npy")
                config = {"slices": depth, "code": code, "mode": mode, "device": device, "threads": threads,
                          "layout": layout, "uncertainty": setting, "trial": trial}
                runs.append(run_child(args, config, image, truth, labels[-1], tree))
                emit_json({**header, "complete": False, "runs": runs}, args.out, quiet=True)
        result = {**header, "complete": True, "runs": runs, "speedup_cascade_vs_full": speedups(runs),
                  "uncertainty_cost": uncertainty_costs(runs), "label_comparisons": label_comparisons(runs, labels)}
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
