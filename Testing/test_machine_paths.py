"""The repository speaks of the product alone: no machine path (``/tmp/...``, ``/work/...``) in any
shipped file, none in the shipped bundle's manifest, and none that ``export`` writes."""
from __future__ import annotations

import json
import re
from pathlib import Path, PureWindowsPath
from typing import Any

from KidneyTumorSegLib.bundle import MANIFEST_NAME, default_bundle_path
from repo_files import REPO, repository_files
from training_tools.export import run_provenance, work_relative

SHIPPED_SUFFIXES = {".py", ".md", ".json", ".txt", ".csv", ".ui", ".toml", ".cfg", ".yml", ".yaml", ".cmake", ".sh"}
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|root|home)/")


def shipped_files() -> list[Path]:
    """Every text file of the repository outside the tests (and outside environments and builds)."""
    return [path for path in repository_files(skip=frozenset({"Testing"}))
            if path.suffix in SHIPPED_SUFFIXES or path.name in {"CMakeLists.txt", "run"}]


def absolute_paths(data: Any) -> list[str]:
    """Every string of a JSON document that is an absolute POSIX or Windows path."""
    if isinstance(data, dict):
        return [found for value in data.values() for found in absolute_paths(value)]
    if isinstance(data, list):
        return [found for value in data for found in absolute_paths(value)]
    if isinstance(data, str) and (data.startswith("/") or PureWindowsPath(data).drive):
        return [data]
    return []


def test_no_shipped_file_names_a_machine_path():
    files = shipped_files()
    assert len(files) > 50 and REPO / "README.md" in files
    found = [f"{path.relative_to(REPO)}:{number}" for path in files
             for number, line in enumerate(path.read_text(encoding="utf-8", errors="ignore").splitlines(), start=1)
             if MACHINE_PATH.search(line)]
    assert not found, f"machine paths in shipped files: {found}"


def test_the_shipped_manifest_holds_no_absolute_path():
    manifest = json.loads((default_bundle_path() / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert absolute_paths(manifest) == []
    runs = manifest["provenance"]["runs"].values()
    trained_here = [run for run in runs if "carried_over_from" not in run]  # carried-over runs keep no folder
    assert trained_here and all("/" in run["folder"] and not run["folder"].startswith("/") for run in trained_here)
    assert all("folder" not in run for run in runs if "carried_over_from" in run)


def test_export_records_runs_relative_to_their_work_folder(tmp_path):
    run = tmp_path / "work" / "runs" / "KT"
    assert work_relative(run, run) == "runs/KT"
    base = tmp_path / "old_work" / "runs" / "KT"
    record = run_provenance({"init_weights": str(base / "model.pt"), "config": {"role": "KT"}})
    assert record["initialised_from"]["weights"] == "runs/KT/model.pt"
    assert absolute_paths(record) == [] and str(tmp_path) not in json.dumps(record)
