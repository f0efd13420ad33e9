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
    """Cases of ``folder`` by name: its image files and ``<case>/<image_name>`` files, sorted.

    Raises ValueError, naming the files, when inputs share a case name (``a.nii.gz``, ``a.nii``,
    ``a/imaging.nii.gz``; names differing only in letter case too, as their outputs would on a
    case-insensitive file system): their results would take one name.
    """
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder not found")
    found: list[tuple[str, Path]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / image_name).is_file():
            found.append((entry.name, entry / image_name))
        elif entry.is_file() and image_suffix(entry) and not entry.name.lower().endswith(".seg.nrrd"):
            found.append((case_name(entry), entry))
    refuse_colliding_names(found)
    return dict(found)


def refuse_colliding_names(found: list[tuple[str, Path]]) -> None:
    """ValueError naming every group of inputs whose case names are equal ignoring letter case."""
    groups: dict[str, list[Path]] = {}
    for name, path in found:
        groups.setdefault(name.casefold(), []).append(path)
    clashes = [paths for paths in groups.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(str(path) for path in paths) for paths in clashes)
        raise ValueError(f"{len(clashes)} case name(s) given by more than one input, whose results would take one "
                         f"name: {shown}; rename or move all but one of each")
