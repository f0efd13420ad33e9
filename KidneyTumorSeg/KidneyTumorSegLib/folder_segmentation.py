"""Segmenting a folder of cases from Slicer: the command line's ``batch`` out of process, then a
Slicer segmentation (``<case>.seg.nrrd``) beside each label map it wrote."""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .cli.cases import find_cases
from .cli.exits import EXIT_CASES_FAILED, EXIT_OK
from .cli.summary import failure_path
from .imageio import read_image
from .mrml.segmentation_file import write_segmentation_file
from .process import CliCommand, ProcessRunner, ProgressEvent, RunOptions, parse_line

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
"""``on_progress(fraction_of_cases_done, case_name)``."""


def segment_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, runner: ProcessRunner,
                   command: CliCommand | None = None, options: RunOptions = RunOptions(), overwrite: bool = False,
                   idle: Callable[[], None] | None = None, on_progress: Progress | None = None) -> list[Path]:
    """Segment every case of ``input_dir`` (image files or KiTS19 case folders) into ``output_dir``.

    Writes ``<case>.nii.gz`` (labels 0/1/2), ``<case>.json`` (the report), ``<case>.seg.nrrd``
    and ``summary.csv``; a failing case is listed in the summary and skipped (a warning names it).
    Blocks until done (``idle`` runs between polls). Returns the ``.seg.nrrd`` paths. Existing
    outputs are kept unless ``overwrite``: the batch then runs only the cases without results
    (``--resume``). Raises RuntimeError, with the first case's error, when no case of the folder
    has a result.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    cases = find_cases(input_dir)
    if not cases:
        raise ValueError(f"{input_dir}: no images found (.nii.gz, .nii, .nrrd, or case folders with imaging.nii.gz)")
    output_dir.mkdir(parents=True, exist_ok=True)
    command = command or CliCommand()
    finished: dict[str, object] = {}

    def on_line(line: str) -> None:
        event = parse_line(line)
        if isinstance(event, ProgressEvent) and on_progress is not None:
            on_progress(event.fraction, event.model)

    argv = command.batch(input_dir, output_dir, options, overwrite) + ([] if overwrite else ["--resume"])
    runner.start(argv, on_line, lambda code, stderr: finished.update(code=code, stderr=stderr))
    while runner.poll():
        if idle is not None:
            idle()
        time.sleep(0.05)
    if not finished:
        raise RuntimeError("batch was cancelled")
    if finished["code"] not in (EXIT_OK, EXIT_CASES_FAILED):  # some cases failed: the others are written
        lines = [line for line in str(finished["stderr"]).splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"batch failed (exit code {finished['code']})")
    failed = [name for name in cases if failure_path(output_dir, name).is_file()]
    if failed:
        first = _failure(output_dir, failed[0])
        if not any((output_dir / f"{name}.nii.gz").is_file() for name in cases):
            raise RuntimeError(f"no case was segmented: {len(failed)} of {len(cases)} failed; {failed[0]}: {first}")
        logger.warning("%d of %d cases failed (see %s), e.g. %s: %s", len(failed), len(cases), output_dir / "summary.csv",
                       failed[0], first)
    written = []
    for name in cases:
        labels_path, segmentation_path = output_dir / f"{name}.nii.gz", output_dir / f"{name}.seg.nrrd"
        if not labels_path.is_file() or (segmentation_path.exists() and not overwrite):
            continue
        labels = read_image(labels_path)
        written.append(write_segmentation_file(labels.array, labels.affine, segmentation_path, overwrite=overwrite))
    return written


def _failure(output_dir: Path, case: str) -> str:
    """The error a failed case's record holds."""
    try:
        return str(json.loads(failure_path(output_dir, case).read_text(encoding="utf-8"))["error"])
    except (OSError, ValueError, KeyError):
        return "see its .failed.json"
