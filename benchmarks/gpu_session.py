"""One GPU session, run once: the GPU benchmark and a short training run, everything into one folder.

    python benchmarks/gpu_session.py --masks .gpu/masks --out "$OUT" --minutes 9
    python benchmarks/gpu_session.py --masks Testing/Data/kits19 --held-out 1 --out session --dry-run  # tiny, CPU

On a GPU machine whose Python lacks nibabel and python-isal (both ignored folders travel with the
working tree):

    # here, once
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl nibabel==5.4.2 isal==1.9.1
    mkdir -p .gpu/masks && cp ../shared/data/kits19/masks/case_*.nii.gz .gpu/masks/
    # there: one command of at most 10 minutes (SITE: any empty folder outside the checkout)
    python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl &&
        PYTHONPATH="$SITE:$PWD/KidneyTumorSeg:$PWD" python3 benchmarks/gpu_session.py --masks .gpu/masks --out "$OUT"

``--masks`` holds KiTS19 label maps (``case_XXXXX.nii.gz``); the last ``--held-out`` of them (by
name) are never trained on. Steps, each in its own process with its own time cap; a step that
fails or runs out of time is recorded in ``session.json`` and the next one runs:

1. ``benchmark_600.json``: cascade_benchmark.py at 600 slices with paper-size untrained
   networks, the cascade and ``--box full`` (stage 2 over the whole volume), bf16, labels only
   and with the uncertainty map (as the Slicer module runs): seconds per stage and per model,
   peak GPU memory.
2. ``batch_overlap.json``: whether reading the next case and writing the last one while the GPU
   works on the current one pays (batch_overlap.py).
3. ``benchmark_600_compile.json``: the cascade through ``torch.compile``, twice in one process
   (the first pays the compiling).
4. ``labels_gpu_vs_cpu_{bf16,fp32}.json``: the shipped demo bundle on a small real-mask phantom on
   the GPU and on the CPU, labels compared voxel by voxel. The training phantoms are built
   meanwhile: nothing is timed from here on.
5. ``runs/<role>/``: stage 1 and the tumor models of the demo-gpu preset at the widths of
   ``TRAINING_WIDTHS``, trained at once on the GPU for the minutes left, on phantoms made now by
   ``training_tools.phantoms`` from the training masks. Weights, run record and log per model.

Everything is made in ``--work``; ``--out`` receives ``session.json`` and the rest as
``session.tar.gz.00``, ``.01``, ... (parts of ``PART_BYTES``; ``cat session.tar.gz.* | tar -xz``),
without the phantoms, which the masks rebuild, and the training checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
DEMO_BUNDLE = REPOSITORY / "KidneyTumorSeg" / "Resources" / "Models" / "demo"
TRAINING_WIDTHS = {"stage1": 8, "T-vnet": 8, "T-unet": 16, **{f"T2D-{a}-{l}": 6 for a in ("ax", "co", "sa") for l in ("dice", "bce")}}
"""Widths of the retrained models: larger than demo-gpu's (4 for V-Nets, 8 for U-Nets; the 2D
U-Nets are at 4 in the shipped bundle), with the bundle under ``BUNDLE_LIMIT_MB``."""
BUNDLE_LIMIT_MB = 25.0
RESERVE_S = 45.0  # kept at the end: packing the results
PART_BYTES = 15 * 2**20  # the files brought back from a GPU machine: 16 MiB each at most
LEFT_BEHIND = ("cache", "cases", "checkpoint.pt")  # rebuilt from the masks / only for resuming
TRAINING_START_S = 40.0  # a training process's imports and CUDA start before its budget clock runs


def projected_bundle_mb(widths: dict[str, int], bundle: Path = DEMO_BUNDLE) -> float:
    """Size of the demo bundle (float16 weights) with the models of ``widths`` at those widths."""
    from KidneyTumorSegLib.networks.registry import ROLES

    total = sum(path.stat().st_size for path in bundle.glob("*.pt") if path.stem not in widths)
    for role, width in widths.items():
        total += 2 * sum(p.numel() for p in ROLES[role].build(width).parameters())
    return total / 1e6


class Session:
    """Runs the steps in order against a deadline and records each in ``session.json``."""

    def __init__(self, out: Path, minutes: float):
        self.out = out
        self.deadline = time.time() + 60.0 * minutes
        self.steps: list[dict] = []
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.time() - RESERVE_S

    def run(self, name: str, command: list[str], cap_s: float) -> bool:
        """``command`` with its output in ``<name>.log``, stopped with every process it started after
        ``cap_s`` (or what is left of the session)."""
        limit = min(cap_s, self.left())
        shown = " ".join(command[1:]).replace(f"{REPOSITORY}{os.sep}", "").replace(str(self.out), "<work>")  # no machine paths
        step = {"step": name, "command": shown, "cap_s": round(limit)}
        if limit < 10:
            self.steps.append({**step, "status": "skipped: no time left"})
            return False
        start = time.time()
        with open(self.out / f"{name}.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                status = "ok" if process.wait(timeout=limit) == 0 else f"failed: exit {process.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the step's own process group: its children too
                process.wait()
                status = f"stopped after {limit:.0f} s"
        self.steps.append({**step, "status": status, "seconds": round(time.time() - start, 1)})
        self.save()
        return status == "ok"

    def save(self, **extra) -> None:
        record = {"machine": platform.node(), "python": sys.version.split()[0], "steps": self.steps, **extra}
        (self.out / "session.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def benchmark(out_json: Path, mask: Path, slices: int, untrained: str, modes: str, device: str, amp: str,
              extra: list[str] = ()) -> list[str]:
    return [sys.executable, str(HERE / "cascade_benchmark.py"), "--mask", str(mask), "--slices", str(slices),
            "--untrained", untrained, "--modes", modes, "--device", device, "--amp", amp, "--crop-from-truth",
            "--case-dir", str(out_json.parent / "cases"), "--out", str(out_json), *extra]


def build_cache(masks_dir: Path, count: int, cache: Path, workers: int) -> list[str]:
    """The ``phantom-cache`` command that caches a training phantom of each of the first ``count``
    masks of ``masks_dir``, drawn by the generator's default style, the default share of them healthy."""
    return [sys.executable, "-m", "training_tools.cli", "phantom-cache", "--masks", str(masks_dir), "--cases",
            str(count), "--out", str(cache), "--workers", str(workers), "--no-progress"]


def train_all(session: Session, cache: Path, runs: Path, device: str, widths: dict[str, int], extra: list[str]) -> None:
    """Every role of ``widths`` at once, each with the time left as its budget; run folders under ``runs``."""
    budget = session.left() - TRAINING_START_S
    step = {"step": "training", "roles": widths, "budget_s": round(budget)}
    if budget < 60:
        session.steps.append({**step, "status": "skipped: no time left"})
        return
    runs.mkdir(parents=True, exist_ok=True)
    processes = {}
    start = time.time()
    for role, width in widths.items():
        command = [sys.executable, "-m", "training_tools.cli", "train", "--config", role, "--preset", "demo-gpu",
                   "--cache", str(cache), "--out", str(runs / role), "--fold", "all", "--device", device, "--threads", "1",
                   "--no-tensorboard", "--time-budget-s", f"{budget:.0f}", "--set", f"base_channels={width}", *extra]
        with open(runs / f"{role}.log", "w") as log:
            processes[role] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
    status = {}
    for role, process in processes.items():
        try:
            process.wait(timeout=max(1.0, session.left()))
        except subprocess.TimeoutExpired:
            process.terminate()  # its last checkpoint stays in the run folder
            process.wait()
        run = runs / role / "run.json"
        record = json.loads(run.read_text()) if run.is_file() else {}
        status[role] = {"exit": process.returncode, "iteration": record.get("iteration"), "finished": record.get("finished")}
    session.steps.append({**step, "status": status, "seconds": round(time.time() - start, 1)})
    session.save()


def pack(work: Path, out: Path) -> list[Path]:
    """``session.json`` and a gzipped tar of ``work`` (less ``LEFT_BEHIND``) cut in parts, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "session.json").write_bytes((work / "session.json").read_bytes())
    archive = work.parent / f"{work.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname=work.name, filter=lambda item: None if Path(item.name).name in LEFT_BEHIND else item)
    data, parts = archive.read_bytes(), []
    for number, start in enumerate(range(0, len(data), PART_BYTES)):
        parts.append(out / f"session.tar.gz.{number:02d}")
        parts[-1].write_bytes(data[start:start + PART_BYTES])
    archive.unlink()
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=Path, required=True, help="folder of KiTS19 label maps")
    parser.add_argument("--out", type=Path, required=True, help="session.json and the packed results go here")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpu_session", help="working folder")
    parser.add_argument("--minutes", type=float, default=9.0, help="the whole session, training last")
    parser.add_argument("--held-out", type=int, default=10, help="the last N masks (by name) are never trained on")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes building phantoms")
    parser.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU: checks that every step runs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    from training_tools.phantoms import find_masks

    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"{args.work}: exists and is not empty (remove it or give another --work)")
    masks = find_masks(args.masks)
    if len(masks) <= args.held_out:
        parser.error(f"{args.masks}: {len(masks)} masks, {args.held_out} held out: nothing to train on")
    training_masks = masks[:len(masks) - args.held_out]
    bench_mask, small_mask = masks[0], min(masks, key=lambda path: path.stat().st_size)
    if args.dry_run:
        device, slices, untrained, widths = "cpu", 16, "2", {"stage1": 2, "T-unet": 2, "T2D-ax-dice": 2}
        caps = {"benchmark": 240, "labels": 240, "compile": 20, "overlap": 240}
        tiny = ["--threads", "1"]
        train_extra = ["--set", "iterations=2", "--set", "val_interval=1000", "--set", "checkpoint_interval=1"]
    else:
        device, slices, untrained, widths = "cuda", 600, "paper", TRAINING_WIDTHS
        caps = {"benchmark": 200, "labels": 60, "compile": 120, "overlap": 100}
        tiny, train_extra = [], []
    plan = {"device": device, "widths": widths, "projected_bundle_mb": round(projected_bundle_mb(widths), 2),
            "bundle_limit_mb": BUNDLE_LIMIT_MB, "benchmark_mask": bench_mask.name, "small_mask": small_mask.name,
            "training_masks": len(training_masks), "held_out": [m.name for m in masks[len(training_masks):]]}
    if plan["projected_bundle_mb"] > BUNDLE_LIMIT_MB:
        parser.error(f"the widths {widths} would make the bundle larger than {BUNDLE_LIMIT_MB} MB")
    session = Session(args.work, args.minutes)
    session.save(plan=plan)
    out = args.work
    session.run("benchmark_600", benchmark(out / "benchmark_600.json", bench_mask, slices, untrained, "cascade,full",
                                           device, "bf16", ["--batch-size", "8", "--uncertainty", "off,on", *tiny]),
                caps["benchmark"])
    session.run("batch_overlap", [sys.executable, str(HERE / "batch_overlap.py"), "--mask", str(bench_mask), "--slices", str(slices),
                                  "--untrained", untrained, "--device", device, "--cases", "2", "--case-dir", str(out / "cases"), "--out", str(out / "batch_overlap.json"),
                                  *tiny], caps["overlap"])
    session.run("benchmark_600_compile", benchmark(out / "benchmark_600_compile.json", bench_mask, slices, untrained,
                                                   "cascade+compile", device, "bf16", ["--batch-size", "8", "--repeat", "2", *tiny]),
                caps["compile"])
    # The timed steps are done: the phantoms are built beside the label checks, which time nothing.
    cache_job = subprocess.Popen(build_cache(args.masks, len(training_masks), out / "cache", args.workers), cwd=REPOSITORY,
                                 stdout=open(out / "phantoms.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    for amp, name in (("bf16", "bf16"), ("none", "fp32")):
        devices = "cpu,cpu" if args.dry_run else "cuda,cpu"
        session.run(f"labels_gpu_vs_cpu_{name}", [sys.executable, str(HERE / "cascade_benchmark.py"), "--mask", str(small_mask),
                                                  "--bundle", str(DEMO_BUNDLE), "--modes", "cascade", "--device", devices,
                                                  "--amp", amp, "--out", str(out / f"labels_gpu_vs_cpu_{name}.json"), *tiny],
                    caps["labels"])
    try:
        cache_job.wait(timeout=max(1.0, session.left() - 180))
        session.steps.append({"step": "phantoms", "status": "ok" if cache_job.returncode == 0 else f"failed: exit {cache_job.returncode}"})
    except subprocess.TimeoutExpired:
        os.killpg(cache_job.pid, signal.SIGKILL)
        cache_job.wait()
        session.steps.append({"step": "phantoms", "status": "stopped: training uses the phantoms cached so far"})
    train_all(session, out / "cache", out / "runs", device, widths, train_extra)
    session.save(plan=plan)
    parts = pack(args.work, args.out)
    print(f"{args.out}: session.json and {len(parts)} parts of the results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
