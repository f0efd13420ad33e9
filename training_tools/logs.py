"""Training logs: a CSV of scalars, TensorBoard (when installed) and PNG learning curves."""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

COLUMNS = ("iteration", "lr", "loss", "seg_loss", "reg_loss", "seconds_per_iteration", "val_dice", "val_precision",
           "val_recall", "val_healthy_called_tumor", "val_chance_precision", "fit_dice", "fit_precision", "fit_recall",
           "fit_healthy_called_tumor", "fit_chance_precision")
"""Training scalars, the whole-crop validation scores (training_tools.validation) and, with
``train --fit-cases``, the same scores on training cases (``fit_*``)."""


class ScalarLog:
    """Appends rows of :data:`COLUMNS` to ``log.csv`` and, when available, a TensorBoard folder.

    ``resume_from``: rows past this iteration (written after the checkpoint a run resumes from)
    are dropped, so the log matches the resumed run exactly.
    """

    def __init__(self, folder: Path, resume_from: int | None = None, tensorboard: bool = True):
        self.path = folder / "log.csv"
        if resume_from is None or not self.path.is_file():
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)
        else:
            rows = [r for r in read_log(self.path) if r["iteration"] <= resume_from]
            with open(self.path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, COLUMNS)
                writer.writeheader()
                writer.writerows({k: _fmt(r.get(k)) for k in COLUMNS} for r in rows)
        self.writer = _tensorboard_writer(folder / "tensorboard", resume_from) if tensorboard else None

    def write(self, iteration: int, values: Mapping[str, float]) -> None:
        """One row: ``values`` holds any of the columns besides ``iteration``."""
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([iteration] + [_fmt(values.get(c)) for c in COLUMNS[1:]])
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _tensorboard_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: logging to CSV only")
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def read_log(path: Path) -> list[dict[str, float]]:
    """Rows of a ``log.csv`` as dicts of floats (empty cells left out; iteration as int)."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {k: float(v) for k, v in raw.items() if v not in ("", None)}
            row["iteration"] = int(row["iteration"])
            rows.append(row)
    return rows


def plot_curves(log_path: Path, png_path: Path, title: str = "") -> Path:
    """PNG of the loss (with its parts), the learning rate and the whole-crop validation (Dice,
    precision, recall, healthy kidney called tumor) against iteration; the training cases' Dice
    (``fit_dice``), where logged, dashed beside it, and the precision of calling every scored voxel
    tumor (``val_chance_precision``), dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss", "seg_loss", "reg_loss"):
        _plot(axes[0], rows, key)
    axes[0].set_title("training loss")
    _plot(axes[1], rows, "lr")
    axes[1].set_title("learning rate")
    for key in ("val_dice", "val_precision", "val_recall", "val_healthy_called_tumor"):
        _plot(axes[2], rows, key, marker="o")
    _plot(axes[2], rows, "fit_dice", marker="o", linestyle="--", label="fit_dice (training cases)")
    _plot(axes[2], rows, "val_chance_precision", linestyle=":", label="val_chance_precision (precision at chance)")
    axes[2].set_title("whole-crop validation")
    axes[2].set_ylim(0, 1)
    for axis in axes:
        axis.set_xlabel("iteration")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png_path, dpi=90)
    plt.close(figure)
    return png_path


def _plot(axis, rows: Sequence[dict[str, float]], key: str, marker: str | None = None, linestyle: str = "-",
          label: str | None = None) -> None:
    points = [(r["iteration"], r[key]) for r in rows if key in r]
    if points:
        x, y = zip(*points)
        axis.plot(x, y, label=label or key, marker=marker, markersize=3, linestyle=linestyle)


def relay_validation(legs: Sequence[tuple[str, Path]], role: str) -> list[tuple[str, list[int], list[float]]]:
    """Validation Dice of ``role`` over a relay of training legs: per leg (name, folder of
    ``ROLE.csv`` logs, oldest first), the iterations counted from the relay's start and the Dice.
    A leg without that role's log (the role was carried over) adds nothing."""
    points, offset = [], 0
    for name, folder in legs:
        path = Path(folder) / f"{role}.csv"
        if not path.is_file():
            continue
        rows = read_log(path)
        validated = [(offset + r["iteration"], r["val_dice"]) for r in rows if "val_dice" in r]
        if validated:
            iterations, dice = zip(*validated)
            points.append((name, list(iterations), list(dice)))
        offset += max((r["iteration"] for r in rows), default=0)
    return points


def plot_relay(legs: Sequence[tuple[str, Path]], roles: Sequence[str], png_path: Path) -> Path:
    """PNG of every role's validation Dice over a relay of training legs, one panel per role,
    one colour per leg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(roles))
    rows = -(-len(roles) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.2 * rows), squeeze=False)
    colours = {name: f"C{i}" for i, (name, _) in enumerate(legs)}
    for axis, role in zip(axes.flat, roles):
        for name, iterations, dice in relay_validation(legs, role):
            axis.plot(iterations, dice, marker="o", markersize=2, color=colours[name], label=name)
        axis.set_title(role)
        axis.set_ylim(0, 1)
        axis.set_xlabel("iteration (all legs)")
        axis.set_ylabel("validation Dice")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(roles):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(png_path, dpi=90)
    plt.close(figure)
    return png_path
