"""`summary.csv` of a batch output folder, rebuilt from the case records there; `summarize`.

A finished case leaves ``<case>.json`` (its `segment --report`), a failed one ``<case>.failed.json``
(its error); both are kept. ``summary.csv`` is derived from them: every run rebuilds it from all
the case records of the folder, one row per case, sorted by case name (or with ``--triage`` by
review score, most doubtful first), and replaces it atomically, so it always says what the
folder holds now; a resumed run, or several shards writing to one folder, loses no row. The
summary it replaces is kept beside it (``summary.earlier-1.csv``, ...) only when that one held
figures of a finished case that changed or are gone, or values in a column added by hand.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from ..imageio import atomic_output
from .exits import EXIT_CASES_FAILED, EXIT_OK

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
FAILED_SUFFIX = ".failed.json"
SIDE_FIELDS = tuple(f"{side}_{key}" for side in ("left", "right") for key in ("kidney_found", "kidney_ml", "tumor_ml"))
SUMMARY_FIELDS = ("case", "status", "seconds", "kidney_found", *SIDE_FIELDS, "kidney_ml", "tumor_ml", "tumor_count",
                  "largest_tumor_diameter_mm", "warnings", "review_score", "review", "review_because", "disputed_ml", "error")


def failure_path(folder: Path, case: str) -> Path:
    """Where a failed case's record goes."""
    return folder / f"{case}{FAILED_SUFFIX}"


def read_record(path: Path) -> dict[str, Any] | None:
    """The summary row of one JSON file of the folder, or None when it is no case record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("status") == "failed" and isinstance(data.get("case"), str):
        return {"case": data["case"], "status": "failed", "error": data.get("error")}  # a rerun failing alike changes no row
    measured = data.get("measurements")
    if not isinstance(measured, dict):
        return None
    case = data.get("case") or path.name[: -len(".json")]  # reports of older versions hold no case name
    return {"case": case, "status": "ok", "seconds": (data.get("seconds") or {}).get("total"), "kidney_found": data.get("kidney_found"),
            "kidney_ml": round(measured["kidney_ml"]["total"], 2), "tumor_ml": round(measured["tumor_ml"]["total"], 2),
            "tumor_count": measured["tumor_count"], "largest_tumor_diameter_mm": round(measured["largest_tumor_diameter_mm"], 1),
            **side_columns(data.get("kidneys")), "warnings": "; ".join(data.get("warnings") or ()),
            **review_columns(data.get("uncertainty"), data.get("review_flag"))}


def side_columns(kidneys: Any) -> dict[str, Any]:
    """The per-side summary columns of a report's ``kidneys`` (kidney_sides.side_findings); none
    for reports of older versions."""
    if not isinstance(kidneys, dict):
        return {}
    return {f"{side}_{key}": (round(value, 2) if isinstance(value, float) else value)
            for side, finding in kidneys.items() for key, value in finding.items() if f"{side}_{key}" in SIDE_FIELDS}


def review_columns(review: Any, flag: Any = None) -> dict[str, Any]:
    """The summary columns of a report's review: its flag (review_flag.py: score, yes / no, the
    measures that tripped) and disputed volume (``CaseReview.to_json``); reports of older versions
    without a flag give the uncertainty's score and verdict; none without either."""
    columns: dict[str, Any] = {}
    if isinstance(review, dict):
        columns = {"review_score": review["score"], "review": "yes" if review["review"] else "no",
                   "disputed_ml": review["disputed_ml"]}
    if isinstance(flag, dict):
        columns.update(review_score=flag["score"], review="yes" if flag["tripped"] else "no",
                       review_because="; ".join(flag["tripped"]))
    return columns


def triaged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` by review score, highest (most doubtful) first; rows without a score (failed
    cases, older reports) keep their order after them."""
    return sorted(rows, key=lambda row: -row["review_score"] if "review_score" in row else float("inf"))


def summary_rows(folder: Path) -> list[dict[str, Any]]:
    """One row per case with a record in ``folder``, sorted by case; a finished case's report wins
    over a stale failure record of the same case."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        row = read_record(path)
        if row is not None and (row["case"] not in rows or row["status"] == "ok"):
            rows[row["case"]] = row
    return [rows[case] for case in sorted(rows)]


def summary_text(rows: list[dict[str, Any]]) -> str:
    """The CSV of ``rows`` (every field of :data:`SUMMARY_FIELDS`, empty when absent)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_summary(folder: Path, triage: bool = False, keep_earlier: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Rebuild ``summary.csv`` of ``folder`` from every case record there (by case, or with
    ``triage`` most doubtful first), replacing it atomically; returns its path and rows.

    With ``keep_earlier``, the summary it replaces is kept beside it (``summary.earlier-1.csv``,
    ``-2``, ...) when that one holds what the new one does not (:func:`changed_figures`); reordered
    rows, new rows and mended failures keep nothing.
    """
    rows = triaged(summary_rows(folder)) if triage else summary_rows(folder)
    text = summary_text(rows)
    path = folder / SUMMARY_NAME
    if _holds(path, text):
        return path, rows
    earlier = _read_bytes(path)
    changed = [] if earlier is None or not keep_earlier else changed_figures(earlier.decode("utf-8", "replace"), text)
    if changed:
        kept = _keep(folder, earlier)
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        logger.warning("%s held other figures for %d case(s) (%s) than their records now do: kept it as %s", path,
                       len(changed), shown, kept.name)
    with atomic_output(path, overwrite=True) as temporary:
        temporary.write_bytes(text.encode("utf-8"))
    return path, rows


TIMING_FIELDS = ("seconds",)
"""Summary columns that are no figures of the case: a rerun changing only them keeps no earlier summary."""


def changed_figures(earlier: str, current: str) -> list[str]:
    """The cases whose row in the CSV ``earlier`` holds something ``current`` does not: figures of
    a finished case that are gone or differ (columns both hold, timings aside), or a value in a
    column ``current`` lacks (one added by hand); order does not matter."""
    before_header, before = _csv_rows(earlier)
    after_header, after = _csv_rows(current)
    extra = [field for field in before_header if field not in after_header]
    shared = [field for field in before_header if field in after_header and field not in TIMING_FIELDS]
    changed = []
    for case, row in before.items():
        now = after.get(case)
        if any(row.get(field) for field in extra):
            changed.append(case)
        elif row.get("status") == "ok" and (now is None or any(row.get(field) != now.get(field) for field in shared)):
            changed.append(case)  # a failure holds no figures: mending it loses nothing
    return changed


def _csv_rows(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header of a summary's CSV text and its rows by case (unparsable text: none)."""
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = {row["case"]: row for row in reader if row.get("case")}
        return list(reader.fieldnames or []), rows
    except csv.Error:
        return [], {}


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _keep(folder: Path, content: bytes) -> Path:
    """``content`` as the first of ``summary.earlier-1.csv``, ``-2``, ... that is new or holds it already."""
    for number in itertools.count(1):
        path = folder / f"summary.earlier-{number}.csv"
        if _holds(path, content) or _create(path, content):
            return path
    raise AssertionError("unreachable")


def _holds(path: Path, content: str | bytes) -> bool:
    """Whether ``path`` exists holding ``content`` (text as UTF-8)."""
    return _read_bytes(path) == (content.encode("utf-8") if isinstance(content, str) else content)


def _create(path: Path, content: bytes) -> bool:
    """Create ``path`` holding ``content`` unless it exists (then False, or True if it holds ``content``)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(temporary, "xb") as file:
            file.write(content)
        os.link(temporary, path)  # fails when the name exists: never replaces
        return True
    except FileExistsError:
        return _holds(path, content)
    finally:
        temporary.unlink(missing_ok=True)


def add_summarize_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("summarize", help="rebuild summary.csv of a batch output folder",
                                 description="Rebuild summary.csv from all the case records of a `batch` output folder "
                                             "(<case>.json, <case>.failed.json), e.g. after sharded runs; it replaces "
                                             "summary.csv atomically. When the earlier summary holds figures of a "
                                             "finished case that changed or are gone (or values in a column added by "
                                             "hand), it is kept beside it as summary.earlier-1.csv (-2, ...). Exit code "
                                             "0: every case finished; 3: "
                                             "some failed (their errors are in the summary); 1: no case records.")
    parser.add_argument("output_dir", type=Path, help="the output folder of one or more `batch` runs")
    parser.add_argument("--overwrite", action="store_true",
                        help="do not keep the earlier summary, even when its figures changed (default: keep it then)")
    add_triage_option(parser)
    parser.set_defaults(handler=run_summarize)


def add_triage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--triage", action="store_true",
                        help="order the summary by review score, most doubtful first; cases without one (failed) last "
                             "(default: by case name)")


def report_summary(path: Path, rows: list[dict[str, Any]]) -> int:
    """Log the counts and failures of a written summary; exit code 0 (all ok) or 3 (some failed)."""
    failed = [row for row in rows if row["status"] == "failed"]
    for row in failed:
        logger.error("failed: %s: %s", row["case"], row["error"])
    logger.info("%s: %d cases, %d ok, %d failed", path, len(rows), len(rows) - len(failed), len(failed))
    return EXIT_CASES_FAILED if failed else EXIT_OK


def run_summarize(args: argparse.Namespace) -> int:
    if not args.output_dir.is_dir():
        raise ValueError(f"{args.output_dir}: folder not found")
    if not summary_rows(args.output_dir):
        raise ValueError(f"{args.output_dir}: no case records (<case>.json) of a batch run")
    path, rows = write_summary(args.output_dir, args.triage, keep_earlier=not args.overwrite)
    return report_summary(path, rows)
