"""Reading and writing ``.nii.gz`` through zlib, indexed_gzip and python-isal's igzip, as JSON.

Reads the CT of a phantom case built on ``--mask`` (int16, as KiTS19 ships it; built as
cascade_benchmark.py builds its cases) and writes its label map (uint8) through each gzip library
installed, best of ``--repeat`` runs each, and checks that every reader returns the same voxels
and that every written file opens with Python's gzip and nibabel:

    python benchmarks/gzip_benchmark.py --mask case_00098.nii.gz --slices 600 --out gzip.json

``zlib`` is nibabel's plain path (Python's gzip); ``indexed_gzip`` is what nibabel uses by itself
when that package is installed; ``isal`` is the engine's path when python-isal is installed
(``KidneyTumorSegLib.fast_gzip``), read and written through nibabel's stream interface.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cascade_benchmark import cached_case, emit_json, shown_path  # noqa: E402


def best_seconds(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    """The fastest of ``repeat`` calls of ``run`` and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


@contextlib.contextmanager
def indexed_gzip_used(used: bool) -> Iterator[None]:
    """nibabel opens ``.gz`` files through indexed_gzip when installed; this turns that on or off."""
    import nibabel._compression as compression

    before = compression.HAVE_INDEXED_GZIP
    compression.HAVE_INDEXED_GZIP = used
    try:
        yield
    finally:
        compression.HAVE_INDEXED_GZIP = before


def read_nibabel(path: Path, indexed: bool) -> np.ndarray:
    with indexed_gzip_used(indexed):
        return np.asarray(nib.load(str(path)).dataobj)


def read_isal(path: Path) -> np.ndarray:
    from isal import igzip

    with igzip.open(path, "rb") as stream:
        return np.asarray(nib.Nifti1Image.from_stream(stream).dataobj)


def write_zlib(image: nib.Nifti1Image, path: Path) -> None:
    nib.save(image, str(path))  # nibabel's zlib at its default level 1


def write_isal(image: nib.Nifti1Image, path: Path, level: int) -> None:
    from isal import igzip

    with igzip.open(path, "wb", compresslevel=level) as stream:
        image.to_stream(stream)


def opens_everywhere(path: Path, expected: np.ndarray) -> bool:
    """Whether Python's gzip and nibabel's own reader both return ``expected`` from ``path``."""
    with gzip.open(path) as stream:
        by_gzip = np.asarray(nib.Nifti1Image.from_stream(stream).dataobj)
    return bool(np.array_equal(by_gzip, expected) and np.array_equal(np.asarray(nib.load(str(path)).dataobj), expected))


def measure(image_path: Path, labels_path: Path, repeat: int) -> dict:
    """Best seconds of each reader on ``image_path`` and of each writer of the voxels of ``labels_path``."""
    have = {name: importlib.util.find_spec(name) is not None for name in ("isal", "indexed_gzip")}
    readers: dict[str, Callable[[], np.ndarray]] = {"zlib": lambda: read_nibabel(image_path, False)}
    if have["indexed_gzip"]:
        readers["indexed_gzip"] = lambda: read_nibabel(image_path, True)
    if have["isal"]:
        readers["isal"] = lambda: read_isal(image_path)
    reads, reference = {}, None
    for name, read in readers.items():
        seconds, array = best_seconds(read, repeat)
        reference = array if reference is None else reference
        reads[name] = {"seconds": round(seconds, 3), "same_voxels": bool(np.array_equal(array, reference))}
    labels = np.asfortranarray(np.asarray(nib.load(str(labels_path)).dataobj, dtype=np.uint8))
    image = nib.Nifti1Image(labels, nib.load(str(labels_path)).affine)
    writers: dict[str, Callable[[Path], None]] = {"zlib level 1": lambda path: write_zlib(image, path)}
    if have["isal"]:
        writers.update({f"isal level {level}": (lambda path, level=level: write_isal(image, path, level)) for level in range(4)})
    writes = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, write in writers.items():
            path = Path(folder) / f"{name.replace(' ', '_')}.nii.gz"
            seconds, _ = best_seconds(lambda: write(path), repeat)
            writes[name] = {"seconds": round(seconds, 3), "bytes": path.stat().st_size, "opens_everywhere": opens_everywhere(path, labels)}
    return {"installed": have,
            "image": {"shape": list(reference.shape), "dtype": str(reference.dtype), "bytes_on_disk": image_path.stat().st_size},
            "labels": {"shape": list(labels.shape)}, "read": reads, "write": writes}



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, required=True, help="real KiTS19 mask to build the phantom case on")
    parser.add_argument("--slices", type=int, default=None, help="pad or cut the slice axis to this many slices")
    parser.add_argument("--case-dir", type=Path, default=None, help="keep the phantom case here and reuse it")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--conditions", default="", help="how the machine was loaded, recorded as given")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        image_path, labels_path = cached_case(args.mask, args.slices, args.case_dir or Path(folder))
        result = measure(image_path, labels_path, args.repeat)
    emit_json({"machine": platform.node(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
               "conditions": args.conditions, "nibabel": nib.__version__, "mask": shown_path(args.mask), "slices": args.slices,
               "repeat": args.repeat, **result}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
