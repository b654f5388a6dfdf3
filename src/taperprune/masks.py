"""Per-unit binary masks, applied where they cost O(channels), and removal of masked channels.

A mask multiplies every producer of a group: inside a BatchNorm's affine (γ·m, β·m)
where one follows (on its output where a subclass adds to the forward, as timm's
BatchNormAct2d does), else on the conv/linear weight and bias. Since ReLU, pooling and
additions keep zeros at zero, a unit with m = 0 is exactly zero everywhere downstream,
so the masked network and the physically pruned one compute the same function.
The mask tensor is a leaf with requires_grad: after `loss.backward()` its `.grad`
holds ∂L/∂m, the first-order loss change of removing each unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .graph import FIXED, ChannelGraph

_BN_FORWARD = nn.modules.batchnorm._BatchNorm.forward


class _MaskedForward:
    """Replaces one module's forward: the same layer with a per-channel mask folded in."""

    def __init__(self, module: nn.Module, values: torch.Tensor, index: torch.Tensor, kind: str):
        self.module = module
        self.values = values
        self.index = index
        self.kind = kind

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.values[self.index].to(x.dtype)
        mod = self.module
        if self.kind == "norm":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            if type(mod).forward is not _BN_FORWARD:
                # A subclass with its own forward (timm's BatchNormAct2d adds an activation
                # and dropout): its output is masked, so nothing it adds is lost.
                return type(mod).forward(mod, x) * m.view(shape)
            if mod.weight is None:  # no affine to fold into: mask the output instead
                return _batch_norm(mod, x, None, None) * m.view(shape)
            return _batch_norm(mod, x, mod.weight * m, mod.bias * m)  # type: ignore[operator]
        w = mod.weight * m.view(-1, *([1] * (mod.weight.dim() - 1)))  # type: ignore[operator]
        b = None if mod.bias is None else mod.bias * m  # type: ignore[operator]
        if isinstance(mod, nn.Linear):
            return F.linear(x, w, b)
        return mod._conv_forward(x, w, b)  # type: ignore[operator]


def _batch_norm(
    bn: nn.Module, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """torch's _BatchNorm.forward with the given affine parameters."""
    bn._check_input_dim(x)  # type: ignore[operator]
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)  # type: ignore[operator]
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if track else None,  # type: ignore[arg-type]
        bn.running_var if track else None,  # type: ignore[arg-type]
        weight,
        bias,
        use_batch,
        float(factor),  # type: ignore[arg-type]
        float(bn.eps),  # type: ignore[arg-type]
    )


class ChannelMasks:
    """The masks of one model: a (N,) 0/1 tensor whose gradient is ∂L/∂m after backward."""

    def __init__(self, model: nn.Module, graph: ChannelGraph) -> None:
        self.model = model
        self.graph = graph
        param = next(model.parameters())
        # One extra, constant entry stands for channels that are never removed.
        self._values = torch.ones(graph.num_units + 1, device=param.device, requires_grad=True)
        self._installed: list[nn.Module] = []
        self.install()

    @property
    def values(self) -> torch.Tensor:
        """The (N,) mask values (a view; read-only use)."""
        return self._values[:-1]

    @property
    def keep(self) -> torch.Tensor:
        """(N,) bool on the CPU: units still in the network."""
        return self._values.detach()[:-1].cpu() > 0.5

    @property
    def grad(self) -> torch.Tensor | None:
        """(N,) ∂L/∂m accumulated since the last `zero_grad`, or None."""
        g = self._values.grad
        return None if g is None else g[:-1]

    def scale_grad(self, factor: float) -> None:
        """Multiply the accumulated mask gradient (e.g. to undo AMP's loss scale)."""
        if self._values.grad is not None:
            self._values.grad.mul_(factor)

    def zero_grad(self) -> None:
        self._values.grad = None

    def set_keep(self, keep: torch.Tensor) -> None:
        """Set the mask values to `keep` (bool or 0/1, shape (N,))."""
        if keep.shape != (self.graph.num_units,):
            raise ValueError(
                f"keep must have shape ({self.graph.num_units},), got {tuple(keep.shape)}"
            )
        with torch.no_grad():
            self._values[:-1].copy_(keep.to(self._values.device, torch.float32))

    def install(self) -> None:
        """Fold the masks into the forward of every mask site (idempotent)."""
        if self._installed:
            return
        modules = dict(self.model.named_modules())
        n = self.graph.num_units
        for name, kind in self.graph.mask_sites:
            mod = modules[name]
            units = self.graph.layers[name].out_units
            index = torch.where(units == FIXED, torch.full_like(units, n), units)
            fwd = _MaskedForward(mod, self._values, index.to(self._values.device), kind)
            mod.forward = fwd
            self._installed.append(mod)

    def remove(self) -> None:
        """Restore every module's own forward."""
        for mod in self._installed:
            del mod.forward
        self._installed = []

    @contextmanager
    def detached(self) -> Iterator[None]:
        """Temporarily restore the model's own forward (e.g. to copy it)."""
        was = bool(self._installed)
        self.remove()
        try:
            yield
        finally:
            if was:
                self.install()


__all__ = ["ChannelMasks"]
