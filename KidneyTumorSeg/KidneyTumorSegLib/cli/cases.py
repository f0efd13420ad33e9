"""Finding cases in a folder: image files, or KiTS19 case folders (``case_XXXXX/imaging.nii.gz``)."""
from __future__ import annotations

from pathlib import Path

from ..imageio import image_suffix


def case_name(path: Path) -> str:
    """A case's name: a KiTS19 folder's name, or the file name without its image suffix."""
    if path.name in ("imaging.nii.gz", "segmentation.nii.gz"):
        return path.parent.name
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def find_cases(folder: Path, image_name: str = "imaging.nii.gz") -> dict[str, Path]:
    """Cases of ``folder`` by name: its image files and ``<case>/<image_name>`` files, sorted."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder not found")
    cases: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / image_name).is_file():
            cases[entry.name] = entry / image_name
        elif entry.is_file() and image_suffix(entry) and not entry.name.lower().endswith(".seg.nrrd"):
            cases[case_name(entry)] = entry
    return cases
