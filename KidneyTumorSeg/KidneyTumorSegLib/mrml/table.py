"""The clinical measurements of a result as a table node: one row per quantity, per side and total."""
from __future__ import annotations

from typing import Any

import vtk

TABLE_NODE = "vtkMRMLTableNode"
COLUMNS = ("Measurement", "Left", "Right", "Total")


def measurement_rows(measurements: dict[str, Any], review: dict[str, Any] | None = None,
                     kidneys: dict[str, Any] | None = None) -> list[tuple[str, float, float, float]]:
    """Rows ``(name, left, right, total)`` from ``measurements.measure``'s dict (sides: the patient's),
    first, with the report's ``kidneys`` (kidney_sides.side_findings), whether a kidney was found
    per side (1 / 0; total: how many); then, with the report's ``review`` (``CaseReview.to_json``),
    the review score, whether the case needs review (1 / 0) and the disputed volume: for the whole
    case, NaN per side."""
    tumors = measurements.get("tumors", [])

    def per_side(key: str, reduce) -> tuple[float, float, float]:
        values = {side: [t[key] for t in tumors if t["side"] == side] for side in ("left", "right")}
        return reduce(values["left"]), reduce(values["right"]), reduce(values["left"] + values["right"])

    def largest(values: list[float]) -> float:
        return max(values, default=0.0)

    rows = []
    if kidneys is not None:
        found = [float(bool(kidneys[side]["kidney_found"])) for side in ("left", "right")]
        rows.append(("Kidney found (1 = yes)", *found, sum(found)))
    rows += [
        ("Kidney volume (mL)", *(float(measurements["kidney_ml"][s]) for s in ("left", "right", "total"))),
        ("Tumor volume (mL)", *(float(measurements["tumor_ml"][s]) for s in ("left", "right", "total"))),
        ("Tumor count", *(float(v) for v in per_side("volume_ml", len))),
        ("Largest tumor diameter (mm)", *per_side("diameter_mm", largest)),
    ]
    if review is not None:
        whole = float("nan")
        rows += [
            ("Review score (share disputed, 0-1)", whole, whole, float(review["score"])),
            ("Needs review (1 = yes)", whole, whole, float(review["review"])),
            ("Disputed volume (mL)", whole, whole, float(review["disputed_ml"])),
        ]
    return rows


def fill_measurements_table(node: Any, measurements: dict[str, Any], review: dict[str, Any] | None = None,
                            kidneys: dict[str, Any] | None = None) -> Any:
    """Replace the contents of table ``node`` with the measurement (per-side findings, review) rows;
    returns ``node``."""
    table = vtk.vtkTable()
    names = vtk.vtkStringArray()
    names.SetName(COLUMNS[0])
    table.AddColumn(names)
    for column in COLUMNS[1:]:
        values = vtk.vtkDoubleArray()
        values.SetName(column)
        table.AddColumn(values)
    rows = measurement_rows(measurements, review, kidneys)
    table.SetNumberOfRows(len(rows))
    for r, (name, *values) in enumerate(rows):
        names.SetValue(r, name)
        for c, value in enumerate(values, start=1):
            table.GetColumn(c).SetValue(r, round(value, 2))
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetLocked(True)
    return node


def table_rows(node: Any) -> list[tuple[str, float, float, float]]:
    """The rows of a measurements table node (for checks and the console)."""
    table = node.GetTable()
    return [(table.GetValue(r, 0).ToString(), *(table.GetValue(r, c).ToDouble() for c in range(1, 4)))
            for r in range(table.GetNumberOfRows())]
