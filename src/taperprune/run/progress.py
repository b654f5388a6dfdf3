"""Progress of the application's long phases: a bar with ETA in a terminal, and where the
output goes to a file (nohup, CI, a scheduler) a plain line at least every 30 s."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Seconds between plain lines off a terminal; TAPERPRUNE_PROGRESS_SECONDS overrides it.
PLAIN_EVERY = 30.0


def _plain_every() -> float:
    text = os.environ.get("TAPERPRUNE_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(text)) if text else PLAIN_EVERY
    except ValueError:
        return PLAIN_EVERY


def format_duration(seconds: float) -> str:
    """12 → '0:12', 3725 → '1:02:05'."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PhaseProgress:
    """One phase's progress: `update(done, info)` as it goes, `retitle` for a sub-phase.

    In a terminal it is a rich bar with elapsed time and ETA. Otherwise it prints one plain
    line when the phase starts, at least every `every` seconds while it runs, and when it
    ends: 'prune 120/515 (23%) 1:10 elapsed, ETA 4:30 | budget 61.2% …'.
    """

    def __init__(
        self,
        console: Console,
        label: str,
        total: int,
        completed: int = 0,
        *,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.label, self.total = console, label, max(1, total)
        self.done, self.start_done, self.info = completed, completed, ""
        self.every = _plain_every() if every is None else every
        self.clock = clock
        self.t0 = self.last = clock()
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )

    def __enter__(self) -> PhaseProgress:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(
                self.label, total=self.total, completed=self.done, info=""
            )
        else:
            self._line("started")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif kind is None:
            self._line("done")

    def eta(self) -> float | None:
        """Seconds left at the rate seen in this process (None before the first step)."""
        ran = self.done - self.start_done
        if ran <= 0:
            return None
        return (self.clock() - self.t0) / ran * max(0, self.total - self.done)

    def update(self, done: int, info: str = "", total: int | None = None) -> None:
        self.done, self.info = done, info or self.info
        if total is not None:
            self.total = max(1, total)
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=self.total, info=self.info)
        elif self.clock() - self.last >= self.every:
            self._line()

    def retitle(self, label: str, done: int) -> None:
        """A new sub-phase (e.g. warm-up → taper) of the same count, from step `done`."""
        if label == self.label:
            return
        self.label, self.done = label, done
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, description=label)
        else:
            self._line("started")

    def finish(self, done: int) -> None:
        """The phase ended at `done` steps (maybe before the planned total)."""
        self.update(done, total=done)

    def _line(self, event: str = "") -> None:
        """'prune 0/515 started', 'prune 120/515 (23%), 1:10 elapsed, ETA 4:30 | info',
        'prune 515/515 done in 5:00'."""
        self.last = self.clock()
        elapsed = format_duration(self.last - self.t0)
        head = f"{self.label} {self.done}/{self.total}"
        if event == "started":
            line = f"{head} started"
        elif event == "done":
            line = f"{head} done in {elapsed}"
        else:
            eta = self.eta()
            line = f"{head} ({100 * self.done / self.total:.0f}%), {elapsed} elapsed"
            line += f", ETA {format_duration(eta)}" if eta is not None else ""
            line += f" | {self.info}" if self.info else ""
        self.console.print(line, soft_wrap=True, highlight=False, markup=False)


def progress(console: Console, label: str, total: int, completed: int = 0) -> PhaseProgress:
    """The progress display of one phase (bar in a terminal, plain lines otherwise)."""
    return PhaseProgress(console, label, total, completed)
