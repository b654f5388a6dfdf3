"""What users would pick instead: Torch-Pruning's methods and uniform width, each driven to a
MAC target (at or below it), for the comparison harness (`bench.py`).

Torch-Pruning takes channel ratios, not MACs, so `prune_to_macs` raises its ratio in small
steps (its own iterative schedule) and stops at the first step whose MACs are ≤ the target;
how far below the target that lands is part of what the harness records. Uniform width
scales every group by one factor, found by bisection on the MACs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from taperprune.cost import count_macs
from taperprune.errors import BudgetError, TaperpruneError


@dataclass(frozen=True)
class BaselineMethod:
    """One Torch-Pruning configuration."""

    importance: str  # "l1" | "taylor" | "bn_scale" | "random"
    global_pruning: bool
    sparsity: float = 0.0  # network slimming: L1 on BN γ during the pre-pruning steps


BASELINES: dict[str, BaselineMethod] = {
    "tp_l1_global": BaselineMethod("l1", global_pruning=True),
    "tp_l1_layer": BaselineMethod("l1", global_pruning=False),
    "tp_taylor": BaselineMethod("taylor", global_pruning=True),
    # Liu et al. 2017 use λ = 1e-4 (Torch-Pruning's default 1e-5 is for long ImageNet runs).
    "tp_bn_slim": BaselineMethod("bn_scale", global_pruning=True, sparsity=1e-4),
    "tp_random": BaselineMethod("random", global_pruning=False),
}
UNIFORM = "uniform_width"

# Ratio increments of Torch-Pruning's schedule: 1/400 of the channels per step keeps the
# landing point close to the target (each step removes ~0.25 % of the channels).
ITERATIVE_STEPS = 400
MAX_RATIO = 0.99


def _importance(kind: str) -> Any:
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    if kind == "random":
        return tp.importance.RandomImportance()
    raise TaperpruneError(f"unknown importance {kind!r}")


def output_layer(model: nn.Module) -> nn.Module:
    """The last Linear/Conv in module order: its outputs are the classes and must stay."""
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            last = m
    if last is None:
        raise TaperpruneError("the model has no Linear or Conv layer to prune")
    return last


def tp_pruner(model: nn.Module, example: torch.Tensor, method: BaselineMethod) -> Any:
    """Torch-Pruning's pruner for `method`, scheduled in ITERATIVE_STEPS ratio increments."""
    cls = tp.pruner.BNScalePruner if method.importance == "bn_scale" else tp.pruner.MetaPruner
    kwargs: dict[str, Any] = {"reg": method.sparsity} if method.importance == "bn_scale" else {}
    return cls(
        model,
        example,
        importance=_importance(method.importance),
        global_pruning=method.global_pruning,
        pruning_ratio=MAX_RATIO,
        iterative_steps=ITERATIVE_STEPS,
        ignored_layers=[output_layer(model)],
        **kwargs,
    )


def prune_to_macs(
    model: nn.Module,
    example: torch.Tensor,
    target: int,
    pruner: Any,
    *,
    gradients: Callable[[nn.Module], None] | None = None,
) -> int:
    """Step `pruner` until `model` (pruned in place) has ≤ `target` MACs; returns its MACs.

    `gradients(model)` runs before every step for gradient-based importances (Taylor).
    """
    macs = count_macs(model, example)
    while macs > target:
        if pruner.current_step >= ITERATIVE_STEPS:
            raise BudgetError(
                f"Torch-Pruning stopped at {macs:,} MACs after removing {MAX_RATIO:.0%} of the "
                f"channels; the target {target:,} is below what it can reach"
            )
        if gradients is not None:
            gradients(model)
        pruner.step()
        macs = count_macs(model, example)
    model.zero_grad(set_to_none=True)
    return macs


def taylor_gradients(batches: Iterator[Any], device: torch.device) -> Callable[[nn.Module], None]:
    """A `gradients` callback: loss gradients of the next batch (Torch-Pruning's Taylor)."""
    loss_f = nn.CrossEntropyLoss()

    def run(model: nn.Module) -> None:
        x, y = next(batches)
        model.zero_grad(set_to_none=True)
        loss_f(model(x.to(device)), y.to(device)).backward()

    return run


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return m.out_channels
    return 0


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
