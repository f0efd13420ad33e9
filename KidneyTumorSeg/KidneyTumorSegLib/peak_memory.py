"""Peak resident memory of this process, where the platform tells it."""
from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float | None:
    """Peak RSS in MB since this process started its program; None on Windows.

    On Linux it is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would also count the peak
    of the process that started this one (it survives fork and exec), so a command line started
    by Slicer or by a benchmark that has built a large case would report their peak. Elsewhere
    (macOS) it is ``ru_maxrss``.
    """
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:  # not Linux
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)
