"""Training one model of the cascade, in one process or several under ``torchrun`` (DDP).

A run folder holds::

    config.json      the configuration
    checkpoint.pt    the latest checkpoint (model, optimizer, iteration, total iterations)
    log.csv          scalars every ``log_interval`` iterations and every validation
    tensorboard/     the same scalars for TensorBoard (when installed)
    curves.png       learning curves, redrawn at every checkpoint
    model.pt         final weights (a plain state_dict), once finished
    best.pt          the weights that scored best in validation (held-out validation cases only)
    run.json         summary: role, network, data, split, iterations, timings, validation scores

Validation runs the engine's own inference over whole crops of the validation cases
(:mod:`training_tools.validation`): a ``val_cache`` of cases apart from the training cache, or
the held-out fold. ``model.pt`` holds the weights of the best validation (``val_dice``) when the
validation cases are held out; without them (``--fold all`` and no ``val_cache``) it scores a few
training cases for the curves only and keeps the last weights.

``--resume`` continues from ``checkpoint.pt`` exactly: the data stream is a function of the seed
and the iteration (:mod:`training_tools.stream`) and the learning rate one of the iteration.
``--init-weights`` starts a new run from trained weights (a run's ``model.pt`` or a bundle's
``ROLE.pt``): fine-tuning, with a fresh optimizer and schedule.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from KidneyTumorSegLib.bundle import read_weights
from KidneyTumorSegLib.inference import resolve_amp_dtype

from .augment import Augmentation
from .cache import CachedCase, open_cache
from .configs import TrainConfig
from .distributed import Distributed, setup_distributed, teardown_distributed
from .logs import ScalarLog, plot_curves
from .losses import LossWeights, total_loss
from .samplers import make_sampler
from .schedule import poly_lr, set_lr
from .splits import split_cases
from .stream import BatchStream, EpochIndex
from .validation import renamed, spread_cases, validate

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
BEST_NAME = "best.pt"
RUN_NAME = "run.json"
CONFIG_NAME = "config.json"
TRAIN_SET_VALIDATION_CASES = 3  # without held-out cases, the curves score this many training cases
MAX_SKIPPED_STEPS = 20  # non-finite steps in a row before a run stops
BUDGET_WARMUP = 3  # iterations before the speed used by a time budget is measured
BUDGET_MEASURE = 10  # iterations the speed is measured over
BUDGET_RESERVE = 0.1  # share of the remaining time kept for validation, checkpoints and export


@dataclass(frozen=True)
class TrainOptions:
    """How to run a training (the config says what to train).

    ``fold`` None trains on every cached case. ``time_budget_s``: the total iterations follow the
    measured speed so the run ends within the budget, never above the configured iterations.
    ``stop_after``: leave after this many iterations of this run with a checkpoint (resume later).
    ``init_weights``: a state_dict file (``model.pt`` of a run, ``ROLE.pt`` of a bundle) whose
    weights start a new run; ignored when resuming, where the checkpoint's weights rule.
    ``val_cache``: a cache of validation cases that are not training cases (e.g. phantoms of
    other masks); default: the held-out fold. ``fit_cases``: with held-out validation, also score
    this many training cases (spread over them) the same way at each validation, logged as
    ``fit_*`` beside ``val_*``: the gap shows a model learning its training cases rather than the
    task. They never choose the weights.
    """

    cache: Path
    out: Path
    resume: bool = False
    device: str = "auto"
    amp: str = "auto"
    fold: int | None = 0
    folds: int = 5
    split_seed: int = 0
    time_budget_s: float | None = None
    stop_after: int | None = None
    threads: int | None = None
    loader_threads: int = 2
    tensorboard: bool = True
    progress: bool = False
    init_weights: Path | None = None
    val_cache: Path | None = None
    fit_cases: int = 0


@dataclass
class RunState:
    """Where a run stands: iterations done, planned total, and the latest validation."""

    iteration: int
    total: int
    history: list[dict[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)  # when this process began the run
    init_weights: str | None = None  # the weights the run started from (fine-tuning), else None
    best: dict[str, float] | None = None  # the validation whose weights are in best.pt
    skipped_in_a_row: int = 0  # optimizer steps left out for a non-finite gradient, consecutively


def train(config: TrainConfig, options: TrainOptions) -> dict[str, Any]:
    """Train ``config.role`` on the cached cases; returns the run summary (also in ``run.json``)."""
    context = setup_distributed(options.device)
    try:
        return _train(config, options, context)
    finally:
        teardown_distributed(context)


def _train(config: TrainConfig, options: TrainOptions, context: Distributed) -> dict[str, Any]:
    started = time.perf_counter()
    _set_compute(options, context)
    out = Path(options.out)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
    context.barrier()
    train_cases, val_cases, held_out = _cases(options)
    fit_cases = spread_cases([c for c in train_cases if c.has_kidney], options.fit_cases) \
        if held_out and options.fit_cases > 0 else []
    sampler = make_sampler(config.spec, config.patch_size, config.patches_per_case, config.inference_window_fraction,
                           config.tumor_box_padding)
    index = EpochIndex(train_cases, sampler, config.seed)
    torch.manual_seed(config.seed)
    network = config.spec.build(config.base_channels).to(context.device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    state = _start_state(config, options, network, optimizer, context)
    state.started = started
    model: nn.Module = DistributedDataParallel(network, device_ids=[context.device.index] if context.device.type == "cuda" else None) \
        if context.active else network
    amp_dtype = training_amp_dtype(options.amp, context.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    log = ScalarLog(out, state.iteration if options.resume else None, options.tensorboard) if context.is_main else None
    augmentation = Augmentation.from_json(config.augmentation) if config.augmentation else None
    stream = BatchStream(index, config.batch_size, state.iteration, context.rank, context.world_size, augmentation,
                         threads=options.loader_threads)
    if context.is_main:
        _write_json(out / CONFIG_NAME, config.to_json())
        logger.info("%s: %d training cases (%d samples per epoch), %d validation cases%s, iterations %d..%d on %s x%d",
                    config.role, len(train_cases), len(index), len(val_cases), "" if held_out else " (training set)",
                    state.iteration, state.total, context.device, context.world_size)
    try:
        _loop(config, options, context, model, network, optimizer, scaler, amp_dtype, stream, state, log,
              val_cases if context.is_main else [], held_out, fit_cases if context.is_main else [])
    finally:
        stream.close()
        if log is not None:
            log.close()
    finished = state.iteration >= state.total
    checksums = context.gather(_checksum(network))
    summary = _summary(config, options, context, state, train_cases, val_cases, fit_cases, held_out, finished,
                       time.perf_counter() - started, checksums)
    if context.is_main:
        if finished and held_out and (out / BEST_NAME).is_file():
            shutil.copyfile(out / BEST_NAME, out / MODEL_NAME)
        elif finished:
            torch.save(_cpu_state(network), out / MODEL_NAME)
        _write_json(out / RUN_NAME, summary)
    context.barrier()
    return summary


def _loop(config: TrainConfig, options: TrainOptions, context: Distributed, model: nn.Module, network: nn.Module,
          optimizer: torch.optim.Optimizer, scaler, amp_dtype: torch.dtype | None, stream: BatchStream,
          state: RunState, log: ScalarLog | None, val_cases: list[CachedCase], held_out: bool,
          fit_cases: list[CachedCase]) -> None:
    start = state.iteration
    weights = LossWeights(**config.loss_weights)
    sums: dict[str, torch.Tensor | float] = {"loss": 0.0, "seg_loss": 0.0, "reg_loss": 0.0}  # on the device
    counted, interval_start = 0, time.perf_counter()
    budget = TimeBudget(options.time_budget_s, config.iterations, context, start) if options.time_budget_s else None
    bar = _progress_bar(options, context, state)
    while state.iteration < state.total and not (options.stop_after and state.iteration - start >= options.stop_after):
        lr = poly_lr(config.learning_rate, state.iteration, state.total, config.poly_power)
        set_lr(optimizer, lr)
        image, seg, reg = (t.to(context.device, non_blocking=True) for t in next(stream))
        with _autocast(context.device, amp_dtype):
            seg_logits, regression = model(image)
        loss, parts = total_loss(seg_logits, regression, seg, reg, config.segmentation_loss, weights,
                                 config.wmse_positive_floor)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if gradients_finite(network):
                optimizer.step()
                state.skipped_in_a_row = 0
            else:
                _skip_step(config, state)
        state.iteration += 1
        for key in sums:
            sums[key] += parts.get(key, 0.0)
        counted += 1
        if bar is not None:
            bar.update(1)
        if budget is not None:
            budget.step(state)
            if bar is not None:
                bar.total = state.total
        last = state.iteration >= state.total
        if state.iteration % config.log_interval == 0 or last:
            means = context.mean([float(sums[k]) / counted for k in sums])
            seconds = (time.perf_counter() - interval_start) / counted
            if log is not None:
                log.write(state.iteration, {"lr": lr, **dict(zip(sums, means)), "seconds_per_iteration": seconds})
            sums = dict.fromkeys(sums, 0.0)
            counted, interval_start = 0, time.perf_counter()
        if state.iteration % config.val_interval == 0 or last:
            _validate(config, options, context, network, amp_dtype, val_cases, held_out, state, log, fit_cases)
            if budget is not None:
                budget.restart(state)  # the speed of training, not of validation, sets the iterations
        stopping = bool(options.stop_after) and state.iteration - start >= options.stop_after
        if state.iteration % config.checkpoint_interval == 0 or last or stopping:
            _checkpoint(config, options, context, network, optimizer, scaler, state)
    if bar is not None:
        bar.close()


def gradients_finite(network: nn.Module) -> bool:
    """Whether every gradient of ``network`` is finite (after DDP's all-reduce the same on every
    rank, so all ranks skip a step together)."""
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(gradients))) if gradients else True


def _skip_step(config: TrainConfig, state: RunState) -> None:
    """Leave the weights as they are after a non-finite gradient; stop after ``MAX_SKIPPED_STEPS`` in a row."""
    state.skipped_in_a_row += 1
    logger.warning("%s: iteration %d: non-finite loss or gradient, step skipped", config.role, state.iteration + 1)
    if state.skipped_in_a_row >= MAX_SKIPPED_STEPS:
        raise FloatingPointError(f"{config.role}: {MAX_SKIPPED_STEPS} non-finite steps in a row at iteration "
                                 f"{state.iteration + 1}: lower the learning rate or leave bf16 off")


def _validate(config: TrainConfig, options: TrainOptions, context: Distributed, network: nn.Module,
              amp_dtype: torch.dtype | None, cases: list[CachedCase], held_out: bool, state: RunState,
              log: ScalarLog | None, fit_cases: list[CachedCase]) -> None:
    """Whole-crop validation on rank 0; with held-out cases, a better ``val_dice`` saves ``best.pt``.
    ``fit_cases`` (training cases) are scored the same way, as ``fit_*``, and choose nothing."""
    if context.is_main and cases:
        started = time.perf_counter()
        inference_amp = amp_dtype if context.device.type == "cuda" else None  # as the engine runs: float32 on the CPU
        scores = validate(network, config.spec, cases, context.device, inference_amp)
        fit = renamed(validate(network, config.spec, fit_cases, context.device, inference_amp), "fit_") if fit_cases else {}
        state.history.append({"iteration": state.iteration, **scores, **fit})
        improved = held_out and (state.best is None or scores["val_dice"] > state.best["val_dice"])
        if improved:
            state.best = {"iteration": state.iteration, **scores, **fit}
            _save_atomic(_cpu_state(network), Path(options.out) / BEST_NAME)
        logger.info("%s: iteration %d/%d, whole-crop validation on %d cases%s: %s (%.0f s)%s", config.role,
                    state.iteration, state.total, len(cases), "" if held_out else " (training cases)",
                    _scores_text(scores), time.perf_counter() - started,
                    ", best so far" if improved else "")
        if fit:
            logger.info("%s: the same on %d training cases: %s", config.role, len(fit_cases), _scores_text(fit))
        if log is not None:
            log.write(state.iteration, {**scores, **fit})
    context.barrier()


def _scores_text(scores: dict[str, float]) -> str:
    """``val_dice 0.5, ...`` or ``fit_dice ...`` as ``dice 0.500, ...`` for the log."""
    return ", ".join(f"{key.split('_', 1)[1]} {value:.3f}" for key, value in scores.items())


def _cpu_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in network.state_dict().items()}


def _save_atomic(payload: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    torch.save(payload, temporary)
    os.replace(temporary, path)


class TimeBudget:
    """Fits the total iterations to a time budget, from the measured speed.

    After ``BUDGET_WARMUP`` iterations of this run, the speed is measured every
    ``BUDGET_MEASURE`` iterations and the total set so the run ends within the budget (less a
    reserve), never above the configured iterations. Rank 0 decides for every process.
    """

    def __init__(self, seconds: float, ceiling: int, context: Distributed, first_iteration: int):
        self.seconds, self.ceiling, self.context = seconds, ceiling, context
        self.first = first_iteration
        self.mark: tuple[int, float] | None = None

    def restart(self, state: RunState) -> None:
        """Measure the speed from here on (after a validation, whose time is not training's)."""
        if self.mark is not None:
            self.mark = (state.iteration, time.perf_counter())

    def step(self, state: RunState) -> None:
        """Call after every iteration; may change ``state.total``."""
        done = state.iteration - self.first
        if done == BUDGET_WARMUP:
            self.mark = (state.iteration, time.perf_counter())
        if self.mark is None or done < BUDGET_WARMUP + BUDGET_MEASURE or (done - BUDGET_WARMUP) % BUDGET_MEASURE:
            return
        now = time.perf_counter()
        seconds_per_iteration = (now - self.mark[1]) / (state.iteration - self.mark[0])
        self.mark = (state.iteration, now)
        remaining = (self.seconds - (now - state.started)) * (1.0 - BUDGET_RESERVE)
        affordable = state.iteration + max(0, int(remaining / max(seconds_per_iteration, 1e-6)))
        total = self.context.broadcast_int(min(self.ceiling, affordable))
        if abs(total - state.total) > 0.02 * state.total:
            logger.info("time budget %.0f s at %.3f s/iteration: %d iterations in all", self.seconds,
                        seconds_per_iteration, total)
            state.total = total


def _checkpoint(config: TrainConfig, options: TrainOptions, context: Distributed, network: nn.Module,
                optimizer: torch.optim.Optimizer, scaler, state: RunState) -> None:
    if context.is_main:
        out = Path(options.out)
        payload = {
            "model": network.state_dict(), "optimizer": optimizer.state_dict(),
            "iteration": state.iteration, "total": state.total, "config": config.to_json(),
            "history": state.history, "world_size": context.world_size, "init_weights": state.init_weights,
            "scaler": scaler.state_dict() if scaler is not None else None, "best": state.best,
        }
        _save_atomic(payload, out / CHECKPOINT_NAME)
        plot_curves(out / "log.csv", out / "curves.png", f"{config.role} (iteration {state.iteration}/{state.total})")
    context.barrier()


def _start_state(config: TrainConfig, options: TrainOptions, network: nn.Module, optimizer: torch.optim.Optimizer,
                 context: Distributed) -> RunState:
    """A fresh state, or the checkpoint's when resuming; refuses to overwrite a run by accident."""
    path = Path(options.out) / CHECKPOINT_NAME
    if not options.resume and path.exists():
        raise FileExistsError(f"{path} exists: pass --resume to continue that run, or choose another --out")
    if not path.exists():
        if options.resume:
            logger.info("no checkpoint in %s: starting from iteration 0", options.out)
        if options.init_weights is None:
            return RunState(0, config.iterations)
        load_initial_weights(network, Path(options.init_weights), config.role)
        return RunState(0, config.iterations, init_weights=str(Path(options.init_weights).resolve()))
    checkpoint = torch.load(path, map_location=context.device, weights_only=True)
    if checkpoint["config"] != config.to_json():
        raise ValueError(f"{path}: the checkpoint was made with another configuration; use a new --out")
    if checkpoint["world_size"] != context.world_size:
        logger.warning("resuming a run of %d processes with %d: the batches differ from an uninterrupted run",
                       checkpoint["world_size"], context.world_size)
    network.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    logger.info("resumed %s at iteration %d of %d", config.role, checkpoint["iteration"], checkpoint["total"])
    return RunState(int(checkpoint["iteration"]), int(checkpoint["total"]), list(checkpoint["history"]),
                    init_weights=checkpoint.get("init_weights"), best=checkpoint.get("best"))


def load_initial_weights(network: nn.Module, path: Path, role: str) -> None:
    """Copy a plain state_dict file into ``network`` (cast to its dtype); a clear error when the
    file is missing, is not a state_dict or does not fit the configured network."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial weights for {role} not found")
    state = read_weights(path, role)  # a BundleError (a ValueError) for pickled code or a broken file
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path}: weights do not fit the configured network of {role} ({reason:.200})") from error
    logger.info("%s: weights initialised from %s", role, path)


def _cases(options: TrainOptions) -> tuple[list[CachedCase], list[CachedCase], bool]:
    """(training cases, validation cases, whether those are held out)."""
    cases = open_cache(options.cache)
    if not cases:
        raise FileNotFoundError(f"{options.cache}: no prepared cases (run 'kidneytumorseg-train prepare' first)")
    train_ids, held_ids = split_cases([c.case_id for c in cases], options.fold, options.folds, options.split_seed)
    by_id = {c.case_id: c for c in cases}
    train_cases = [by_id[c] for c in train_ids]
    held = [by_id[c] for c in held_ids]
    if options.val_cache is not None:
        held = open_cache(options.val_cache)
        if not held:
            raise FileNotFoundError(f"{options.val_cache}: no prepared validation cases")
        if options.val_cache.resolve() == Path(options.cache).resolve():
            raise ValueError(f"{options.val_cache}: the validation cache is the training cache")
    return train_cases, held or train_cases[:TRAIN_SET_VALIDATION_CASES], bool(held)


def _summary(config: TrainConfig, options: TrainOptions, context: Distributed, state: RunState,
             train_cases: list[CachedCase], val_cases: list[CachedCase], fit_cases: list[CachedCase], held_out: bool,
             finished: bool, seconds: float, checksums: list[float]) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "role": config.role,
        "finished": finished,
        "architecture": config.spec.architecture,
        "params": config.network_params(),
        "patch_size": list(config.spec.patch_size),
        "config": config.to_json(),
        "spec_deviations": config.spec_deviations() + data_deviations(train_cases),
        "cache": str(Path(options.cache).resolve()),
        "fold": options.fold, "folds": options.folds, "split_seed": options.split_seed,
        "training_cases": [c.case_id for c in train_cases],
        "validation_cases": [c.case_id for c in val_cases],
        "validation_held_out": held_out,
        "fit_cases": [c.case_id for c in fit_cases],  # training cases also scored (fit_* in the history)
        "init_weights": state.init_weights,
        "iteration": state.iteration, "total_iterations": state.total,
        "validation": last,
        "chosen": state.best if held_out else None,
        "history": state.history,
        "world_size": context.world_size, "device": str(context.device), "amp": options.amp,
        "seconds_this_run": round(seconds, 1),
        "rank_checksums": checksums,
    }


def data_deviations(cases: list[CachedCase]) -> list[str]:
    """Where the training cases depart from the paper's data: healthy phantoms (tumor rendered as
    kidney) and moved tumors (another mask's tumor at a drawn place, ``phantom_transplant``)."""
    sources = [c.meta.get("source", {}) for c in cases]
    healthy = sum(1 for s in sources if s.get("healthy"))
    moved = sum(1 for s in sources if s.get("tumor_of"))
    notes = []
    if healthy:
        notes.append(f"{healthy} of {len(cases)} training phantoms render and label the tumor as kidney (healthy "
                     "kidneys; KiTS19 holds tumor cases only)")
    if moved:
        notes.append(f"{moved} of {len(cases)} training phantoms hold another mask's tumor moved to a random place of "
                     "the kidney surface (so a tumor's place tells nothing)")
    return notes


def _checksum(network: nn.Module) -> float:
    """Sum of all weights (float64): equal on every DDP rank when they are in sync."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in network.parameters()))


def training_amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the training forward pass: the engine's choice on a GPU; on the CPU
    ``"bf16"`` (bfloat16 through AVX-512 BF16 / AMX where the CPU has them: 1.3-1.4x per
    iteration for the 3D tumor models, ``benchmarks/training_speed.py``), else float32."""
    if device.type == "cuda":
        return resolve_amp_dtype(name, device)
    if name == "fp16":
        raise ValueError("float16 autocast needs a GPU: use --amp bf16 or none on the CPU")
    return torch.bfloat16 if name == "bf16" else None


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def _set_compute(options: TrainOptions, context: Distributed) -> None:
    """This process's kernel choices and CPU threads."""
    if context.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
    else:  # trained weights give subnormal floats, which this CPU computes slowly (a T-vnet iteration: 6.5x)
        torch.set_flush_denormal(True)
    if options.threads:
        torch.set_num_threads(options.threads)
    elif context.active and context.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _progress_bar(options: TrainOptions, context: Distributed, state: RunState):
    if not (options.progress and context.is_main):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=state.total, initial=state.iteration, unit="it", desc="train")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``run.json`` summary of a run folder."""
    path = Path(run_dir) / RUN_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no {RUN_NAME})")
    return json.loads(path.read_text())
