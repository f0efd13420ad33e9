"""Whether overlapping reading and writing with the networks would pay in ``batch``, as JSON.

Segments ``--cases`` copies of one phantom case (built on ``--mask`` as cascade_benchmark.py does)
twice with the same cascade: one case after the other, as ``batch`` runs them, and with one
worker thread that reads the next case and writes the last one while the networks run on the
current one. Both orders write the same label maps; the JSON gives both totals and the seconds
of reading and writing the overlap could hide at most.

    python benchmarks/batch_overlap.py --mask case_00098.nii.gz --bundle KidneyTumorSeg/Resources/Models/demo
    python benchmarks/batch_overlap.py --mask M --untrained paper --device cuda --slices 600
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cascade_benchmark import cached_case, emit_json, shown_path  # noqa: E402


def one_after_another(paths: list[Path], segment: Callable, read: Callable, write: Callable) -> dict:
    """Read, segment and write each case in turn; seconds of each step summed."""
    seconds = {"read": 0.0, "write": 0.0}
    start = time.perf_counter()
    for index, path in enumerate(paths):
        begin = time.perf_counter()
        image = read(path)
        seconds["read"] += time.perf_counter() - begin
        labels = segment(image)
        begin = time.perf_counter()
        write(index, labels, image)
        seconds["write"] += time.perf_counter() - begin
    return {"seconds_total": round(time.perf_counter() - start, 3), **{k: round(v, 3) for k, v in seconds.items()}}


def overlapped(paths: list[Path], segment: Callable, read: Callable, write: Callable) -> dict:
    """The next case is read and the last one written on a worker thread while the current one runs."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as worker:
        coming: Future = worker.submit(read, paths[0])
        writes: list[Future] = []
        for index in range(len(paths)):
            image = coming.result()
            if index + 1 < len(paths):
                coming = worker.submit(read, paths[index + 1])
            labels = segment(image)
            writes.append(worker.submit(write, index, labels, image))
        for done in writes:
            done.result()
    return {"seconds_total": round(time.perf_counter() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    import torch

    from KidneyTumorSegLib.bundle import load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.imageio import read_image, write_label_map

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--untrained", default=None, help="an untrained bundle of this width ('paper' = network defaults)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--case-dir", type=Path, default=None, help="keep the phantom case here and reuse it")
    parser.add_argument("--conditions", default="", help="how the machine was loaded, recorded as given")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.untrained is not None:
            from training_tools.untrained import make_untrained_bundle

            args.bundle = make_untrained_bundle(folder / "bundle", base_channels=None if args.untrained == "paper" else int(args.untrained))
        image_path, _ = cached_case(args.mask, args.slices, args.case_dir or folder)
        paths = []
        for index in range(args.cases):
            paths.append(folder / f"case_{index}.nii.gz")
            shutil.copyfile(image_path, paths[-1])
        cascade = Cascade(load_bundle(args.bundle), InferenceOptions(device=args.device))
        outputs = {"one_after_another": folder / "sequential", "overlapped": folder / "overlapped"}

        def segment(image):
            return cascade.segment(image, case=cascade.prepare(image)).labels

        def writer(name: str) -> Callable:
            outputs[name].mkdir()
            return lambda index, labels, image: write_label_map(outputs[name] / f"case_{index}.nii.gz", labels, image.affine)

        segment(read_image(paths[0]))  # warm-up: allocator, oneDNN / cuDNN kernels
        runs = {"one_after_another": one_after_another(paths, segment, read_image, writer("one_after_another")),
                "overlapped": overlapped(paths, segment, read_image, writer("overlapped"))}
        same = all(np.array_equal(read_image(outputs["one_after_another"] / p.name).array, read_image(outputs["overlapped"] / p.name).array)
                   for p in paths)
    sequential = runs["one_after_another"]
    result = {"machine": platform.node(), "cpu_count": os.cpu_count(), "conditions": args.conditions, "device": str(cascade.device),
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "mask": shown_path(args.mask), "slices": args.slices, "cases": args.cases,
              "bundle": None if args.untrained else shown_path(args.bundle), "untrained": args.untrained, "runs": runs,
              "same_labels": same, "saved_seconds": round(sequential["seconds_total"] - runs["overlapped"]["seconds_total"], 3),
              "at_most_hidden_seconds": round(sequential["read"] + sequential["write"], 3)}
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
