"""Export finished training runs as a model bundle (the inference side's format) with provenance."""
from __future__ import annotations

import datetime
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from KidneyTumorSegLib.bundle import save_bundle
from KidneyTumorSegLib.networks.registry import ROLES, build_network

from .train import MODEL_NAME, RUN_NAME, read_run

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parent.parent


def git_commit(folder: Path = REPOSITORY) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the repository holding the toolkit, or None without git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True,
                                check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())}


def load_run_network(run_dir: Path, half: bool = False) -> tuple[str, torch.nn.Module, str, dict[str, Any], dict]:
    """(role, network with the run's final weights, architecture, params, run summary) of a finished run."""
    summary = read_run(run_dir)
    if not summary.get("finished") or not (run_dir / MODEL_NAME).is_file():
        raise ValueError(f"{run_dir}: the run has not finished (resume it first)")
    network = build_network(summary["architecture"], summary["params"])
    network.load_state_dict(torch.load(run_dir / MODEL_NAME, map_location="cpu", weights_only=True))
    return summary["role"], network.half() if half else network, summary["architecture"], summary["params"], summary


def work_relative(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """``path`` as a bundle records it: relative to the work folder of ``run_dir`` (the folder
    holding its runs' folder: ``<work folder>/runs/KT`` -> ``runs/KT``), so that no machine path is
    shipped. ``path`` must lie in that work folder."""
    work = Path(run_dir).resolve().parent.parent
    return Path(path).resolve().relative_to(work).as_posix()


def run_provenance(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What a bundle records of one run; a run started from another run's ``model.pt``
    (``--init-weights``) also records that run, under ``initialised_from`` (its weights relative to
    that run's work folder)."""
    keys = ("config", "spec_deviations", "fold", "folds", "split_seed", "iteration", "total_iterations",
            "validation", "validation_held_out", "world_size", "device", "amp", "seconds_this_run")
    record = {k: summary.get(k) for k in keys}
    record["training_cases"] = len(summary.get("training_cases", []))
    if summary.get("init_weights"):
        weights = Path(summary["init_weights"])
        base = weights.parent / RUN_NAME
        record["initialised_from"] = {"weights": work_relative(weights, weights.parent),
                                      **(run_provenance(read_run(weights.parent)) if base.is_file() else {})}
    return record


def export_bundle(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, name: str, description: str,
                  data_description: str, demo: bool = False, license_name: str = "see provenance",
                  extra_provenance: Mapping[str, Any] | None = None, expected_runtime: Mapping[str, Any] | None = None,
                  half: bool = False, overwrite: bool = False) -> Path:
    """Write a bundle from finished runs (one per role; stage1 and KT required by the cascade).

    ``half`` stores the weights as float16 (half the size; they load into float32 networks).
    """
    networks: dict[str, tuple] = {}
    runs: dict[str, dict[str, Any]] = {}
    for run_dir in map(Path, run_dirs):
        role, network, architecture, params, summary = load_run_network(run_dir, half)
        if role in networks:
            raise ValueError(f"two runs train {role}: {run_dir} and {runs[role]['folder']}")
        networks[role] = (network, architecture, params)
        runs[role] = {"folder": work_relative(run_dir, run_dir), **run_provenance(summary)}
    missing = [r for r in ("stage1", "KT") if r not in networks]
    if missing:
        raise ValueError(f"the cascade needs {', '.join(missing)}: add their runs")
    provenance = {
        "trained": True,
        "data": data_description,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool": "kidneytumorseg-train export",
        "git": git_commit(),
        "weights_dtype": "float16" if half else "float32",
        "roles": [r for r in ROLES if r in networks],
        "runs": {r: runs[r] for r in ROLES if r in runs},
        **dict(extra_provenance or {}),
    }
    metadata = {"name": name, "description": description, "demo": demo, "license": license_name,
                "provenance": provenance, "expected_runtime": dict(expected_runtime or {})}
    path = save_bundle(out, networks, metadata, overwrite=overwrite)
    logger.info("bundle %s: %s", path, ", ".join(provenance["roles"]))
    return path
