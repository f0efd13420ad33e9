"""Peak memory as reports and benchmarks record it: the process's own, not that of whoever started it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.peak_memory import peak_rss_mb

MODULE_DIR = Path(__file__).resolve().parent.parent / "KidneyTumorSeg"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only: ru_maxrss elsewhere")
def test_a_child_does_not_report_the_peak_of_the_process_that_started_it() -> None:
    ballast = np.ones(600 * 2**20, np.uint8)  # 600 MB touched: this process's peak
    parent = peak_rss_mb()
    del ballast
    code = f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r}); from KidneyTumorSegLib.peak_memory import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert parent >= 600
    assert 0 < child < 200  # an interpreter and one small module
