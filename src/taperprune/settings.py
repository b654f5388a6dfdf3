"""The method's settings (`PrunerConfig`) and its kinds, validated on construction.

Torch-free on purpose: a run's whole config is checked in milliseconds, before torch is
imported and long before anything trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum

from .schedule import ScheduleConfig


class ScoreKind(str, Enum):
    """What ranks the channels: the Taylor-score EMA (default) or BN-|γ| (ablation)."""

    TAYLOR = "taylor"
    BN_GAMMA = "bn_gamma"


class PriceKind(str, Enum):
    """What one unit costs in the λ solve's order (the budget is always in real MACs).

    "static" (default): its marginal MACs at full width; "macs": its marginal MACs now,
    which lets a thinned layer make its neighbours' units look cheap and runs into
    lopsided widths (docs/BENCHMARKS.md); "uniform" (ablation): every unit costs the same.
    """

    STATIC = "static"
    MACS = "macs"
    UNIFORM = "uniform"


PRICES = tuple(p.value for p in PriceKind)
LATENCY_RUNTIMES = ("onnxruntime", "torch")  # = latency.RUNTIMES (this module is torch-free)


@dataclass(frozen=True)
class PrunerConfig:
    """Every setting of the pruning method, validated on construction."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    warmup_steps: int = 50  # steps that only collect scores and the reference loss
    score_beta: float = 0.99  # EMA rate of the Taylor scores
    score: ScoreKind = ScoreKind.TAYLOR
    price: PriceKind = PriceKind.STATIC
    price_power: float = 1.0  # order by s / d**p; 1 is the Lagrangian rule
    max_bad_steps: int = 20  # consecutive non-finite losses/gradients before giving up
    round_to: int = 1  # every group keeps a multiple of this many channels, or its full width
    # > 0: every group keeps at least this share of the channels uniform width would leave
    # it at the current budget (a floor against lopsided widths; with round_to 1 only).
    width_floor: float = 0.0
    # < 1: no group loses more than this share of its channels (Torch-Pruning's
    # max_pruning_ratio; with round_to 1 only); 1: a group may fall to one channel.
    max_pruning_ratio: float = 1.0
    # Latency budgets ('3.5ms'): where the latency model and each snapshot are measured.
    latency_runtime: str = "onnxruntime"  # "onnxruntime" | "torch"
    latency_batch: int = 1
    latency_threads: int = 0  # 0: torch's default thread count here

    def __post_init__(self) -> None:
        for name, kind in (("score", ScoreKind), ("price", PriceKind)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                choices = ", ".join(k.value for k in kind)
                raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be ≥ 1, got {self.warmup_steps}")
        if not 0 <= self.score_beta < 1:
            raise ValueError(f"score_beta must be in [0, 1), got {self.score_beta}")
        if not (math.isfinite(self.price_power) and self.price_power > 0):
            raise ValueError(f"price_power must be > 0, got {self.price_power}")
        if self.max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be ≥ 1, got {self.max_bad_steps}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int):
            raise ValueError(f"round_to must be a whole number of channels, got {self.round_to!r}")
        if not 0 <= self.width_floor < 1:
            raise ValueError(f"width_floor must be in [0, 1), got {self.width_floor}")
        if self.width_floor and self.round_to != 1:
            raise ValueError("width_floor works with round_to 1 only; set one of them")
        if not 0 < self.max_pruning_ratio <= 1:
            raise ValueError(f"max_pruning_ratio must be in (0, 1], got {self.max_pruning_ratio}")
        if self.max_pruning_ratio < 1 and (self.round_to != 1 or self.width_floor):
            raise ValueError(
                "max_pruning_ratio < 1 works with round_to 1 and no width_floor; set one of them"
            )
        if self.latency_runtime not in LATENCY_RUNTIMES:
            raise ValueError(
                f"latency_runtime must be one of {', '.join(LATENCY_RUNTIMES)}, got "
                f"{self.latency_runtime!r}"
            )
        for name in ("latency_batch", "latency_threads"):
            value = getattr(self, name)
            least = 1 if name == "latency_batch" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number ≥ {least}, got {value!r}")
        if self.round_to < 1:
            raise ValueError(
                f"round_to must be ≥ 1 (every group keeps a multiple of round_to channels), "
                f"got {self.round_to}"
            )


def method_keys() -> dict[str, tuple[str, ...]]:
    """Flat setting name → its path in `PrunerConfig` ('tolerance' → ('schedule', 'tolerance')).

    `schedule` names the schedule's kind; the taper's length (`steps`) is not a setting of
    its own where a run derives it from its epochs.
    """
    keys: dict[str, tuple[str, ...]] = {"schedule": ("schedule", "kind")}
    for f in fields(PrunerConfig):
        if f.name != "schedule":
            keys[f.name] = (f.name,)
    for f in fields(ScheduleConfig):
        if f.name not in ("kind", "steps"):
            keys[f.name] = ("schedule", f.name)
    return keys
