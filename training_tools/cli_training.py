"""Sub-commands of ``kidneytumorseg-train`` for the training pipeline:
``prepare``, ``configs``, ``train``, ``evaluate``, ``export`` and ``demo-bundle``.

Each is an ``_add_<name>`` parser builder and a ``_cmd_<name>(args) -> int`` runner;
:func:`add_training_commands` registers them all with the main parser.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training_tools.phantom_style import DEFAULT_STYLE, HEALTHY_SHARE, STYLES

logger = logging.getLogger(__name__)


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    """Register every training sub-command."""
    for add in (_add_prepare, _add_configs, _add_train, _add_evaluate, _add_export, _add_curves, _add_demo_bundle):
        add(commands)


def _fold(text: str) -> int | None:
    from training_tools.splits import parse_fold

    return parse_fold(text)


# --- prepare ----------------------------------------------------------------------------------


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare", help="bring KiTS19-layout cases to the working frame with every training target (cached)",
        description="Resample case_XXXXX/imaging.nii.gz + segmentation.nii.gz to the working frame, normalise "
        "them and compute landmark and boundary targets into a cache of memory-mappable .npy files. "
        "Cases already cached are skipped.")
    parser.add_argument("--data", type=Path, required=True, help="KiTS19-layout folder (case_XXXXX/...)")
    parser.add_argument("--out", type=Path, required=True, help="cache folder")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    parser.set_defaults(run=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from training_tools.cache import prepare_cache

    cached = prepare_cache(args.data, args.out, args.workers, progress=not args.no_progress)
    logger.info("%d cases cached in %s", len(cached), args.out)
    return 0


# --- configs ----------------------------------------------------------------------------------


def _add_configs(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("configs", help="print the training configuration of every model (JSON)",
                                 description="Print the effective configuration of each of the twelve models "
                                 "(or one) for a preset, as JSON, e.g. to edit and pass to 'train --config'.")
    parser.add_argument("--preset", default="paper", help="paper (default), demo-gpu, demo-cpu or a preset JSON")
    parser.add_argument("--role", default=None, help="only this model")
    parser.set_defaults(run=_cmd_configs)


def _cmd_configs(args: argparse.Namespace) -> int:
    from training_tools.configs import all_configs, load_config

    configs = {args.role: load_config(args.role, args.preset)} if args.role else all_configs(args.preset)
    data = {role: config.to_json() for role, config in configs.items()}
    json.dump(data[args.role] if args.role else data, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


# --- train ------------------------------------------------------------------------------------


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train one model (one process, or several under torchrun)",
        description="Train one of the twelve models on a prepared cache. Runs alone or under "
        "'torchrun --nproc-per-node N' (DDP: NCCL on GPUs, gloo on the CPU).")
    parser.add_argument("--config", required=True, help="a role (stage1, KT, K1, ... T2D-sa-bce) or a config JSON")
    parser.add_argument("--preset", default="paper", help="paper (default), demo-gpu, demo-cpu or a preset JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (JSON value), e.g. --set iterations=500")
    parser.add_argument("--cache", type=Path, required=True, help="folder made by 'prepare'")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--init-weights", type=Path, default=None, metavar="PT",
                        help="start from these weights (a run's model.pt or a bundle's ROLE.pt): fine-tuning")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
                        help="mixed precision (default auto: bf16 or fp16 on a GPU, float32 on the CPU; bf16 on the CPU uses AVX-512 BF16 / AMX)")
    parser.add_argument("--fold", type=_fold, default=0, help="held-out fold 0-4 (default 0), or 'all' to train on every case")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fold split (default 0)")
    parser.add_argument("--val-cache", type=Path, default=None, metavar="DIR",
                        help="validate on this cache's cases (not training cases; e.g. phantoms of other masks) "
                        "instead of the held-out fold; the best whole-crop validation chooses the weights")
    parser.add_argument("--fit-cases", type=int, default=0, metavar="N",
                        help="also score N training cases at each validation, whole crops, logged as fit_* "
                        "(the gap to val_* shows memorising; they never choose the weights)")
    parser.add_argument("--time-budget-s", type=float, default=None, help="lower the iterations to end within this time")
    parser.add_argument("--stop-after", type=int, default=None, help="leave after N iterations with a checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--loader-threads", type=int, default=2, help="batch-preparation threads (default 2)")
    parser.add_argument("--no-tensorboard", action="store_true", help="CSV log only")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.set_defaults(run=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from training_tools.configs import load_config, parse_override
    from training_tools.train import TrainOptions, train

    config = load_config(args.config, args.preset, dict(parse_override(item) for item in args.set))
    options = TrainOptions(
        cache=args.cache, out=args.out, resume=args.resume, device=args.device, amp=args.amp, fold=args.fold,
        folds=args.folds, split_seed=args.split_seed, time_budget_s=args.time_budget_s, stop_after=args.stop_after,
        threads=args.threads, loader_threads=args.loader_threads, tensorboard=not args.no_tensorboard,
        progress=args.progress, init_weights=args.init_weights, val_cache=args.val_cache, fit_cases=args.fit_cases,
    )
    summary = train(config, options)
    logger.info("%s: iteration %d/%d%s", summary["role"], summary["iteration"], summary["total_iterations"],
                ", finished" if summary["finished"] else " (resume with --resume)")
    return 0


# --- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate", help="run a bundle's cascade on held-out cases: per-case CSV, summary, box plot",
        description="Segment the held-out cases of a fold (5-fold split by case) of a KiTS19-layout folder "
        "with the whole cascade and score them (KiTS19 Dice, surface Dice, HD95).")
    parser.add_argument("--data", type=Path, required=True, help="KiTS19-layout folder")
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fold", type=_fold, default=0, help="fold whose cases are evaluated (default 0), or 'all'")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fold split (default 0)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"), help="autocast on GPU")
    parser.add_argument("--workers", type=int, default=1, help="cases evaluated at once, in processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    parser.set_defaults(run=_cmd_evaluate)


def _figure(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from KidneyTumorSegLib.cascade import InferenceOptions
    from training_tools.evaluate import evaluate_bundle

    summary = evaluate_bundle(args.data, args.bundle, args.out, args.fold, args.folds, args.split_seed,
                              InferenceOptions(device=args.device, amp=args.amp), progress=not args.no_progress,
                              workers=args.workers)
    logger.info("%d cases: kidney Dice %.4f, tumor Dice %.4f, mean %.4f", summary["cases"], summary["kidney_dice"],
                summary["tumor_dice"], summary["mean_dice"])
    logger.info("tumor label: precision %s, recall %s (pooled voxels); healthy kidney called tumor %s (median)",
                *(_figure(summary[k]) for k in ("tumor_precision_pooled", "tumor_recall_pooled", "median_healthy_called_tumor")))
    if "uncertainty_auroc_pooled" in summary:
        spearman = summary.get("spearman_review_score_tumor_dice", {}).get("rho", float("nan"))
        logger.info("uncertainty: AUROC for voxel error %.3f in the crops, %.3f in the kidneys (pooled); review score "
                    "vs tumor Dice Spearman %.2f; %d case(s) flagged for review", summary["uncertainty_auroc_pooled"],
                    summary["uncertainty_auroc_kidneys_pooled"], spearman, summary["cases_flagged_for_review"])
    return 0


# --- export -----------------------------------------------------------------------------------


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write finished runs as a model bundle with provenance",
                                 description="Collect finished training runs (one per model) into a model "
                                 "bundle the module and the command line load.")
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders, one per model (e.g. work/runs/*: what is not a run, such as the .log files "
                             "beside them, is skipped with a warning)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder")
    parser.add_argument("--name", default="kidneytumorseg", help="bundle name")
    parser.add_argument("--description", default="KidneyTumorSeg cascade trained with kidneytumorseg-train.",
                        help="one-line description shown to users")
    parser.add_argument("--data-description", required=True, help="what the models were trained on")
    parser.add_argument("--license", default="see provenance", help="licence of the weights")
    parser.add_argument("--demo", action="store_true", help="mark the bundle as a demo (not for clinical use)")
    parser.add_argument("--metrics", type=Path, default=None, help="an evaluation summary.json to record")
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.set_defaults(run=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from training_tools.export import export_bundle, training_runs

    runs = training_runs(args.runs)
    if not runs:
        raise ValueError(f"none of the {len(args.runs)} paths given is a training run (a folder holding run.json)")
    extra = {"evaluation": json.loads(args.metrics.read_text())} if args.metrics else {}
    export_bundle(runs, args.out, args.name, args.description, args.data_description, demo=args.demo,
                  license_name=args.license, extra_provenance=extra, half=args.half, overwrite=args.overwrite)
    return 0


# --- curves -----------------------------------------------------------------------------------


def _add_curves(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("curves", help="plot validation Dice over a relay of training legs",
                                 description="One panel per model: validation Dice against the iterations of "
                                 "every leg in turn (a bundle's training/LEG/ROLE.csv logs, or runs' log.csv "
                                 "copied as ROLE.csv).")
    parser.add_argument("--leg", action="append", required=True, metavar="NAME=FOLDER",
                        help="a leg's name and its folder of ROLE.csv logs, oldest first (repeat)")
    parser.add_argument("--roles", default=None, help="comma-separated models (default: all twelve)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.set_defaults(run=_cmd_curves)


def _cmd_curves(args: argparse.Namespace) -> int:
    from KidneyTumorSegLib.networks.registry import ROLES
    from training_tools.logs import plot_relay

    legs = []
    for text in args.leg:
        name, sep, folder = text.partition("=")
        if not sep or not Path(folder).is_dir():
            raise ValueError(f"--leg {text}: expected NAME=FOLDER with an existing folder")
        legs.append((name, Path(folder)))
    roles = [r for r in args.roles.split(",") if r] if args.roles else list(ROLES)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown roles {', '.join(unknown)}; expected some of {', '.join(ROLES)}")
    plot_relay(legs, roles, args.out)
    logger.info("wrote %s", args.out)
    return 0


# --- demo-bundle ------------------------------------------------------------------------------


def _add_demo_bundle(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo-bundle", help="phantoms -> cache -> all twelve models -> evaluated demo bundle, in one command",
        description="Build phantoms around KiTS19 masks, train the twelve models at a reduced width, export "
        "the demo bundle and evaluate it on held-out phantoms (metrics go into its manifest). Re-running "
        "continues where it stopped.")
    parser.add_argument("--masks", type=Path, required=True, help="folder of KiTS19 label maps")
    parser.add_argument("--work", type=Path, required=True, help="working folder (cache, runs, evaluation)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--preset", default=None,
                        help="a preset of training_tools/configs/presets, e.g. smoke (the whole pipeline in minutes on "
                             "a CPU: a complete bundle that segment loads, not a model), or a preset JSON (default "
                             "demo-gpu on CUDA, else demo-cpu)")
    parser.add_argument("--workers", type=int, default=None, help="processes building phantoms (default min(4, CPUs))")
    parser.add_argument("--jobs", type=int, default=None, help="models trained at once (default: twelve on a GPU, one per core on the CPU)")
    parser.add_argument("--eval-cases", type=int, default=None,
                        help="masks held out for evaluation (the last N; 0: no evaluation) (default 10, or the preset's: "
                             "0 for smoke)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--budget-minutes", type=float, default=None, help="end everything within this time")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(STYLES),
                        help=f"phantom generator style (default {DEFAULT_STYLE}: appearance drawn well beyond real CT)")
    parser.add_argument("--variants", type=int, default=1, help="training phantoms per mask (default 1)")
    parser.add_argument("--healthy-share", type=float, default=HEALTHY_SHARE,
                        help=f"share of training phantoms whose tumor is rendered as kidney, so the tumor models "
                        f"learn healthy kidneys (default {HEALTHY_SHARE}; 0 = the paper's tumor cases only)")
    parser.add_argument("--init-bundle", type=Path, default=None, metavar="DIR",
                        help="start every model from this bundle's weights (fine-tuning; same widths)")
    parser.add_argument("--roles", default=None, metavar="R1,R2",
                        help="train only these roles; the others are carried over from --init-bundle")
    parser.set_defaults(run=_cmd_demo_bundle)


def _cmd_demo_bundle(args: argparse.Namespace) -> int:
    from training_tools.demo_bundle import DemoOptions, demo_bundle

    demo_bundle(DemoOptions(masks=args.masks, work=args.work, out=args.out, device=args.device, preset=args.preset,
                            workers=args.workers, jobs=args.jobs, eval_cases=args.eval_cases, seed=args.seed,
                            budget_minutes=args.budget_minutes, overwrite=args.overwrite, style=args.style,
                            variants=args.variants, healthy_share=args.healthy_share, init_bundle=args.init_bundle,
                            roles=tuple(args.roles.split(",")) if args.roles else None))
    return 0
