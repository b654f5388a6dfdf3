"""The one exception type users see: a message that names the problem and the fix."""

from __future__ import annotations


class TaperpruneError(Exception):
    """A user-facing error. The CLI prints its message (no traceback) and exits with code 2."""


class BudgetError(TaperpruneError, ValueError):
    """A requested MAC budget that cannot be met or is malformed."""


class GraphError(TaperpruneError):
    """A model whose channel structure taperprune cannot prune exactly."""


class DataError(TaperpruneError):
    """A data set that is missing, malformed or unknown."""


class ModelError(TaperpruneError):
    """A model name, file or builder that cannot be resolved."""


class RunInterrupted(TaperpruneError):
    """SIGINT/SIGTERM: the run checkpointed and stopped; it can be resumed."""


class LatencyTimingWarning(UserWarning):
    """A latency timed while other processes used the CPU: its figures may be far off."""
