"""Export finished training runs as a model bundle (the inference side's format) with provenance."""
from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import torch

from KidneyTumorSegLib.bundle import load_bundle, save_bundle
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


def training_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The paths that are training runs (folders holding a ``run.json``); each other one is
    skipped with a warning saying so (a ``ROLE.log`` beside the runs, a stray file)."""
    runs = []
    for path in map(Path, paths):
        if (path / RUN_NAME).is_file():
            runs.append(path)
        else:
            logger.warning("%s: skipped, not a training run (no %s)", path, RUN_NAME)
    return runs


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
    """What a bundle records of one run (``chosen``: the validation whose weights ``model.pt`` holds,
    where the best whole-crop validation chose them; ``validation``: the run's last); a run started
    from another run's ``model.pt``
    (``--init-weights``) also records that run, under ``initialised_from`` (its weights relative to
    that run's work folder)."""
    keys = ("config", "spec_deviations", "fold", "folds", "split_seed", "iteration", "total_iterations",
            "validation", "chosen", "validation_held_out", "world_size", "device", "amp", "seconds_this_run")
    record = {k: summary.get(k) for k in keys}
    record["training_cases"] = len(summary.get("training_cases", []))
    if summary.get("init_weights"):
        record["initialised_from"] = _weights_provenance(Path(summary["init_weights"]))
    return record


def _weights_provenance(weights: Path) -> dict[str, Any]:
    """What a fine-tuned run started from: the run's record when the weights are a run's
    ``model.pt`` (paths relative to that run's work folder), the bundle's record of that role when
    they are a bundle's ``ROLE.pt``."""
    if (weights.parent / RUN_NAME).is_file():
        return {"weights": work_relative(weights, weights.parent), **run_provenance(read_run(weights.parent))}
    manifest = weights.parent / "manifest.json"
    if manifest.is_file():
        bundle = json.loads(manifest.read_text())
        record = bundle.get("provenance", {}).get("runs", {}).get(weights.stem, {})
        return {"weights": weights.name, "bundle": bundle.get("name"), **_without_folder(record)}
    return {"weights": work_relative(weights, weights.parent)}


def _without_folder(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run record copied from another bundle, less the run folder (a path on the machine that
    trained it), at every depth; an absolute weights path an older bundle recorded keeps its name only."""
    portable: dict[str, Any] = {}
    for key, value in record.items():
        if key == "folder":
            continue
        if isinstance(value, Mapping):
            value = _without_folder(value)
        elif key == "weights" and isinstance(value, str) and (value.startswith("/") or PureWindowsPath(value).drive):
            value = PureWindowsPath(value).name
        portable[key] = value
    return portable


def carried_roles(bundle_dir: Path, skip: Sequence[str]) -> tuple[dict[str, tuple], dict[str, dict[str, Any]]]:
    """The networks and run records of a bundle's roles not in ``skip``, to export unchanged."""
    bundle = load_bundle(bundle_dir)
    runs = bundle.manifest.get("provenance", {}).get("runs", {})
    networks, records = {}, {}
    for role in bundle.roles:
        if role in skip:
            continue
        entry = bundle.entries[role]
        networks[role] = (bundle.networks[role], entry.architecture, entry.params)
        records[role] = {**_without_folder(runs.get(role, {})), "carried_over_from": bundle.manifest.get("name")}
    return networks, records


def export_bundle(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, name: str, description: str,
                  data_description: str, demo: bool = False, license_name: str = "see provenance",
                  extra_provenance: Mapping[str, Any] | None = None, expected_runtime: Mapping[str, Any] | None = None,
                  half: bool = False, overwrite: bool = False, carry_over: str | os.PathLike | None = None) -> Path:
    """Write a bundle from finished runs (one per role; stage1 and KT required by the cascade).

    ``half`` stores the weights as float16 (half the size; they load into float32 networks).
    ``carry_over``: a bundle whose roles without a run are exported unchanged (their records say so).
    """
    networks: dict[str, tuple] = {}
    runs: dict[str, dict[str, Any]] = {}
    for run_dir in map(Path, run_dirs):
        role, network, architecture, params, summary = load_run_network(run_dir, half)
        if role in networks:
            raise ValueError(f"two runs train {role}: {run_dir} and {runs[role]['folder']}")
        networks[role] = (network, architecture, params)
        runs[role] = {"folder": work_relative(run_dir, run_dir), **run_provenance(summary)}
    if carry_over is not None:
        kept, records = carried_roles(Path(carry_over), tuple(networks))
        networks.update({r: (n.half() if half else n, a, p) for r, (n, a, p) in kept.items()})
        runs.update(records)
    missing = [r for r in ("stage1", "KT") if r not in networks]
    if missing:
        given = ", ".join(r for r in ROLES if r in networks) or "none"
        raise ValueError(f"the cascade needs {' and '.join(missing)}: add the run folder of each (the runs given "
                         f"train {given})")
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
