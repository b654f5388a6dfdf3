"""The bench's views: which runs each makes and how many optimizer steps each method gets.

- ``per-budget``: a baseline at budget b gets the steps taperprune spent on its snapshot
  at b (taper steps up to the snapshot + its fine-tune).
- ``curve``: a baseline gets taperprune's whole run (all budgets) divided by the number of
  budgets, since taperprune makes the whole curve in one run and a baseline needs k runs.
- ``steps``: one budget, several step budgets (users pay for fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .config import TAPERPRUNE, BenchConfig
from .results import optimizer_steps, run_dir

if TYPE_CHECKING:
    from .harness import Bench, Net


def _budgets(cfg: BenchConfig, method: str) -> tuple[float, ...]:
    """The per-budget view's budgets of a baseline (the last only for one-budget methods)."""
    return cfg.budgets[-1:] if method in cfg.one_budget_methods else cfg.budgets


def _taper_steps_at(rows: Sequence[dict[str, Any]], budget: float) -> int:
    return next(int(r["steps"]) for r in rows if r["budget"] == budget)


def per_budget(bench: Bench, net: Net, seed: int, tick: Callable[[], None]) -> None:
    cfg = bench.cfg
    ft = bench.finetune_steps
    reference: list[dict[str, Any]] = []
    for method in (m for m in cfg.methods if m in TAPERPRUNE):
        rows = bench.run_taperprune(net, "per-budget", method, seed, cfg.budgets)
        if method == "taperprune":
            reference = rows
        tick()
    for method in (m for m in cfg.methods if m not in TAPERPRUNE):
        for budget in _budgets(cfg, method):
            if reference:
                steps = _taper_steps_at(reference, budget)
            else:  # no taperprune run to match: its nominal step count
                taper = max(1, int(cfg.train.taper_epochs * bench.per_epoch))
                steps = cfg.train.method.warmup_steps + taper + ft
            bench.run_baseline(net, "per-budget", method, seed, budget, steps, steps - ft)
            tick()


def curve(bench: Bench, net: Net, seed: int, tick: Callable[[], None]) -> None:
    cfg = bench.cfg
    rows = bench.run_taperprune(net, "per-budget", "taperprune", seed, cfg.budgets)
    total = optimizer_steps(run_dir(bench.out, rows[0]["run_id"]), rows)
    each = total // len(cfg.budgets)
    ft = bench.finetune_steps
    for method in cfg.curve_methods:
        for budget in cfg.budgets:
            bench.run_baseline(net, "curve", method, seed, budget, each, max(0, each - ft))
            tick()


def steps_sweep(bench: Bench, net: Net, seed: int, tick: Callable[[], None]) -> None:
    cfg = bench.cfg
    for n in cfg.sweep_steps:
        half = n // 2
        taper = max(1, half - cfg.train.method.warmup_steps)
        steps = n
        if "taperprune" in cfg.sweep_methods:
            rows = bench.run_taperprune(
                net,
                "steps",
                "taperprune",
                seed,
                [cfg.sweep_budget],
                step_budget=n,
                taper_epochs=round(bench.epochs(taper), 6),
                finetune_epochs=round(bench.epochs(n - half), 6),
            )
            steps = int(rows[0]["steps"])
            tick()
        for method in (m for m in cfg.sweep_methods if m != "taperprune"):
            bench.run_baseline(
                net,
                "steps",
                method,
                seed,
                cfg.sweep_budget,
                steps,
                steps - (n - half),
                step_budget=n,
            )
            tick()


def count_runs(cfg: BenchConfig) -> int:
    k = len(cfg.budgets)
    per = sum(1 if m in TAPERPRUNE else len(_budgets(cfg, m)) for m in cfg.methods)
    n = 0
    if "per-budget" in cfg.views:
        n += per
    if "curve" in cfg.views:
        n += k * len(cfg.curve_methods)
    if "steps" in cfg.views:
        n += len(cfg.sweep_steps) * len(cfg.sweep_methods)
    return n * len(cfg.nets) * len(cfg.seeds)


VIEW_RUNS = {"per-budget": per_budget, "curve": curve, "steps": steps_sweep}
