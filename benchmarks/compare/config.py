"""What one comparison runs: nets, budgets, seeds, methods, views (`BenchConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from taperprune.errors import TaperpruneError
from taperprune.run.config import RunConfig

from .baselines import BASELINES, KNAPSACK, OFF_BY_DEFAULT, UNIFORM
from .results import parse_net

# taperprune and its ablations: RunConfig overrides (everything else is the default).
TAPERPRUNE: dict[str, dict[str, Any]] = {
    "taperprune": {},
    "taperprune_linear": {"schedule": "linear"},
    "taperprune_uniform_price": {"price": "uniform"},
    "taperprune_bn_gamma": {"score": "bn_gamma"},
    "taperprune_oneshot": {"schedule": "oneshot"},
    "taperprune_soft_price": {"price_power": 0.5},  # orders by s / d**0.5
    "taperprune_marginal_price": {"price": "macs"},  # the marginal MACs of the moment
    "taperprune_trailing": {"reference": "trailing"},  # the adaptive taper on a trailing loss
    "taperprune_exponential": {"schedule": "exponential"},  # a fixed schedule, same steps
    "taperprune_cubic": {"schedule": "cubic"},  # AGP's cubic schedule, same steps
    "taperprune_floor": {"width_floor": 0.75},  # ≥ ¾ of the uniform-width allocation
    "taperprune_floor90": {"width_floor": 0.9},
    "taperprune_cap90": {"max_pruning_ratio": 0.9},  # the baselines' cap, on taperprune
    "taperprune_round8": {"round_to": 8},
    "taperprune_distill": {"distill": 0.5},  # distils from the unpruned model
    "taperprune_beta95": {"score_beta": 0.95},  # scores that follow a thinning layer faster
}
BASELINE_METHODS: tuple[str, ...] = (*BASELINES, KNAPSACK, UNIFORM)
# A baseline with the same distillation as taperprune_distill (the same weight and
# temperature, the same frozen teacher: the pretrained net) in every step it trains,
# so the method and the option are told apart: `<baseline>_distill`.
DISTILLED = "_distill"
DISTILL_WEIGHT: float = TAPERPRUNE["taperprune_distill"]["distill"]
DISTILLED_BASELINES: tuple[str, ...] = tuple(f"{m}{DISTILLED}" for m in BASELINE_METHODS)
ALL_METHODS: tuple[str, ...] = (*TAPERPRUNE, *BASELINE_METHODS, *DISTILLED_BASELINES)
# Variants measured for one question each (the taper's reference, a fixed schedule,
# round_to 8): run when named in --methods.
ON_DEMAND = (
    "taperprune_trailing",
    "taperprune_exponential",
    "taperprune_cubic",
    "taperprune_floor",
    "taperprune_floor90",
    "taperprune_cap90",
    "taperprune_round8",
    "taperprune_distill",
    "taperprune_beta95",
    *DISTILLED_BASELINES,
)
# What `--methods all` and the default run: every method but OFF_BY_DEFAULT and ON_DEMAND.
METHODS: tuple[str, ...] = tuple(
    m for m in ALL_METHODS if m not in OFF_BY_DEFAULT and m not in ON_DEMAND
)
# Added with docs/BASELINES.md: the quick mode runs these at its last budget only.
NEWER_BASELINES: tuple[str, ...] = ("tp_l1_global_iter", "tp_taylor_iter", "tp_group_sl", KNAPSACK)
VIEWS = ("per-budget", "curve", "steps")

# Torch-Pruning's max_pruning_ratio per net (a net spec, or its name before any ':'), one of
# MAX_PRUNING_RATIO_CHOICES, chosen on seed 0 (docs/BASELINES.md says how and which
# have been); nets not listed get DEFAULT_MAX_PRUNING_RATIO.
MAX_PRUNING_RATIO_CHOICES: tuple[float, ...] = (0.8, 0.9, 0.95)
DEFAULT_MAX_PRUNING_RATIO = 0.9
MAX_PRUNING_RATIO: dict[str, float] = {
    "demo_cnn": 0.9,
    "resnet20": 0.9,
    "mobilenet_small": 0.9,
    "vgg_small": 0.8,
}


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
    # Net spec or name → Torch-Pruning's max_pruning_ratio; "*" overrides the default.
    max_pruning_ratio: dict[str, float] = field(default_factory=lambda: dict(MAX_PRUNING_RATIO))
    one_budget_methods: tuple[str, ...] = ()  # per-budget view: run at the last budget only

    def __post_init__(self) -> None:
        for name, given, known in (
            ("methods", self.methods, ALL_METHODS),
            ("curve methods", self.curve_methods, BASELINE_METHODS),
            ("sweep methods", self.sweep_methods, ("taperprune", *BASELINE_METHODS)),
            ("one-budget methods", self.one_budget_methods, ALL_METHODS),
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
        bad_ratios = {k: r for k, r in self.max_pruning_ratio.items() if not 0 < r < 1}
        if bad_ratios:
            raise TaperpruneError(f"max pruning ratios must be in (0, 1), got {bad_ratios}")

    def max_ratio(self, spec: str) -> float:
        """Torch-Pruning's max_pruning_ratio for net `spec`: its own entry, its name's, "*"."""
        table = self.max_pruning_ratio
        for key in (spec, parse_net(spec)[0], "*"):
            if key in table:
                return table[key]
        return DEFAULT_MAX_PRUNING_RATIO


def baseline_of(method: str) -> tuple[str, bool]:
    """(the baseline `method` runs, whether it distils from the pretrained net)."""
    if method in DISTILLED_BASELINES:
        return method.removesuffix(DISTILLED), True
    return method, False


def parse_max_ratios(text: str) -> dict[str, float]:
    """`--max-pruning-ratio`: "0.95" (every net) or "demo_cnn=0.8,resnet20=0.95" (per net,
    the others keep MAX_PRUNING_RATIO's value); returns the whole table."""
    table = dict(MAX_PRUNING_RATIO)
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.rpartition("=")
        try:
            ratio = float(value)
        except ValueError:
            raise TaperpruneError(f"--max-pruning-ratio takes r or net=r,…, got {text!r}") from None
        if not eq:
            table = {"*": ratio}  # one value for every net
        else:
            table[key] = ratio
    return table


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
        one_budget_methods=NEWER_BASELINES,
        latency_runs=2,
        train=train,
    )
