"""Progress and cancel callbacks shared by the inference loops."""
from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``, called after each batch."""
CancelCallback = Callable[[], bool]
"""``cancel() -> bool``, polled before each batch; True stops the loop with :class:`Cancelled`."""


class Cancelled(Exception):
    """The caller's ``cancel()`` callback asked the running inference to stop."""


def check_cancel(cancel: CancelCallback | None) -> None:
    """Raise :class:`Cancelled` when ``cancel`` is given and returns True."""
    if cancel is not None and cancel():
        raise Cancelled("inference cancelled")
