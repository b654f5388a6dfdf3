"""CPU time other processes take meanwhile: a latency timed while they run is theirs too.

On the project's shared 2-core VM, eager torch with 2 threads ran 3-200× slower while
another job used one core, and a latency model timed so priced a ResNet-18 at 10× what it
ran in (docs/BENCHMARKS.md). Linux only (/proc); elsewhere nothing is measured.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# Other processes' CPU use above which a timing is not trusted (cores).
BUSY_CORES = 0.25


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process, all its threads), or None
    where /proc is absent."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    t = [int(v) for v in fields]
    busy = t[0] + t[1] + t[2] + t[5] + t[6] + t[7]  # user nice system irq softirq steal
    return busy, int(mine[11]) + int(mine[12])  # utime + stime


class OthersMeter:
    """CPU cores used by other processes between `start()` and `cores()`."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.ticks0 = cpu_ticks()

    def cores(self) -> float | None:
        """Other processes' mean CPU use since `start()`, in cores (None: not measurable)."""
        now = cpu_ticks()
        if now is None or self.ticks0 is None:
            return None
        dt_s = max(time.monotonic() - self.t0, 1e-3)
        hz = os.sysconf("SC_CLK_TCK")
        others = (now[0] - self.ticks0[0]) - (now[1] - self.ticks0[1])
        return max(0.0, others / hz / dt_s)


def busy_note(cores: float | None, what: str) -> str | None:
    """A one-line warning where other processes used ≥ BUSY_CORES while `what` was timed."""
    if cores is None or cores < BUSY_CORES:
        return None
    return (
        f"other processes used {cores:.2f} CPU cores while {what} was timed, so its figures "
        "may be far off; time it on a quiet machine (clear the latency cache: "
        "~/.cache/taperprune/latency or $TAPERPRUNE_CACHE)"
    )
