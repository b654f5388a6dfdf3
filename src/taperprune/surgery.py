"""Surgery: physically removing channels, and checking it computes the masked function.

The only caller of torch-pruning's pruning functions. Surgery is only as exact as the
channel graph, so every removal can be checked against the masked model (torchao's order:
masks first, surgery second, then check).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from .errors import GraphError
from .graph import ChannelGraph, _channels
from .masks import ChannelMasks, _MaskedForward


def prune_channels(model: nn.Module, graph: ChannelGraph, keep: torch.Tensor) -> nn.Module:
    """Physically remove, in place, the channels of every unit with keep == False."""
    if keep.shape != (graph.num_units,):
        raise ValueError(f"keep must have shape ({graph.num_units},), got {tuple(keep.shape)}")
    counts = torch.zeros(len(graph.groups), dtype=torch.long).index_add_(
        0, graph.unit_group, keep.long().cpu()
    )
    if bool((counts == 0).any()):
        empty = [graph.groups[i].root for i in torch.nonzero(counts == 0).flatten().tolist()]
        raise ValueError(f"every group must keep at least one unit; empty: {empty}")
    example = torch.zeros((1, *graph.input_shape))
    param = next(model.parameters(), None)
    if param is not None:
        example = example.to(param.device, param.dtype)
    was_training = model.training
    with torch.enable_grad():  # torch-pruning traces through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    model.train(was_training)
    modules = dict(model.named_modules())
    for root, idxs in graph.removed_root_channels(keep.cpu()).items():
        mod = modules[root]
        fn = dg.get_pruner_of_module(mod).prune_out_channels
        dg.get_pruning_group(mod, fn, idxs).prune()
    _check_widths(modules, graph, keep.cpu())
    return model


def _check_widths(modules: dict[str, nn.Module], graph: ChannelGraph, keep: torch.Tensor) -> None:
    """Post-condition of surgery: every layer has exactly the widths the plan says."""
    for name, idx in graph.kept_indices(keep).items():
        got = _channels(modules[name])
        want = (len(idx["in"]), len(idx["out"]))
        if got != want:
            raise GraphError(
                f"channel removal left layer {name!r} with (in, out) = {got}, expected {want}; "
                "this is a bug in taperprune or torch-pruning: please report it with the model."
            )


def remove_masked(
    model: nn.Module, graph: ChannelGraph, keep: torch.Tensor, *, verify: bool = True
) -> nn.Module:
    """A physically smaller copy of `model` without the units where keep is False.

    The copy is an ordinary nn.Module (no masks, no hooks); `model` is not changed. With
    `verify`, the copy is run against a masked twin on a random batch and a GraphError is
    raised unless both compute the same function (surgery is only as exact as the graph).
    """
    masked = [m for m in model.modules() if isinstance(m.__dict__.get("forward"), _MaskedForward)]
    saved = {m: m.__dict__.pop("forward") for m in masked}
    try:
        small = copy.deepcopy(model)
        twin = copy.deepcopy(model) if verify else None
    finally:
        for m, fwd in saved.items():
            m.forward = fwd
    for p in small.parameters():
        p.grad = None
    keep = keep.detach().cpu().bool()
    small = prune_channels(small, graph, keep)
    if twin is not None:
        _check_same_function(twin, small, graph, keep)
    return small


def _check_same_function(
    twin: nn.Module, small: nn.Module, graph: ChannelGraph, keep: torch.Tensor
) -> None:
    ChannelMasks(twin, graph).set_keep(keep)
    param = next(small.parameters(), None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *graph.input_shape), generator=g)
    if param is not None:
        x = x.to(param.device, param.dtype)
    was = small.training
    twin.eval()
    small.eval()
    try:
        with torch.no_grad():
            ref = twin(x)
            try:
                got = small(x)
            except RuntimeError as exc:
                raise GraphError(
                    f"the pruned model cannot run ({exc}); torch-pruning's surgery does not fit "
                    "this architecture. Keep the layers involved whole with --exclude, and "
                    "please report the model"
                ) from exc
    finally:
        small.train(was)
    if isinstance(ref, torch.Tensor) and isinstance(got, torch.Tensor):
        scale = max(float(ref.abs().max()), 1.0)
        diff = float((ref.float() - got.float()).abs().max())
        if ref.shape != got.shape or not diff <= 1e-4 * scale:
            raise GraphError(
                f"removing the masked channels changes what the model computes (max |Δ| "
                f"{diff:.2e} at output scale {scale:.3g}); torch-pruning's surgery is not exact "
                "for this architecture. Keep the layers involved whole with --exclude, and "
                "please report the model"
            )


def check_surgery(model: nn.Module, graph: ChannelGraph) -> None:
    """Remove the first, then the last unit of every group and check the copy computes the
    masked function. On failure, the groups whose surgery is not exact are named."""

    def trial(groups: Sequence[int], pick: int) -> GraphError | None:
        keep = torch.ones(graph.num_units, dtype=torch.bool)
        for gi in groups:
            units = graph.units_of_group(gi)
            if len(units) > 1:
                keep[units[pick]] = False
        try:
            remove_masked(model, graph, keep)
        except GraphError as exc:
            return exc
        return None

    every = range(len(graph.groups))
    first = trial(every, 0) or trial(every, -1)
    if first is None:
        return
    bad = [graph.groups[g].root for g in every if trial([g], 0) or trial([g], -1)]
    names = ", ".join(repr(b) for b in bad) or "several groups together"
    raise GraphError(
        f"{first}. Groups with inexact surgery (by their root layer): {names}; keep them whole "
        f"with --exclude {','.join(bad) if bad else 'NAME'}"
    )
