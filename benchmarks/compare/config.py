"""What one comparison runs: nets, budgets, seeds, methods, views (`BenchConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from taperprune.errors import TaperpruneError
from taperprune.run.config import RunConfig

from .baselines import BASELINES, UNIFORM

# taperprune and its ablations: RunConfig overrides (everything else is the default).
TAPERPRUNE: dict[str, dict[str, Any]] = {
    "taperprune": {},
    "taperprune_linear": {"schedule": "linear"},
    "taperprune_uniform_price": {"price": "uniform"},
    "taperprune_bn_gamma": {"score": "bn_gamma"},
    "taperprune_oneshot": {"schedule": "oneshot"},
    "taperprune_soft_price": {"price_power": 0.5},  # orders by s / d**0.5
    "taperprune_marginal_price": {"price": "macs"},  # the marginal MACs of the moment
}
METHODS: tuple[str, ...] = (*TAPERPRUNE, *BASELINES, UNIFORM)
VIEWS = ("per-budget", "curve", "steps")


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one `taperprune bench` (the CLI maps onto it)."""

    nets: tuple[str, ...] = ("demo_cnn", "resnet20")  # name or name:key=value,…
    data: str = "fashion-mnist"
    budgets: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625, 0.03125)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    views: tuple[str, ...] = ("per-budget", "curve")
    curve_methods: tuple[str, ...] = ("tp_l1_global", UNIFORM)
    sweep_steps: tuple[int, ...] = (400, 1000, 2000)
    sweep_budget: float = 0.03125
    sweep_methods: tuple[str, ...] = ("taperprune", "tp_l1_global")
    out: str = "runs/bench"
    train: RunConfig = field(default_factory=RunConfig)  # steps, learning rates, batch size
    latency_batch: int = 32
    latency_runs: int = 10

    def __post_init__(self) -> None:
        for name, given, known in (
            ("methods", self.methods, METHODS),
            ("curve methods", self.curve_methods, (*BASELINES, UNIFORM)),
            ("sweep methods", self.sweep_methods, ("taperprune", *BASELINES, UNIFORM)),
            ("views", self.views, VIEWS),
        ):
            bad = [m for m in given if m not in known]
            if bad:
                raise TaperpruneError(f"unknown {name} {bad}; choose from {list(known)}")
        if not self.budgets or any(not 0 < b < 1 for b in (*self.budgets, self.sweep_budget)):
            raise TaperpruneError(
                f"budgets are fractions of the full MACs in (0, 1), got {list(self.budgets)} "
                f"and sweep budget {self.sweep_budget}"
            )
        if not self.seeds or not self.nets:
            raise TaperpruneError("bench needs at least one net and one seed")
        if any(n < 2 for n in self.sweep_steps):
            raise TaperpruneError(f"sweep steps must be ≥ 2, got {list(self.sweep_steps)}")


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """Tiny data and steps, one net and one seed, every view: checks the harness runs."""
    train = cfg.train.updated(
        train_limit=1024,
        test_limit=256,
        pretrain_epochs=1.0,
        taper_epochs=1.0,
        finetune_epochs=1.0,
        warmup_steps=5,
        bn_recalibration_batches=2,
    )
    return replace(
        cfg,
        nets=cfg.nets[:1],
        budgets=(0.5, 0.125),
        seeds=cfg.seeds[:1],
        views=VIEWS,
        sweep_steps=(40, 80),
        latency_runs=2,
        train=train,
    )
