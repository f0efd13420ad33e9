"""Review decisions: one ``<case>.review.json`` beside each case's report, and ``reviews.csv``
rebuilt from all of them. Files are written whole under a temporary name and renamed, so a
reader never sees half a decision; label maps are never touched.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..imageio import atomic_output

UNREVIEWED = "unreviewed"
STATUSES = ("accepted", "needs correction", "rejected")
DECISION_SUFFIX = ".review.json"
REVIEWS_NAME = "reviews.csv"
REVIEWS_FIELDS = ("case", "status", "note", "time")


class DecisionFileError(ValueError):
    """A ``<case>.review.json`` that is not a decision: it is left as it is."""


@dataclass(frozen=True)
class Decision:
    """A reviewer's decision on a case: one of :data:`STATUSES`, a free-text note, and when
    (ISO 8601, UTC, seconds)."""

    case: str
    status: str
    note: str
    time: str


@dataclass(frozen=True)
class Saved:
    """A decision just saved, and the earlier one it replaced (None when there was none)."""

    decision: Decision
    replaced: Decision | None

    @property
    def message(self) -> str:
        """What the page says after saving."""
        text = f"{self.decision.case}: {self.decision.status}"
        if self.replaced is not None:
            text += f" (replaced the decision '{self.replaced.status}' of {self.replaced.time})"
        return text


def decision_path(folder: Path, case: str) -> Path:
    return folder / f"{case}{DECISION_SUFFIX}"


def read_decision(folder: Path, case: str) -> Decision | None:
    """The saved decision of ``case``, or None when it has none; :class:`DecisionFileError` when
    its file is unreadable."""
    path = decision_path(folder, case)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecisionFileError(f"{path}: not a review decision ({error})") from error
    try:
        decision = Decision(case=str(data["case"]), status=str(data["status"]), note=str(data.get("note", "")),
                            time=str(data["time"]))
    except (TypeError, KeyError) as error:
        raise DecisionFileError(f"{path}: not a review decision (missing {error})") from error
    if decision.status not in STATUSES:
        raise DecisionFileError(f"{path}: unknown status {decision.status!r}")
    return decision


def save_decision(folder: Path, case: str, status: str, note: str = "", now: datetime | None = None) -> Saved:
    """Save ``status`` and ``note`` for ``case`` (atomically) and rebuild ``reviews.csv``.

    The later decision wins: an earlier one is replaced and returned in :attr:`Saved.replaced`.
    An unreadable decision file is never replaced (:class:`DecisionFileError`).
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    earlier = read_decision(folder, case)
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    decision = Decision(case=case, status=status, note=note.strip(), time=moment.isoformat(timespec="seconds"))
    with atomic_output(decision_path(folder, case), overwrite=True) as temporary:
        temporary.write_text(json.dumps(asdict(decision), indent=2) + "\n", encoding="utf-8")
    write_reviews(folder)
    return Saved(decision, earlier)


def read_decisions(folder: Path, cases: list[str]) -> dict[str, Decision]:
    """The saved decisions of ``cases`` by case name; cases without a readable one are left out."""
    decisions = {}
    for case in cases:
        try:
            decision = read_decision(folder, case)
        except DecisionFileError:
            continue
        if decision is not None:
            decisions[case] = decision
    return decisions


def resume_index(cases: list[str], decisions: dict[str, Decision]) -> int:
    """Where a restarted review resumes: the first of ``cases`` without a decision, else the first."""
    return next((index for index, case in enumerate(cases) if case not in decisions), 0)


def write_reviews(folder: Path) -> Path:
    """Rebuild ``reviews.csv`` (case, status, note, time; by case) from every decision file of ``folder``."""
    cases = sorted(path.name[: -len(DECISION_SUFFIX)] for path in folder.glob(f"*{DECISION_SUFFIX}"))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=REVIEWS_FIELDS)
    writer.writeheader()
    writer.writerows(asdict(decision) for decision in read_decisions(folder, cases).values())
    path = folder / REVIEWS_NAME
    with atomic_output(path, overwrite=True) as temporary:
        temporary.write_bytes(buffer.getvalue().encode("utf-8"))
    return path
