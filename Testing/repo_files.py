"""The repository's own files, found without walking virtual environments, builds or caches."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_OURS = {".venv", ".git", "__pycache__", "build", ".pytest_cache", ".hypothesis"}


def repository_files(skip: frozenset[str] = frozenset(), max_bytes: int = 2_000_000) -> list[Path]:
    """Every file of the repository under ``max_bytes``, outside :data:`NOT_OURS` and the top
    folders named in ``skip``."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in NOT_OURS and not (Path(folder) == REPO and name in skip)]
        found += [Path(folder) / name for name in files if (Path(folder) / name).stat().st_size < max_bytes]
    return found
