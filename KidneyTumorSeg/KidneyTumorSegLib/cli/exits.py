"""Exit codes of `kidneytumorseg` (argparse exits 2 on a usage error)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # an error before any output: one line on stderr, nothing written
EXIT_CASES_FAILED = 3  # batch / summarize: some cases failed (in the summary), the others are written
EXIT_INTERRUPTED = 130  # Ctrl-C: unfinished outputs are discarded, finished cases kept
