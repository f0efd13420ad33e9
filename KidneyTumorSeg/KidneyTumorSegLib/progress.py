"""Overall progress of a cascade run from per-model reports (for a terminal bar or JSON lines)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

OverallProgress = Callable[[float, str, str], None]
"""``show(overall_fraction, stage, model)``."""


class ProgressTracker:
    """Turns ``report(stage, model, fraction)`` calls into an overall fraction over a planned
    sequence of models (each counts equally; a model reported that is not planned is ignored)."""

    def __init__(self, plan: Sequence[str], show: OverallProgress):
        self.plan = list(plan)
        self.show = show
        self._last = -1.0

    def __call__(self, stage: str, model: str, fraction: float) -> None:
        if model not in self.plan:
            return
        overall = (self.plan.index(model) + min(max(fraction, 0.0), 1.0)) / len(self.plan)
        if overall >= self._last:
            self._last = overall
            self.show(overall, stage, model)
