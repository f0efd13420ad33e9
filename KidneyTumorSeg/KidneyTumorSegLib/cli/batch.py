"""`batch`: every case of a folder through the cascade, one process or many shards; never loses a result.

Per case it writes ``<case>.nii.gz`` and ``<case>.json`` (the `segment --report`) together, or
``<case>.failed.json`` (the error) when the case fails; then ``summary.csv`` from every record in
the output folder (summary.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from ..bundle import ModelBundle
from ..cascade import Cascade
from ..imageio import OutputExistsError, atomic_output, read_image, refuse_input_as_output
from ..validation import check_ct
from .cases import find_cases
from .exits import EXIT_CASES_FAILED, EXIT_OK
from .segment import LABEL_MEANING, add_model_options, inference_options, open_bundle, segmentation_report, write_outputs
from .shards import Shard, shard_device, shard_from
from .summary import add_triage_option, failure_path, report_summary, write_summary

logger = logging.getLogger(__name__)

DESCRIPTION = f"""\
Segment every CT of a folder (image files, or KiTS19 case folders holding imaging.nii.gz).

Per case: <case>.nii.gz (labels on the input's grid: {LABEL_MEANING}),
<case>.json (the report of `segment --report`) and with --uncertainty <case>.uncertainty.nii.gz
(where the models disagree; `review` shows it as an overlay); a case that fails leaves <case>.failed.json (its error) and the
batch goes on. No existing output is replaced without --overwrite: a folder that already holds
results of these cases is refused unless --resume (run only the others) or --overwrite (run all).

summary.csv: one row per case record in the output folder (status, seconds, whether any kidney was
found, kidney and tumor mL, tumor count, largest tumor diameter, review score, whether the case
needs review, disputed mL, error), rebuilt from all of them at the end of every run and replaced
atomically, so it says what the folder holds now and a resumed or sharded run loses no row;
--triage orders it by review score, most doubtful first. When the earlier summary.csv held figures
of a finished case that changed or are gone (or a column added by hand), it is kept beside it as
summary.earlier-1.csv (-2, ...).
Shards (--shard, torchrun, Slurm arrays) share one output folder; the last one to finish writes
the summary, or run `kidneytumorseg summarize OUT`.

Exit code: 0 every case of this run is done (now or before); 3 some cases failed (in the summary;
the others are written); 1 an error before any case ran (nothing written); 2 a usage error;
130 interrupted (finished cases are kept: rerun with --resume)."""


def add_batch_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("batch", help="segment every case of a folder", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", type=Path,
                        help="folder of CT images (.nii.gz, .nii, .nrrd) or KiTS19 case folders (case_XXXXX/imaging.nii.gz)")
    parser.add_argument("output_dir", type=Path,
                        help="folder for <case>.nii.gz, <case>.json and summary.csv (created when missing)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the cases whose label map is already in the output folder and run the others "
                             "(default: refuse a folder holding results of these cases)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="run only every N-th case from the K-th, of the cases sorted by name; shards count from "
                             "0: --shard 0/2 and --shard 1/2 share a folder (default: torchrun's RANK/WORLD_SIZE, or a "
                             "Slurm array's task, SLURM_ARRAY_TASK_ID counted from SLURM_ARRAY_TASK_MIN of "
                             "SLURM_ARRAY_TASK_COUNT, so --array=0-7 and --array=1-8 both work, when set; else every "
                             "case); with --device auto under torchrun each process takes GPU cuda:LOCAL_RANK")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write <case>.uncertainty.nii.gz per case, where the ensemble disagrees (as segment "
                             "--uncertainty: uint8 round(255 x u) over the input voxels near the crop, its own affine; "
                             "`review` shows it as an overlay; cases done before are not redone under --resume) "
                             "(default: none)")
    add_triage_option(parser)
    add_model_options(parser)
    parser.set_defaults(handler=run_batch)


def label_path(folder: Path, case: str) -> Path:
    return folder / f"{case}.nii.gz"


def report_path(folder: Path, case: str) -> Path:
    return folder / f"{case}.json"


def uncertainty_path(folder: Path, case: str) -> Path:
    return folder / f"{case}.uncertainty.nii.gz"


def case_outputs(folder: Path, case: str) -> tuple[Path, ...]:
    """Every file a case may write: its label map, report, uncertainty map and failure record."""
    return label_path(folder, case), report_path(folder, case), uncertainty_path(folder, case), failure_path(folder, case)


def refuse_existing_results(folder: Path, cases: list[str], resume: bool, overwrite: bool) -> None:
    """Before any work: without --resume or --overwrite, a folder holding results of ``cases`` is refused."""
    if resume or overwrite:
        return
    done = [case for case in cases if label_path(folder, case).exists()]
    if done:
        shown = ", ".join(done[:3]) + (", ..." if len(done) > 3 else "")
        raise OutputExistsError(f"{folder}: already holds results of {len(done)} of these {len(cases)} cases ({shown}): "
                                "--resume runs only the others, --overwrite runs them all again")


def run_batch(args: argparse.Namespace) -> int:
    found = find_cases(args.input_dir)
    if not found:
        raise ValueError(f"{args.input_dir}: no images found (.nii.gz, .nii, .nrrd, or case folders with imaging.nii.gz)")
    shard = shard_from(args.shard, os.environ)
    cases = shard.take(sorted(found))
    bundle = open_bundle(args)  # a bad or partial bundle is refused before the output folder is made
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out}: output folder is not writable")
    refuse_input_as_output((path for case in cases for path in case_outputs(out, case)), found.values())
    refuse_existing_results(out, cases, args.resume, args.overwrite)
    args.device = shard_device(args.device, os.environ, torch.cuda.device_count())
    options = inference_options(args)
    cascade = Cascade(bundle, options)
    if shard.count > 1:
        logger.info("shard %s (%s): %d of the %d cases, on %s", shard, shard.source, len(cases), len(found), cascade.device)
    failed = 0
    for number, case in enumerate(cases, start=1):
        if label_path(out, case).exists() and not args.overwrite:
            status = "done before"
        else:
            status = run_case(cascade, bundle, case, found[case], out, args)
            failed += status == "failed"
        if args.progress == "json":
            print(json.dumps({"type": "progress", "fraction": number / len(cases), "stage": "batch", "model": case}), flush=True)
        else:
            logger.info("[%d/%d] %s: %s", number, len(cases), case, status)
    return finish(out, found, shard, failed, args)


def run_case(cascade: Cascade, bundle: ModelBundle, case: str, image_path: Path, out: Path, args: argparse.Namespace) -> str:
    """Segment one case and write its label map and report together, or its failure record; "ok" or "failed"."""
    start = time.perf_counter()
    try:
        image = check_ct(read_image(image_path), force=args.force)
        prepared = cascade.prepare(image)
        result = cascade.segment(image, case=prepared)
        report = segmentation_report(result, prepared, bundle, time.perf_counter() - start, image_path, cascade.settings)
        if not report["kidney_found"]:
            logger.warning("%s: no kidney found (%s)", case, report["stage1_decision"])
        for warning in report["warnings"]:
            logger.warning("%s: %s", case, warning)
        doubt = uncertainty_path(out, case) if args.uncertainty and result.uncertainty is not None else None
        write_outputs(result, prepared, label_path(out, case), args.overwrite, report, report_path(out, case),
                      uncertainty=doubt)
    except Exception as error:  # a failing case is recorded and the batch goes on
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        logger.error("%s: failed: %s", case, message)
        record = {"case": case, "image": str(image_path), "status": "failed", "error": message,
                  "seconds": round(time.perf_counter() - start, 3)}
        with atomic_output(failure_path(out, case), overwrite=True) as temporary:  # the case's latest failure
            temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return "failed"
    failure_path(out, case).unlink(missing_ok=True)  # an earlier failure of this case is over
    return "ok"


def finish(out: Path, found: dict[str, Path], shard: Shard, failed: int, args: argparse.Namespace) -> int:
    """Write the summary once every case of the folder has a record (the last shard to finish does);
    the exit code of this run's cases."""
    waiting = [case for case in found if not (label_path(out, case).exists() or failure_path(out, case).exists())]
    if waiting:
        logger.info("shard %s done; %d of the %d cases have no result yet: the last shard to finish, or "
                    "`kidneytumorseg summarize %s`, writes the summary", shard, len(waiting), len(found), out)
    else:
        report_summary(*write_summary(out, args.triage))
    if args.progress == "json":
        print(json.dumps({"type": "done", "output": str(out)}), flush=True)
    return EXIT_CASES_FAILED if failed else EXIT_OK
