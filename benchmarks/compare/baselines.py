"""What users would pick instead: Torch-Pruning's methods, a MAC-aware one-shot knapsack and
uniform width, each driven to a MAC target (at or below it), for the comparison harness.

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
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

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


def _importance(kind: str) -> Any:
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    if kind == "group_norm":  # reproduce/main.py, group_sl: "normalized by the maximum score"
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer="max")
    if kind == "random":
        return tp.importance.RandomImportance()
    raise TaperpruneError(f"unknown importance {kind!r}")


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


def has_residual(model: nn.Module, example: torch.Tensor) -> bool:
    """True when some channel group of Torch-Pruning's graph is the output of two or more
    (non-depthwise) layers: a residual add ties their channels."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for group in dg.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]):
        producers = {
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and _is_layer(dep.target.module)
            and getattr(dep.target.module, "groups", 1) == 1
        }
        if len(producers) > 1:
            return True
    return False


def width_floors(model: nn.Module, max_ratio: float) -> dict[str, int]:
    """Layer name → the fewest output channels `max_ratio` leaves it: ⌈(1 − r)·width⌉, ≥ 1."""
    if not 0 < max_ratio < 1:
        raise TaperpruneError(f"max_pruning_ratio must be in (0, 1), got {max_ratio}")
    last = output_layer(model)
    return {
        name: max(1, math.ceil(_out_channels(m) * (1 - max_ratio) - 1e-9))
        for name, m in model.named_modules()
        if _is_layer(m) and m is not last
    }


def tp_pruner(
    model: nn.Module,
    example: torch.Tensor,
    method: BaselineMethod,
    *,
    ratio: float,
    max_ratio: float,
    isomorphic: bool,
    iterative_steps: int = 1,
) -> Any:
    """Torch-Pruning's pruner for `method`: `ratio` of the channels after `iterative_steps`."""
    kwargs: dict[str, Any] = {}
    cls: Any = tp.pruner.BasePruner
    if method.importance == "bn_scale":
        cls, kwargs = tp.pruner.BNScalePruner, {"reg": method.sparsity}
    elif method.importance == "group_norm":
        cls, kwargs = tp.pruner.GroupNormPruner, {"reg": method.sparsity}
    return cls(
        model,
        example,
        importance=_importance(method.importance),
        global_pruning=method.global_pruning,
        pruning_ratio=ratio,
        max_pruning_ratio=max_ratio,
        iterative_steps=iterative_steps,
        isomorphic=isomorphic and method.global_pruning,
        ignored_layers=[output_layer(model)],
        **kwargs,
    )


def capped_step(pruner: Any, model: nn.Module, floors: dict[str, int]) -> None:
    """One `pruner.step()`, except that no layer goes below its floor (`width_floors`).

    Torch-Pruning picks every group's channels as usual (interactive step); where a group
    would leave a layer under its floor, only the group's lowest-importance channels of the
    pick are removed, as many as the floor allows.
    """
    names = {m: n for n, m in model.named_modules()}
    importance: dict[int, torch.Tensor] = {}
    estimate = pruner.estimate_importance

    def remember(group: Any) -> Any:
        imp = estimate(group)
        if imp is not None:
            importance[id(group[0].dep.target.module)] = imp.detach().cpu()
        return imp

    pruner.estimate_importance = remember
    # A group wholly under the threshold is trimmed to its floor below, not skipped whole.
    pruner.DG.check_pruning_group = lambda group: True
    try:
        for group in pruner.step(interactive=True):
            _prune_within_floors(pruner, group, names, floors, importance)
    finally:  # the pruner's own methods again (a progressive schedule steps it again)
        del pruner.estimate_importance
        del pruner.DG.check_pruning_group


def _prune_within_floors(
    pruner: Any,
    group: Any,
    names: dict[nn.Module, str],
    floors: dict[str, int],
    importance: dict[int, torch.Tensor],
) -> None:
    """Prune Torch-Pruning's pick for `group`, or its lowest-importance part that the
    floors of the group's layers allow."""
    root = group[0].dep.target.module
    idxs = sorted(int(i) for i in group[0].idxs)
    allowed = min(
        (
            _out_channels(dep.target.module) - floors[names[dep.target.module]]
            for dep, _ in group
            if pruner.DG.is_out_channel_pruning_fn(dep.handler)
            and names.get(dep.target.module) in floors
        ),
        default=len(idxs),
    )
    if allowed <= 0:
        return
    if len(idxs) <= allowed:
        group.prune()
        return
    imp = importance.get(id(root))
    if imp is not None and len(imp) == _out_channels(root):
        idxs = sorted(sorted(idxs, key=lambda i: (float(imp[i]), i))[:allowed])
    else:  # channel-grouped layers: no per-channel ranking to trim by
        idxs = idxs[:allowed]
    group.prune(idxs=idxs)


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """A deep copy that keeps the weights' gradients (deepcopy drops them; Taylor reads them)."""
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.detach().clone()
    return twin


def _bisect_ratio(
    trial: Callable[[float], tuple[nn.Module, int]], target: int, channels: int, what: str
) -> tuple[nn.Module, int, float]:
    """The largest MACs ≤ `target` over ratios in [0, 1]: (model, MACs, ratio)."""
    best, best_macs = trial(1.0)
    if best_macs > target:
        raise BudgetError(
            f"{what} with every layer at its max pruning ratio still has {best_macs:,} MACs "
            f"> target {target:,}; the target is below what it can reach"
        )
    lo, hi = 0.0, 1.0  # pruning ratio: lo does not fit, hi does
    tol = min(1e-3, 0.25 / max(1, channels))  # finer than one channel of the scope
    for _ in range(40):
        if hi - lo < tol:
            break
        mid = (lo + hi) / 2
        m, macs = trial(mid)
        if macs <= target:
            hi, best, best_macs = mid, m, macs
        else:
            lo = mid
    return best, best_macs, hi


def prune_oneshot(
    model: nn.Module,
    example: torch.Tensor,
    target: int,
    method: BaselineMethod,
    *,
    floors: dict[str, int],
    max_ratio: float,
    isomorphic: bool,
) -> tuple[nn.Module, int, float]:
    """One Torch-Pruning step at the ratio (bisected) with the largest MACs ≤ `target`.

    `model` is not changed (every trial prunes a copy, gradients included); returns the
    pruned copy, its MACs and the ratio (of `model`'s current channels). A `model` already
    at or below the target comes back as it is.
    """
    macs = count_macs(model, example)
    if macs <= target:
        return model, macs, 0.0
    last = output_layer(model)
    channels = sum(_out_channels(m) for m in model.modules() if _is_layer(m) and m is not last)

    def trial(ratio: float) -> tuple[nn.Module, int]:
        m = _copy_with_grads(model)
        pruner = tp_pruner(
            m, example, method, ratio=ratio, max_ratio=max_ratio, isomorphic=isomorphic
        )
        capped_step(pruner, m, floors)
        m.zero_grad(set_to_none=True)
        return m, count_macs(m, example)

    return _bisect_ratio(trial, target, channels, "Torch-Pruning")


def _split(total: int, parts: int) -> list[int]:
    """`total` steps in `parts` near-equal intervals (the first ones take the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def prune_progressive(
    model: nn.Module,
    example: torch.Tensor,
    target: int,
    method: BaselineMethod,
    *,
    floors: dict[str, int],
    max_ratio: float,
    isomorphic: bool,
    train: Callable[[nn.Module, int], None],
    train_steps: int,
    gradients: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, int]:
    """Torch-Pruning's progressive schedule to ≤ `target`, in `method.iterative_steps` steps.

    The final ratio R is the one-shot ratio that fits the target on the starting weights;
    steps 1 … k−1 follow Torch-Pruning's linear schedule (R·i/k of the channels, its own
    pruner and step), `train(model, n)` running between steps for `train_steps` in all;
    the last step is bisected on the weights reached then, so the model lands ≤ `target`
    (and stays as it is if the earlier steps already got there). `gradients(model)` runs
    before every step (Taylor). Returns the pruned model (pruned in place up to the last
    step, a copy after it) and its MACs.
    """
    k = method.iterative_steps
    if gradients is not None:
        gradients(model)
    _, _, final_ratio = prune_oneshot(
        model, example, target, method, floors=floors, max_ratio=max_ratio, isomorphic=isomorphic
    )
    pruner = tp_pruner(
        model,
        example,
        method,
        ratio=final_ratio,
        max_ratio=max_ratio,
        isomorphic=isomorphic,
        iterative_steps=k,
    )
    for i, steps in enumerate(_split(train_steps, k - 1)):
        if gradients is not None and i > 0:
            gradients(model)
        capped_step(pruner, model, floors)
        model.zero_grad(set_to_none=True)
        train(model, steps)
    del pruner
    if gradients is not None:
        gradients(model)
    small, macs, _ = prune_oneshot(
        model, example, target, method, floors=floors, max_ratio=max_ratio, isomorphic=isomorphic
    )
    small.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    return small, macs


def accumulate_gradients(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> None:
    """Fill the weights' `.grad` with the mean loss gradient over `batches` (forward and
    backward passes only; no optimizer step). The model stays in its mode (training)."""
    loss_f = nn.CrossEntropyLoss()
    model.zero_grad(set_to_none=True)
    data = list(batches)
    for x, y in data:
        (loss_f(model(x.to(device)), y.to(device)) / len(data)).backward()


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
    lo, hi = 0.0, 1.0 - 1.0 / narrowest  # pruning ratio: lo does not fit, hi must
    best, best_macs = trial(hi)
    if best_macs > target:
        raise BudgetError(
            f"uniform width with one channel left in the narrowest layer still has "
            f"{best_macs:,} MACs > target {target:,}"
        )
    for _ in range(30):  # channel counts are integers: 30 halvings settle any width
        mid = (lo + hi) / 2
        m, macs = trial(mid)
        if macs <= target:
            hi, best, best_macs = mid, m, macs
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    return best, best_macs
