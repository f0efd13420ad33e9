"""Progress display for the command line: a terminal bar, JSON lines (for the Slicer module), or nothing."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from ..progress import ProgressTracker

MODES = ("bar", "json", "none")


class ProgressDisplay:
    """Shows the overall progress of one run; use as a context manager around the run."""

    def __init__(self, mode: str, plan: Sequence[str], description: str = ""):
        self.mode = mode
        self.tracker = ProgressTracker(plan, self._show)
        self._bar = None
        if mode == "bar" and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=100, desc=description, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}")

    def _show(self, fraction: float, stage: str, model: str) -> None:
        if self.mode == "json":
            print(json.dumps({"type": "progress", "fraction": round(fraction, 4), "stage": stage, "model": model}), flush=True)
        elif self._bar is not None:
            self._bar.n = 100 * fraction
            self._bar.set_postfix_str(model, refresh=False)
            self._bar.refresh()

    def __call__(self, stage: str, model: str, fraction: float) -> None:
        self.tracker(stage, model, fraction)

    def done(self, **fields) -> None:
        """Final event: a JSON line ``{"type": "done", ...}`` in json mode."""
        if self.mode == "json":
            print(json.dumps({"type": "done", **fields}), flush=True)

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
