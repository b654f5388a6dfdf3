"""SIGINT/SIGTERM during a run: finish the step, checkpoint, stop (a second one stops at once)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def deferred_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM only call `on_signal(signum)` once each; the run decides
    when to stop. The previous handlers are back afterwards."""
    old: dict[int, Any] = {}

    def handle(signum: int, _frame: object) -> None:
        on_signal(signum)
        signal.signal(signum, old.get(signum, signal.SIG_DFL))

    for signum in (signal.SIGINT.value, signal.SIGTERM.value):
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            old[signum] = signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)
