"""What users would pick instead: Torch-Pruning's methods (driven by `tp_driven`), a
MAC-aware one-shot knapsack and uniform width, each driven to a MAC target (at or below
it), for the comparison harness.

Every setting and where it comes from is in docs/BASELINES.md. In short:

- Torch-Pruning takes channel ratios, not MACs. *One shot* (the default): one pruning step
  at the global ratio found by bisection, the largest MACs ≤ the target (as `uniform_width`
  bisects its per-layer ratio). *Progressive* (`iterative_steps` > 1, the `*_iter` rows):
  Torch-Pruning's own linear ratio schedule, the harness training between steps; the last
  step is bisected on the weights it has then, so it lands ≤ the target too.
- `max_pruning_ratio` (per net, `config.MAX_PRUNING_RATIO`): no layer keeps fewer than
  ⌈(1 − r)·its original width⌉ channels. Torch-Pruning 1.6.1 checks the ratio only *before*
  a step (`BasePruner._check_pruning_ratio`), so a one-shot step can thin a layer past it
  (or, where every channel of a group falls under the global threshold, skip the group
  whole: `DependencyGraph.check_pruning_group`); `capped_step` enforces it on every group
  of every step, dropping the group's lowest-importance channels first.
- `isomorphic=True` (Torch-Pruning's remedy for global ranking over-pruning one layer) for
  nets with a residual add: `has_residual` reads it from Torch-Pruning's own graph.
- Taylor importance reads weight gradients accumulated over `TAYLOR_BATCHES` batches
  before every pruning step.
- The knapsack removes channels in order of Taylor score ÷ MAC price, greedily down to the
  target in one shot (taperprune's own solve, without its taper).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from taperprune.constraint import group_interactions, solve_budget
from taperprune.cost import build_cost_model, count_macs, macs_and_marginals
from taperprune.errors import BudgetError, TaperpruneError
from taperprune.graph import build_graph
from taperprune.masks import ChannelMasks
from taperprune.surgery import remove_masked


@dataclass(frozen=True)
class BaselineMethod:
    """One Torch-Pruning configuration (docs/BASELINES.md gives each one's source)."""

    importance: str  # "l1" | "taylor" | "bn_scale" | "group_norm" | "random"
    global_pruning: bool
    sparsity: float = 0.0  # reg of the sparse training before pruning (slimming, DepGraph)
    iterative_steps: int = 1  # 1: one shot at a bisected ratio; k > 1: progressive, k steps

    def __post_init__(self) -> None:
        if self.iterative_steps < 1:
            raise TaperpruneError(f"iterative_steps must be ≥ 1, got {self.iterative_steps}")
        if self.sparsity > 0 and self.iterative_steps > 1:
            # The steps before pruning go either to sparse training or to the schedule.
            raise TaperpruneError("sparse training and a progressive schedule do not combine")


# Torch-Pruning's progressive schedule: 5 steps, as in its QuickStart notebook's iterative
# example (`iterative_steps = 5`, fine-tuning after each), the harness training between them.
PROGRESSIVE_STEPS = 5

BASELINES: dict[str, BaselineMethod] = {
    "tp_l1_global": BaselineMethod("l1", global_pruning=True),
    "tp_l1_global_iter": BaselineMethod("l1", True, iterative_steps=PROGRESSIVE_STEPS),
    # Per-layer L1 at one ratio for every layer is uniform_width's own rule: the same widths
    # (a test checks it) until the ratio reaches max_pruning_ratio, where it stops. Not run
    # by default; kept so that older tables can be re-run.
    "tp_l1_layer": BaselineMethod("l1", global_pruning=False),
    "tp_taylor": BaselineMethod("taylor", global_pruning=True),
    "tp_taylor_iter": BaselineMethod("taylor", True, iterative_steps=PROGRESSIVE_STEPS),
    # Liu et al. 2017 use λ = 1e-4 (Torch-Pruning's ResNet-56 recipe: 1e-5 over 100 epochs).
    "tp_bn_slim": BaselineMethod("bn_scale", global_pruning=True, sparsity=1e-4),
    # DepGraph (Fang et al. 2023), "group_sl": Torch-Pruning's reproduce/ ResNet-56 CIFAR-10
    # recipe, GroupNormPruner with reg 5e-4 and group-L2 importance normalised by its max.
    "tp_group_sl": BaselineMethod("group_norm", global_pruning=True, sparsity=5e-4),
    "tp_random": BaselineMethod("random", global_pruning=False),
}
OFF_BY_DEFAULT = ("tp_l1_layer",)  # runs only when named in --methods
UNIFORM = "uniform_width"
KNAPSACK = "knapsack_oneshot"
TAYLOR_BATCHES = 8  # batches whose gradients one Taylor importance reads
KNAPSACK_BATCHES = 8  # batches whose mask gradients the knapsack's scores average
KNAPSACK_PRICE = "static"  # taperprune's default: s ÷ the unit's marginal MACs at full width


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))


def output_layer(model: nn.Module) -> nn.Module:
    """The last Linear/Conv in module order: its outputs are the classes and must stay."""
    last = None
    for m in model.modules():
        if _is_layer(m):
            last = m
    if last is None:
        raise TaperpruneError("the model has no Linear or Conv layer to prune")
    return last


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return m.out_channels
    return 0


def knapsack_oneshot(
    model: nn.Module,
    example: torch.Tensor,
    target: int,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    price: str = KNAPSACK_PRICE,
) -> tuple[nn.Module, int]:
    """Channels removed in order of score ÷ MAC price, greedily down to ≤ `target`, once.

    Scores: taperprune's Taylor score, the squared gradient of each channel group's mask,
    averaged over `batches` of the given weights (no training). Price (`price`): "static",
    the unit's marginal MACs at full width (taperprune's default), or "macs", the marginal
    MACs under the current masks, recomputed as units go. The solve is taperprune's
    (`solve_budget`); no taper, no fine-tuning in between. Returns a pruned copy and its MACs.
    """
    if price not in ("static", "macs"):
        raise TaperpruneError(f"knapsack price must be static or macs, got {price!r}")
    graph = build_graph(model, example)
    cm = build_cost_model(graph)
    masks = ChannelMasks(model, graph)
    loss_f = nn.CrossEntropyLoss()
    scores = torch.zeros(graph.num_units, dtype=torch.float64)
    n = 0
    try:
        for x, y in batches:
            masks.zero_grad()
            loss_f(model(x.to(device)), y.to(device)).backward()
            grad = masks.grad
            if grad is None:
                raise TaperpruneError("the knapsack's masks got no gradient")
            scores += grad.detach().to("cpu", torch.float64) ** 2
            n += 1
    finally:
        masks.remove()
        model.zero_grad(set_to_none=True)
    if n == 0:
        raise TaperpruneError("the knapsack needs at least one batch to score channels")
    scores /= n
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    total, d = macs_and_marginals(cm, keep)
    sol = solve_budget(
        cm,
        scores,
        keep,
        float(target),
        graph.unit_group,
        group_interactions(cm, graph.unit_group, len(graph.groups)),
        fixed_price=d.clone() if price == "static" else None,
        marginals=(total, d),
    )
    if not sol.feasible or sol.macs > target:
        raise BudgetError(
            f"the knapsack with one channel left in every group still has {sol.macs:,.0f} "
            f"MACs > target {target:,}"
        )
    small = remove_masked(model, graph, sol.keep)
    return small, count_macs(small, example)


def bisect_ratio(
    trial: Callable[[float], tuple[nn.Module, int]],
    target: int,
    *,
    hi: float,
    tol: float,
    trials: int,
    what: str,
) -> tuple[nn.Module, int, float]:
    """The pruning ratio in (0, `hi`] whose pruned copy (`trial(ratio)` → model, MACs) has
    the largest MACs ≤ `target`, by bisection to `tol` in at most `trials` halvings:
    (model, MACs, ratio). `what` names the state at `hi` when even that is over target."""
    best, best_macs = trial(hi)
    if best_macs > target:
        raise BudgetError(
            f"{what} still has {best_macs:,} MACs > target {target:,}; the target is below "
            "what it can reach"
        )
    lo = 0.0  # pruning ratio: lo does not fit, hi does
    for _ in range(trials):
        if hi - lo < tol:
            break
        mid = (lo + hi) / 2
        m, macs = trial(mid)
        if macs <= target:
            hi, best, best_macs = mid, m, macs
        else:
            lo = mid
    return best, best_macs, hi


def uniform_width(model: nn.Module, example: torch.Tensor, target: int) -> tuple[nn.Module, int]:
    """`model` with every prunable group scaled by one ratio (bisection), L1 choosing channels.

    Returns the pruned copy with the largest MACs ≤ `target` and those MACs.
    """
    full = count_macs(model, example)
    if target >= full:
        return copy.deepcopy(model), full

    def trial(ratio: float) -> tuple[nn.Module, int]:
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            m,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            global_pruning=False,
            pruning_ratio=ratio,
            ignored_layers=[output_layer(m)],
        )
        pruner.step()
        return m, count_macs(m, example)

    # Torch-Pruning skips a layer whose ratio would leave no channel: the largest ratio
    # keeps one channel of the narrowest layer.
    ignored = output_layer(model)
    narrowest = min(
        _out_channels(m) for m in model.modules() if _out_channels(m) and m is not ignored
    )
    best, best_macs, _ = bisect_ratio(
        trial,
        target,
        hi=1.0 - 1.0 / narrowest,
        tol=1e-4,
        trials=30,  # channel counts are integers: 30 halvings settle any width
        what="uniform width with one channel left in the narrowest layer",
    )
    return best, best_macs
