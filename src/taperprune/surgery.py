"""Surgery: physically removing channels, and checking it computes the masked function.

The only caller of torch-pruning's pruning functions. Surgery is only as exact as the
channel graph, so every removal can be checked against the masked model (torchao's order:
masks first, surgery second, then check).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def _own_forwards(model: nn.Module, also: tuple[nn.Module, ...] = ()) -> Iterator[None]:
    """Temporarily give back their own forward to every masked module of `model` (a pruner's
    masks) and to the modules in `also`; whatever was there is put back afterwards."""
    extra = {id(m) for m in also}
    saved = {
        m: m.__dict__.pop("forward")
        for m in model.modules()
        if isinstance(m.__dict__.get("forward"), _MaskedForward)
        or (id(m) in extra and "forward" in m.__dict__)
    }
    try:
        yield
    finally:
        for m in also:
            m.__dict__.pop("forward", None)  # temporary masks installed meanwhile
        for m, fwd in saved.items():
            m.forward = fwd


def _masked_output(
    model: nn.Module, graph: ChannelGraph, keep: torch.Tensor, x: torch.Tensor
) -> object:
    """What `model` computes on `x` in eval mode with the units where keep is False masked.

    Computed on `model` itself (no twin copy), with masks installed for the call and removed
    afterwards: its parameters, gradients, buffers, training flags and forwards are as they
    were (eval-mode BN does not touch its running statistics). Masks a pruner installed are
    set aside meanwhile. Its forward hooks do see the call, as they saw a twin's before.
    """
    modules = dict(model.named_modules())
    sites = tuple(modules[name] for name, _ in graph.mask_sites)
    training = [(m, m.training) for m in model.modules()]
    with _own_forwards(model, also=sites):
        try:
            ChannelMasks(model, graph).set_keep(keep)
            model.eval()
            with torch.no_grad():
                return model(x)
        finally:
            for m, flag in training:
                m.training = flag


def remove_masked(
    model: nn.Module, graph: ChannelGraph, keep: torch.Tensor, *, verify: bool = True
) -> nn.Module:
    """A physically smaller copy of `model` without the units where keep is False.

    The copy is an ordinary nn.Module (no masks, no hooks); `model` is not changed. With
    `verify`, the copy is run against `model` masked (for that call only, in eval mode) on a
    random batch and a GraphError is raised unless both compute the same function (surgery
    is only as exact as the graph).
    """
    with _own_forwards(model):
        small = copy.deepcopy(model)
    for p in small.parameters():
        p.grad = None
    keep = keep.detach().cpu().bool()
    small = prune_channels(small, graph, keep)
    if verify:
        _check_same_function(model, small, graph, keep)
    return small


def _check_same_function(
    model: nn.Module, small: nn.Module, graph: ChannelGraph, keep: torch.Tensor
) -> None:
    """GraphError unless `small` computes what `model` masked by `keep` does."""
    param = next(small.parameters(), None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, *graph.input_shape), generator=g)  # eval mode: samples independent
    if param is not None:
        x = x.to(param.device, param.dtype)
    ref = _masked_output(model, graph, keep, x)
    was = small.training
    small.eval()
    try:
        with torch.no_grad():
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


def _trial_keep(graph: ChannelGraph, groups: Sequence[int], picks: tuple[int, ...]) -> torch.Tensor:
    """Keep all units but those at positions `picks` (e.g. (0, -1): first and last) of each
    group in `groups`, as far as the group keeps a unit: a group of two units loses only
    the one at picks[0], a group of one unit nothing."""
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    for gi in groups:
        units = graph.units_of_group(gi).tolist()
        gone = {units[p] for p in picks}
        if len(gone) < len(units):
            keep[list(gone)] = False
        elif len(units) > 1:
            keep[units[picks[0]]] = False
    return keep


def check_surgery(model: nn.Module, graph: ChannelGraph) -> None:
    """Remove the first and the last unit of every group (one unit of a group of two) and
    check the copy computes the masked function. On failure, the groups whose surgery is not
    exact are named (by removing the first, then the last unit of each group alone)."""

    def trial(groups: Sequence[int], picks: tuple[int, ...]) -> GraphError | None:
        try:
            remove_masked(model, graph, _trial_keep(graph, groups, picks))
        except GraphError as exc:
            return exc
        return None

    every = range(len(graph.groups))
    first = trial(every, (0, -1))
    if first is None:
        return
    bad = [graph.groups[g].root for g in every if trial([g], (0,)) or trial([g], (-1,))]
    names = ", ".join(repr(b) for b in bad) or "several groups together"
    raise GraphError(
        f"{first}. Groups with inexact surgery (by their root layer): {names}; keep them whole "
        f"with --exclude {','.join(bad) if bad else 'NAME'}"
    )
