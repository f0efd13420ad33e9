"""One command for the shipped demo bundle: phantoms -> cache -> the twelve models -> bundle -> evaluation.

1. The masks are split: the last ``eval_cases`` (sorted by name) are held out. Training phantoms
   (``variants`` per mask, each with its own appearance and field of view) are painted straight
   on the working frame and go into the training cache; held-out phantoms are written in KiTS19
   layout on their mask's grid for the evaluation. ``style`` names the phantom generator's
   distributions (``phantom_style``).
2. The models train as separate ``kidneytumorseg-train train`` processes, ``jobs`` at a time
   (default: all twelve at once on a GPU, one per core on the CPU), the dearest first; each
   resumes where it stopped. With ``init_bundle`` each starts from that bundle's weights
   (fine-tuning); with ``roles`` only those train, the others are carried over from ``init_bundle``.
3. The runs are exported, the bundle is evaluated with the whole cascade on the held-out
   phantoms, and the final bundle is exported with those metrics in its provenance.

With a time budget, each training process gets the time left until the training deadline and
fits its iteration count to it (never above the preset's).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from KidneyTumorSegLib.cascade import InferenceOptions
from KidneyTumorSegLib.inference import pick_device
from KidneyTumorSegLib.networks.registry import ROLES

from .cache import default_workers, run_parallel, threads_per_worker
from .configs import load_config, load_preset
from .evaluate import evaluate_bundle
from .export import export_bundle
from .phantom_style import DEFAULT_STYLE, HEALTHY_SHARE, style_named
from .phantom_cache import PhantomDraw, cache_phantom
from .phantoms import case_name, find_masks, make_phantom_case
from .train import RUN_NAME

logger = logging.getLogger(__name__)

DEMO_DESCRIPTION = (
    "DEMO ONLY - NOT A CLINICAL MODEL. Trained on synthetic phantom CTs (simulated anatomy painted around "
    "real KiTS19 kidney and tumor masks) at a reduced network width; it has never seen a real CT and must "
    "not be used on patients. To train a real model on KiTS19 images, see the README section "
    "'Training on KiTS19' (kidneytumorseg-train prepare / train / export)."
)
MASK_LICENSE = "CC-BY-NC-SA-4.0"  # the KiTS19 masks the phantoms are built from
EVAL_SECONDS_PER_CASE = {"cuda": 60.0, "cpu": 330.0}  # one held-out phantom through the cascade (measured on CPU)
EXPORT_RESERVE_S = 30.0
DEFAULT_EVAL_CASES = 10
STARTUP_ALLOWANCE_S = 20.0  # a training process's start (imports, CUDA) before its own budget clock runs


@dataclass(frozen=True)
class DemoOptions:
    """Settings of the demo run; ``preset`` None = "demo-gpu" on CUDA, else "demo-cpu";
    ``eval_cases`` None = the preset's ``demo_bundle.eval_cases``, else 10; ``roles`` None = all twelve."""

    masks: Path
    work: Path
    out: Path
    device: str = "auto"
    preset: str | None = None
    workers: int | None = None
    jobs: int | None = None
    eval_cases: int | None = None
    seed: int = 0
    budget_minutes: float | None = None
    overwrite: bool = False
    style: str = DEFAULT_STYLE
    variants: int = 1
    healthy_share: float = HEALTHY_SHARE
    init_bundle: Path | None = None
    roles: tuple[str, ...] | None = None


def write_phantom(job: tuple[Path, Path, int, str]) -> tuple[str, str | None]:
    """Write one held-out phantom in KiTS19 layout (skipped when present); (case id, error)."""
    mask_path, out_dir, seed, style = job
    name = case_name(mask_path)
    try:
        folder = out_dir / name
        if not ((folder / "imaging.nii.gz").is_file() and (folder / "segmentation.nii.gz").is_file()):
            make_phantom_case(mask_path, out_dir, seed, style_named(style))
        return name, None
    except Exception as error:
        return name, f"{type(error).__name__}: {error}"


def _phantom_job(job: tuple) -> tuple[str, str | None]:
    kind, *arguments = job
    return (cache_phantom if kind == "train" else write_phantom)(tuple(arguments))


def build_data(masks: list[Path], eval_cases: int, cache_dir: Path, eval_dir: Path, seed: int, workers: int,
               style: str = DEFAULT_STYLE, variants: int = 1, healthy_share: float = 0.0) -> None:
    """Training cache (``variants`` phantoms per training mask, ``healthy_share`` of them without
    tumor) and held-out phantoms, in parallel (held-out ones first: they take longest to write)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    held, training = masks[len(masks) - eval_cases:], masks[:len(masks) - eval_cases]
    jobs = [("eval", m, eval_dir, seed, style) for m in held]
    draw = PhantomDraw(seed, style, healthy_share)
    jobs += [("train", m, cache_dir, draw, v, ()) for v in range(variants) for m in training]
    for name, error in run_parallel(_phantom_job, jobs, workers, "phantoms"):
        if error:
            logger.error("%s: left out (%s)", name, error)


def _environment() -> dict[str, str]:
    """The environment of a child process, with both packages importable."""
    import KidneyTumorSegLib

    roots = [str(Path(__file__).resolve().parent.parent), str(Path(KidneyTumorSegLib.__file__).resolve().parent.parent)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(roots + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def train_command(role: str, preset: str, cache_dir: Path, run_dir: Path, device: str, threads: int,
                  budget_s: float | None, init_bundle: Path | None = None) -> list[str]:
    """The ``train`` command line of one role (always resumable; from ``init_bundle``'s weights when given)."""
    command = [sys.executable, "-m", "training_tools.cli", "train", "--config", role, "--preset", preset,
               "--cache", str(cache_dir), "--out", str(run_dir), "--fold", "all", "--device", device,
               "--resume", "--threads", str(threads)]
    if budget_s is not None:
        command += ["--time-budget-s", f"{max(budget_s, 30.0):.0f}"]
    if init_bundle is not None:
        command += ["--init-weights", str(init_bundle / f"{role}.pt")]
    return command


def run_finished(run_dir: Path) -> bool:
    """Whether a run folder holds a finished training."""
    path = run_dir / RUN_NAME
    return path.is_file() and bool(json.loads(path.read_text()).get("finished"))


def eval_reserve_s(device_type: str, eval_cases: int, workers: int) -> float:
    """Seconds kept at the end of a budget for exporting and evaluating ``eval_cases`` phantoms, ``workers`` at a time."""
    rounds = -(-eval_cases // max(1, min(workers, eval_cases)))
    return EXPORT_RESERVE_S + rounds * EVAL_SECONDS_PER_CASE[device_type]


def expected_cost(role: str, preset: str) -> float:
    """A rough relative training cost of a role (iterations x batch x patch voxels x width), to start the dearest first."""
    config = load_config(role, preset)
    return float(config.iterations * config.batch_size * np.prod(config.effective_patch_size) * config.base_channels)


def default_jobs(device_type: str) -> int:
    """Processes trained at once: all twelve on a GPU; one per core on the CPU (one thread each)."""
    return len(ROLES) if device_type == "cuda" else max(1, os.cpu_count() or 1)


def train_all(preset: str, cache_dir: Path, runs_dir: Path, device: str, jobs: int,
              deadline: float | None, roles: tuple[str, ...] = tuple(ROLES), init_bundle: Path | None = None) -> list[Path]:
    """Train every role of ``roles`` not yet finished, ``jobs`` processes at a time, dearest first
    (from ``init_bundle``'s weights when given); each process gets the time left until ``deadline``
    as its budget. Returns the run folders."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = sorted((r for r in roles if not run_finished(runs_dir / r)), key=lambda r: -expected_cost(r, preset))
    threads = threads_per_worker(jobs, len(todo))
    running: dict[str, subprocess.Popen] = {}
    failed = []
    env = _environment()
    while todo or running:
        while todo and len(running) < jobs:
            role = todo.pop(0)
            budget = None if deadline is None else deadline - time.time() - STARTUP_ALLOWANCE_S
            log = open(runs_dir / f"{role}.log", "a")
            command = train_command(role, preset, cache_dir, runs_dir / role, device, threads, budget, init_bundle)
            running[role] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            logger.info("training %s (log: %s)", role, runs_dir / f"{role}.log")
        time.sleep(1.0)
        for role, process in list(running.items()):
            if process.poll() is not None:
                del running[role]
                if process.returncode != 0 or not run_finished(runs_dir / role):
                    failed.append(role)
                    logger.error("%s: training failed (exit %s), see %s", role, process.returncode, runs_dir / f"{role}.log")
                else:
                    logger.info("%s: finished", role)
    if failed:
        raise RuntimeError(f"training failed for {', '.join(failed)}")
    return [runs_dir / r for r in roles]


def held_out_count(eval_cases: int | None, preset: str) -> int:
    """Masks held out for evaluation: ``eval_cases``, else the preset's ``demo_bundle.eval_cases``, else 10."""
    if eval_cases is not None:
        return eval_cases
    defaults = {} if preset == "paper" else load_preset(preset).get("demo_bundle", {})
    return int(defaults.get("eval_cases", DEFAULT_EVAL_CASES))


def demo_bundle(options: DemoOptions) -> dict[str, Any]:
    """The whole demo pipeline; returns the evaluation summary written into the bundle (empty when
    no mask is held out)."""
    started = time.time()
    deadline = None if options.budget_minutes is None else started + 60.0 * options.budget_minutes
    device = pick_device(options.device)
    preset = options.preset or ("demo-gpu" if device.type == "cuda" else "demo-cpu")
    masks = find_masks(options.masks)
    eval_cases = held_out_count(options.eval_cases, preset)
    if len(masks) <= eval_cases:
        raise ValueError(f"{options.masks}: {len(masks)} masks, but {eval_cases} are held out for evaluation")
    if (options.out / "manifest.json").exists() and not options.overwrite:
        raise FileExistsError(f"{options.out}: a bundle exists (use --overwrite)")
    roles = options.roles or tuple(ROLES)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown roles {', '.join(unknown)}; expected some of {', '.join(ROLES)}")
    carry_over = options.init_bundle if set(roles) != set(ROLES) else None
    if carry_over is None and set(roles) != set(ROLES):
        raise ValueError("training only some roles needs --init-bundle to carry the others over")
    work = options.work
    cache_dir, eval_dir, runs_dir = work / "cache", work / "eval_phantoms", work / "runs"
    workers = options.workers or default_workers()
    build_data(masks, eval_cases, cache_dir, eval_dir, options.seed, workers, options.style, options.variants,
               options.healthy_share)
    logger.info("data ready after %.0f s", time.time() - started)
    train_deadline = None if deadline is None else deadline - eval_reserve_s(device.type, eval_cases, workers)
    runs = train_all(preset, cache_dir, runs_dir, str(device), options.jobs or default_jobs(device.type), train_deadline,
                     roles, options.init_bundle)
    logger.info("training done after %.0f s", time.time() - started)
    held_out = [case_name(m) for m in masks[len(masks) - eval_cases:]]
    metadata = _demo_metadata(options, preset, masks, held_out)
    if not held_out:
        export_bundle(runs, options.out, **metadata, half=True, overwrite=options.overwrite, carry_over=carry_over)
        logger.info("bundle %s: not evaluated, no mask held out (%.0f s in all)", options.out, time.time() - started)
        return {}
    draft = work / "bundle_draft"
    shutil.rmtree(draft, ignore_errors=True)
    export_bundle(runs, draft, **metadata, half=True, carry_over=carry_over)
    summary = evaluate_bundle(eval_dir, draft, work / "evaluation", fold=None,
                              options=InferenceOptions(device=str(device)), workers=workers)
    evaluation = {k: summary[k] for k in ("kidney_dice", "tumor_dice", "mean_dice", "cases", "median_kidney_dice",
                                          "median_tumor_dice", "mean_seconds", "device")}
    evaluation["held_out_masks"] = held_out
    metadata["extra_provenance"]["evaluation_on_held_out_phantoms"] = evaluation
    runtime = {"device": summary["device"], "seconds_per_case": round(summary["mean_seconds"], 1),
               "measured_on": "held-out phantoms"}
    export_bundle(runs, options.out, **metadata, expected_runtime=runtime, half=True, overwrite=options.overwrite,
                  carry_over=carry_over)
    logger.info("bundle %s: kidney Dice %.3f, tumor Dice %.3f on %d held-out phantoms (%.0f s in all)", options.out,
                evaluation["kidney_dice"], evaluation["tumor_dice"], evaluation["cases"], time.time() - started)
    return evaluation


def _demo_metadata(options: DemoOptions, preset: str, masks: list[Path], held_out: list[str]) -> dict[str, Any]:
    widths = {role: load_config(role, preset).base_channels for role in ROLES}
    return {
        "name": f"kidneytumorseg-demo-{preset}",
        "description": DEMO_DESCRIPTION,
        "data_description": (
            f"{options.variants * (len(masks) - len(held_out))} synthetic phantom CTs (training_tools.phantoms, "
            f"style {options.style}, {options.variants} per mask, seed {options.seed}) "
            f"built around real KiTS19 ground-truth masks (CC BY-NC-SA 4.0, https://kits19.grand-challenge.org); "
            f"{len(held_out)} further phantoms held out for evaluation"),
        "demo": True,
        "license_name": MASK_LICENSE,
        "extra_provenance": {
            "synthetic_phantoms": True,
            "clinical_use": "none: a demonstration model trained on synthetic phantoms only",
            "preset": preset,
            "preset_description": load_preset(preset).get("description", ""),
            "network_widths": widths,
            "reduced_width": True,
            "phantom_seed": options.seed,
            "phantom_style": options.style,
            "phantoms_per_mask": options.variants,
            "healthy_phantom_share": options.healthy_share,
            "fine_tuned_from": None if options.init_bundle is None else _bundle_name(options.init_bundle),
            "training_masks": [case_name(m) for m in masks if case_name(m) not in held_out],
        },
    }


def _bundle_name(path: Path) -> str | None:
    manifest = path / "manifest.json"
    return json.loads(manifest.read_text()).get("name") if manifest.is_file() else None
