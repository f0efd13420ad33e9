"""Peak resident memory of this process, where the platform tells it."""
from __future__ import annotations

import sys


def peak_rss_mb() -> float | None:
    """Peak RSS in MB (Linux / macOS through ``resource``; None on Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)
