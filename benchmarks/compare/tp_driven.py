"""Torch-Pruning driven to a MAC target as its authors recommend (docs/BASELINES.md):
its pruner per method, `max_pruning_ratio` enforced on every step (`capped_step`), one shot
at a bisected ratio or its progressive schedule, `isomorphic` on residual nets, Taylor
gradients over several batches, sparse training before pruning (`drive`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from taperprune.cost import count_macs
from taperprune.errors import TaperpruneError

from .baselines import (
    BASELINES,
    KNAPSACK,
    KNAPSACK_BATCHES,
    TAYLOR_BATCHES,
    UNIFORM,
    BaselineMethod,
    _is_layer,
    _out_channels,
    bisect_ratio,
    knapsack_oneshot,
    output_layer,
    uniform_width,
)


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

    return bisect_ratio(
        trial,
        target,
        hi=1.0,
        tol=min(1e-3, 0.25 / max(1, channels)),  # finer than one channel of the scope
        trials=40,
        what="Torch-Pruning with every layer at its max pruning ratio",
    )


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


Train = Callable[..., None]  # (model, steps, *, after_backward=None, weight_decay=None)


def drive(
    model: nn.Module,
    example: torch.Tensor,
    batches: Callable[[int], Iterable[Any]],
    spec: BaselineMethod,
    target: int,
    pre_steps: int,
    max_ratio: float,
    device: torch.device,
    train: Train,
) -> nn.Module:
    """A Torch-Pruning baseline up to its final structure. The optimizer steps it takes
    through `train` (sparse training, training between progressive steps) are `pre_steps`
    for sparse training and progressive schedules, none otherwise; `batches(n)` gives the
    next n batches of the run's stream."""
    floors = width_floors(model, max_ratio)
    isomorphic = spec.global_pruning and has_residual(model, example)
    grads = None
    if spec.importance == "taylor":

        def grads(m: nn.Module) -> None:
            accumulate_gradients(m, batches(TAYLOR_BATCHES), device)

    if spec.sparsity > 0:
        # Torch-Pruning's sparse training: its regulariser's gradient is added after
        # backward, and the optimizer has no weight decay meanwhile (reproduce/main.py).
        reg = tp_pruner(model, example, spec, ratio=0.5, max_ratio=max_ratio, isomorphic=isomorphic)
        reg.update_regularizer()
        train(model, pre_steps, after_backward=lambda m: reg.regularize(m), weight_decay=0.0)
        del reg
    if spec.iterative_steps > 1:
        small, _ = prune_progressive(
            model,
            example,
            target,
            spec,
            floors=floors,
            max_ratio=max_ratio,
            isomorphic=isomorphic,
            train=lambda m, n: train(m, n),
            train_steps=pre_steps,
            gradients=grads,
        )
        return small
    if grads is not None:
        grads(model)
    small, _, _ = prune_oneshot(
        model, example, target, spec, floors=floors, max_ratio=max_ratio, isomorphic=isomorphic
    )
    return small


def build_structure(
    method: str,
    model: nn.Module,
    example: torch.Tensor,
    target: int,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    pre_steps: int,
    max_ratio: float,
    device: torch.device,
    train: Callable[..., None],
) -> nn.Module:
    """Baseline `method`'s structure at ≤ `target` MACs; `pre_steps` of `train` on the way
    (sparse training, training between progressive steps) where the method has them."""
    if method == UNIFORM:
        return uniform_width(model, example, target)[0]
    if method == KNAPSACK:
        return knapsack_oneshot(model, example, target, batches(KNAPSACK_BATCHES), device)[0]
    return drive(
        model, example, batches, BASELINES[method], target, pre_steps, max_ratio, device, train
    )
