"""What the channel graph is built from: one recorded forward pass (output shapes, the
layers producing the output) and torch-pruning's dependency trace; the layer types it
knows and the per-layer MAC arithmetic."""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .errors import GraphError

COUNTED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Layers that mix or normalise across channels: a removed channel would change
# what the kept channels compute, so pruning through them cannot be exact.
CROSS_CHANNEL_TYPES = (
    nn.LocalResponseNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.SyncBatchNorm,
)


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def record_forward(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[dict[str, list[torch.Size]], set[str]]:
    """One forward pass: output shapes of counted layers and the layers producing the output."""
    names = module_names(model)
    shapes: dict[str, list[torch.Size]] = {}
    grad_fns: dict[object, str] = {}

    def hook(mod: nn.Module, _inp: object, out: object) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(mod, COUNTED_TYPES):
            shapes.setdefault(names[mod], []).append(out.shape)
        if out.grad_fn is not None and isinstance(mod, COUNTED_TYPES + NORM_TYPES):
            grad_fns.setdefault(out.grad_fn, names[mod])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(example_input)
    except Exception as exc:  # the user's model rejected the input: say so plainly
        raise GraphError(
            f"the example input of shape {tuple(example_input.shape)} does not fit the model: "
            f"{type(exc).__name__}: {exc}. Pass an input shaped like one training batch "
            "(e.g. --input 3x224x224 for ImageNet models)."
        ) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    outs = [out] if isinstance(out, torch.Tensor) else list(tp.utils.flatten_as_list(out))
    producers = {grad_fns[o.grad_fn] for o in outs if o.grad_fn in grad_fns}
    return shapes, producers


def trace_dependencies(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[tp.DependencyGraph, set[Any]]:
    """Torch-Pruning's dependency graph of `model`, and the nodes of its cross-channel layers.

    Cross-channel layers are traced as anonymous element-wise ops: the autograd nodes of
    their outputs are caught in torch-pruning's own forward pass to find them again.
    """
    was_training = model.training
    dg = tp.DependencyGraph()
    cross_fns: set[object] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: cross_fns.add(getattr(out, "grad_fn", None)))
        for m in model.modules()
        if isinstance(m, CROSS_CHANNEL_TYPES)
    ]
    try:
        with torch.enable_grad():  # torch-pruning traces through autograd
            dg.build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as exc:
        raise GraphError(
            f"torch-pruning could not trace the model's channel dependencies: "
            f"{type(exc).__name__}: {exc}{_where(exc, module_names(model))}. This architecture "
            "is not supported (known: ShuffleNet's channel-shuffle view), and --exclude cannot "
            "help: torch-pruning traces the whole model before any layer is excluded and "
            "removes channels with the same trace (`taperprune macs` still counts the MACs); "
            "see docs/MODELS.md."
        ) from exc
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    cross_nodes = {n for n in dg.module2node.values() if n.grad_fn in cross_fns}
    return dg, cross_nodes


def _where(exc: BaseException, names: dict[nn.Module, str]) -> str:
    """', at <the op torch-pruning failed on> after layer <name>', from the traceback."""
    node, tb = None, exc.__traceback__
    while tb is not None:  # the innermost frame holding a graph node is where it failed
        node = next(
            (v for v in tb.tb_frame.f_locals.values() if isinstance(v, tp.dependency.Node)), node
        )
        tb = tb.tb_next
    if node is None:
        return ""
    seen, queue, ops = {node}, [node], set()
    while queue:  # breadth first towards the input: the nearest named layer
        n = queue.pop(0)
        ops.add(type(n.grad_fn).__name__)
        if n is not node and n.module in names:
            shuffle = any(o.startswith(("Transpose", "Permute")) for o in ops)
            what = (
                "a channel shuffle (view → transpose → view)"
                if shuffle
                else f"{type(node.grad_fn).__name__.removesuffix('Backward0')} op"
            )
            return f", at {what} after layer {names[n.module]!r}"
        fresh = [i for i in n.inputs if i not in seen]
        seen.update(fresh)
        queue.extend(fresh)
    return ""


def is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def macs_per_pair(m: nn.Module, outs: tuple[tuple[int, ...], ...], batch: int) -> int:
    """MACs per sample for one (input channel, output channel) pair, summed over calls."""
    total = 0
    for shape in outs:
        if isinstance(m, nn.Linear):
            tokens = 1
            for s in shape[:-1]:
                tokens *= s
            total += tokens // batch
        else:
            k = 1
            for s in m.kernel_size:  # type: ignore[union-attr]
                k *= int(s)
            spatial = 1
            for s in shape[2:]:
                spatial *= s
            total += k * spatial
    return total
