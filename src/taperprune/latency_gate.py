"""When a latency snapshot is accepted: its measured latency against its budget.

A snapshot of a latency budget is timed end to end when it is taken. It is accepted when
it measures ≤ budget × LATENCY_SLACK. One timing over that is not enough to prune
further (a shared machine moves a timing by 10–20 %): the snapshot is timed again and
judged on the mean of the two. Still too slow, the pruner aims lower — the modelled
target scaled by budget / measured, down to the smallest network — and prunes one more
step, at most MAX_LATENCY_RETRIES times, then keeps it and says why.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .budget import NS, amount
from .cost import CostModel
from .latency_meter import LatencySettings, Meter
from .latency_model import LatencyModel
from .machine_load import busy_note
from .settings import PrunerConfig

LATENCY_SLACK = 1.05
MAX_LATENCY_RETRIES = 5


def latency_settings(config: PrunerConfig) -> LatencySettings:
    """Where `config` measures latency budgets."""
    return LatencySettings(config.latency_runtime, config.latency_batch, config.latency_threads)


def round_to_notes(settings: LatencySettings, round_to: int) -> list[str]:
    """What to tell a user whose widths the latency model cannot price well."""
    if settings.runtime == "onnxruntime" and round_to % 8:
        # The tables are sampled on multiples of 8: widths between run slower.
        return [
            f"latency budgets in onnxruntime with round_to={round_to}: widths that are not "
            "multiples of 8 run slower than the latency model says; round_to=8 keeps them "
            "where it is accurate"
        ]
    return []


def load_notes(cost: CostModel | LatencyModel) -> list[str]:
    """What to tell a user whose latency model was timed while other processes ran."""
    others = cost.others_cores if isinstance(cost, LatencyModel) else None
    note = busy_note(others, "the latency model")
    return [note] if note else []


def judged_latency(time_ns: Callable[[], float], target: float) -> tuple[int, int]:
    """(the latency a snapshot is judged on, in ns; how many timings it took).

    `time_ns` times the snapshot once; a first timing over target × LATENCY_SLACK is
    confirmed by a second, and the mean of the two is what counts.
    """
    first = int(round(time_ns()))  # judged as recorded: in whole ns, as retry_goal sees it
    if first <= target * LATENCY_SLACK:
        return first, 1
    return int(round((first + time_ns()) / 2)), 2


def retry_goal(
    target: float, reached: float, measured: float, minimum: float, retries: int, step: int
) -> tuple[float | None, str]:
    """(the lower modelled goal to prune on to, or None to accept; a note, or '').

    `reached` is the snapshot's modelled latency, `minimum` the smallest network's, all in
    ns; `retries` how many times this budget was retried already.
    """
    if measured <= target * LATENCY_SLACK:
        return None, ""
    lower = min(reached - 1.0, reached * target / measured)
    if lower < minimum and reached > minimum + 1.0:
        lower = minimum  # as low as the model goes: the smallest network
    what = (
        f"latency snapshot {amount(target, NS)} at step {step}: measured "
        f"{amount(measured, NS)} (mean of two timings) > "
        f"{amount(target * LATENCY_SLACK, NS)} (budget × {LATENCY_SLACK}), "
        f"modelled {amount(reached, NS)}"
    )
    if retries >= MAX_LATENCY_RETRIES or reached <= minimum + 1.0:
        why = "retries used up" if retries >= MAX_LATENCY_RETRIES else "at the minimum"
        return None, f"{what}; kept as it is ({why})"
    return lower, f"{what}; pruning on to a modelled {amount(lower, NS)}"


def gate_snapshot(
    meter: Meter,
    small: nn.Module,
    shape: tuple[int, ...],
    target: float,
    reached: float,
    minimum: float,
    retries: int,
    step: int,
) -> tuple[int, float | None, str]:
    """(the snapshot's judged latency in ns; the lower goal to prune on to, or None to keep
    it; a note, or '') for the pruned network `small` of a latency budget `target`."""
    measured, _ = judged_latency(lambda: 1e6 * meter.net_ms(small, shape), target)
    goal, note = retry_goal(target, reached, measured, minimum, retries, step)
    return measured, goal, note
