"""How the budget tapers: the adaptive controller, fixed schedules and one-shot.

Pure functions of a small state. Budgets are in MACs; `full` is the unpruned cost and
`final` the last requested budget. Every schedule reaches `final` within `steps`
taper steps (plus one step per intermediate budget, where the pruner stops to take an
exact snapshot): the adaptive controller slows down when the training loss rises above
its reference, but never below the pace that still meets that deadline (a controller
that may stall was measured to stall).

The reference is the loss measured before pruning (`reference: warmup`), or a slow
moving average of the training loss itself (`reference: trailing`): a smaller network
settles at a higher loss, which the warm-up reference reads as damage for good (the
demo's controller was paused on 409 of 465 taper steps, so the deadline set the pace),
while the trailing one reads a loss rising faster than training recovers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

REFERENCES = ("warmup", "trailing")


class ScheduleKind(str, Enum):
    ADAPTIVE = "adaptive"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    CUBIC = "cubic"
    ONESHOT = "oneshot"


@dataclass(frozen=True)
class ScheduleConfig:
    kind: ScheduleKind = ScheduleKind.ADAPTIVE
    steps: int = 1000  # taper steps: the final budget is reached within these
    tolerance: float = 0.05  # relative excess of the loss EMA over the reference loss
    pause_factor: float = 2.0  # excess above tolerance × this pauses the taper
    max_speed: float = 3.0  # r_max as a multiple of the even (geometric) rate
    min_speed: float = 0.1  # r_floor as a multiple of the even rate
    grow: float = 1.05  # rate × grow per step while the loss is within tolerance
    shrink: float = 0.8  # rate × shrink per step while it is above
    loss_beta: float = 0.9  # EMA rate of the training loss seen by the controller
    reference: str = "warmup"  # what the loss is compared with: "warmup" | "trailing"
    reference_beta: float = 0.99  # trailing: EMA rate of the reference loss

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ScheduleKind(self.kind))
        if self.reference not in REFERENCES:
            raise ValueError(
                f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}"
            )
        if not self.loss_beta < self.reference_beta < 1:
            raise ValueError(
                f"need loss_beta < reference_beta < 1 (the reference moves slower than the "
                f"loss it is compared with), got {self.loss_beta}, {self.reference_beta}"
            )
        if self.steps < 1:
            raise ValueError(f"taper steps must be ≥ 1, got {self.steps}")
        if self.tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance}")
        if not 0 < self.min_speed <= 1 <= self.max_speed:
            raise ValueError(
                f"need 0 < min_speed ≤ 1 ≤ max_speed, got {self.min_speed}, {self.max_speed}"
            )
        if not (0 < self.shrink < 1 < self.grow):
            raise ValueError(f"need 0 < shrink < 1 < grow, got {self.shrink}, {self.grow}")
        if not 0 <= self.loss_beta < 1:
            raise ValueError(f"loss_beta must be in [0, 1), got {self.loss_beta}")


@dataclass(frozen=True)
class TaperState:
    step: int = 0  # taper steps taken
    budget: float = 0.0  # current B(t) in MACs
    rate: float = 0.0  # controller's relative rate per step (adaptive)
    paused: bool = False
    loss_ema: float = 0.0  # raw EMA; see loss_estimate
    loss_steps: int = 0
    excess: float = 0.0  # last relative excess loss seen
    ref: float = 0.0  # trailing reference: slow EMA of the loss, from the warm-up loss
    ref_steps: int = 0  # steps the trailing reference has seen (0: not started)


def even_rate(full: float, final: float, steps: int) -> float:
    """The constant relative rate that takes the budget from `full` to `final` in `steps`."""
    return 1.0 - (final / full) ** (1.0 / steps)


def start(cfg: ScheduleConfig, full: float, final: float) -> TaperState:
    return TaperState(budget=full, rate=even_rate(full, final, cfg.steps))


def loss_estimate(state: TaperState, beta: float) -> float:
    return state.loss_ema / (1.0 - beta**state.loss_steps) if state.loss_steps else math.nan


def control(cfg: ScheduleConfig, state: TaperState, excess: float, r_even: float) -> TaperState:
    """The adaptive controller's rate update for one step, given the relative excess loss."""
    floor, ceiling = cfg.min_speed * r_even, cfg.max_speed * r_even
    if state.paused:
        if excess < cfg.tolerance:
            return replace(state, paused=False, rate=floor)
        return state
    if excess > cfg.tolerance * cfg.pause_factor:
        return replace(state, paused=True)
    if excess > cfg.tolerance:
        return replace(state, rate=max(state.rate * cfg.shrink, floor))
    return replace(state, rate=min(state.rate * cfg.grow, ceiling))


def advance(
    cfg: ScheduleConfig,
    state: TaperState,
    *,
    full: float,
    final: float,
    loss: float,
    ref_loss: float,
    targets: tuple[float, ...] = (),
) -> TaperState:
    """The budget for the next step. `targets` are the requested budgets (descending)."""
    t = state.step + 1
    ema = cfg.loss_beta * state.loss_ema + (1 - cfg.loss_beta) * loss
    state = replace(state, step=t, loss_ema=ema, loss_steps=state.loss_steps + 1)
    kind = cfg.kind
    if kind is ScheduleKind.LINEAR:
        budget = final if t >= cfg.steps else full - (full - final) * (t / cfg.steps)
    elif kind is ScheduleKind.EXPONENTIAL:
        # Exactly `final` at the deadline: full * (final / full) can round above it.
        budget = final if t >= cfg.steps else full * (final / full) ** (t / cfg.steps)
    elif kind is ScheduleKind.CUBIC:
        # Zhu & Gupta's gradual pruning (AGP): the removed share grows as 1 − (1 − t/T)³, fast
        # at first and slow towards the end, where each channel removed costs the most.
        budget = final if t >= cfg.steps else final + (full - final) * (1 - t / cfg.steps) ** 3
    elif kind is ScheduleKind.ONESHOT:
        # Straight to each requested budget in turn, evenly spaced over the taper steps.
        levels = targets or (final,)
        k = min(len(levels) - 1, (t - 1) * len(levels) // cfg.steps)
        budget = levels[k]
    else:
        if cfg.reference == "trailing":
            prev = state.ref if state.ref_steps else ref_loss
            ref = cfg.reference_beta * prev + (1 - cfg.reference_beta) * loss
            state = replace(state, ref=ref, ref_steps=state.ref_steps + 1)
            ref_loss = ref
        excess = (loss_estimate(state, cfg.loss_beta) - ref_loss) / max(abs(ref_loss), 1e-12)
        state = control(
            cfg, replace(state, excess=excess), excess, even_rate(full, final, cfg.steps)
        )
        left = cfg.steps - state.step + 1
        # On the last step (left == 1) go to `final` exactly: (final / B) ** 1 rounds.
        required = 1.0 - (final / state.budget) ** (1.0 / left) if left > 1 else 1.0
        rate = max(0.0 if state.paused else state.rate, required)
        budget = state.budget * (1.0 - rate)
    return replace(state, budget=max(final, min(budget, state.budget)))
