"""Does a model generalise, or has it learnt its training phantoms? Whole-crop scores of training
runs on some of their own training cases and on the validation cases, side by side.

Both are scored exactly as training validation scores a model (training_tools.validation: the
engine's sliding window, or 2D along the model's axis, over whole crops; pooled Dice, precision
and recall inside kidney and tumor; the median share of healthy kidney called tumor). A model that
scores far better on cases it was trained on than on the validation cases has learnt those cases
(their kidneys' shapes, their tumors' places), not the task: more training of the same kind will
not close the gap, more varied data or stronger augmentation might.

    python benchmarks/generalisation_gap.py --run runs/T-unet --run runs/T2D-ax-dice \
        --train-cache TRAIN --val-cache VAL --out gap.json

Each run folder needs ``config.json`` and its weights: ``best.pt`` (what validation chose), else
``model.pt`` (what the run exports: the chosen weights where it validated on other cases, else its
last), else ``checkpoint.pt`` (the latest iteration's, of a run still going); ``--weights`` picks one.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from KidneyTumorSegLib.networks.registry import ROLES
from training_tools.cache import CachedCase, open_cache
from training_tools.configs import TrainConfig
from training_tools.train import BEST_NAME, CHECKPOINT_NAME, CONFIG_NAME, MODEL_NAME
from training_tools.validation import spread_cases, validate

WEIGHT_FILES = {"best": BEST_NAME, "model": MODEL_NAME, "latest": CHECKPOINT_NAME}


def load_run(run: Path, weights: str | None) -> tuple[str, torch.nn.Module, str]:
    """(role, network in eval mode, name of the weights file read) of a run folder; ``weights``
    None takes the first of best, model, latest that exists."""
    config = TrainConfig.from_json(json.loads((run / CONFIG_NAME).read_text()))
    order = [weights] if weights else list(WEIGHT_FILES)
    found = [WEIGHT_FILES[w] for w in order if (run / WEIGHT_FILES[w]).is_file()]
    if not found:
        raise FileNotFoundError(f"{run}: none of {', '.join(WEIGHT_FILES[w] for w in order)}")
    state = torch.load(run / found[0], map_location="cpu", weights_only=True)
    if found[0] == WEIGHT_FILES["latest"]:
        state = state["model"]
    network = config.spec.build(config.base_channels)  # as training builds it
    network.load_state_dict(state)
    return config.role, network.eval(), found[0]


def scores(network: torch.nn.Module, role: str, cases: list[CachedCase]) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {k: round(v, 4) for k, v in validate(network, ROLES[role], cases, torch.device("cpu")).items()}
    result["cases"] = [case.case_id for case in cases]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a training run folder (repeat)")
    parser.add_argument("--weights", choices=sorted(WEIGHT_FILES), default=None,
                        help="which weights (default: best, else model, else latest)")
    parser.add_argument("--train-cache", type=Path, required=True, help="the runs' training cache")
    parser.add_argument("--val-cache", type=Path, required=True, help="validation cases (not trained on)")
    parser.add_argument("--train-cases", type=int, default=10, help="training cases scored, spread over the cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_cases = spread_cases([c for c in open_cache(args.train_cache) if c.has_kidney], args.train_cases)
    val_cases = open_cache(args.val_cache)
    rows = []
    for run in args.run:
        role, network, weights = load_run(run, args.weights)
        row = {"run": run.name, "role": role, "weights": weights,
               "training_cases": scores(network, role, train_cases), "validation_cases": scores(network, role, val_cases)}
        row["dice_gap"] = round(row["training_cases"]["val_dice"] - row["validation_cases"]["val_dice"], 4)
        rows.append(row)
        print(f"{run.name} ({weights}): whole-crop Dice {row['training_cases']['val_dice']:.3f} on training cases, "
              f"{row['validation_cases']['val_dice']:.3f} on validation cases", flush=True)
    args.out.write_text(json.dumps({"runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
