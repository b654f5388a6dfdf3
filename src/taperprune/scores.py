"""The pruning parameters: per-unit Taylor scores, kept apart from the weights.

Each unit's score is an exponential moving average, at its own rate β, of the squared
first-order loss change of removing it, (∂L/∂m)², read from the mask gradient that the
training backward pass already computes. A layer's weight scale or the network's
learning rate does not enter: BN normalises the first, the second never touches m.
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import FIXED, ChannelGraph


def update_scores(ema: torch.Tensor, mask_grad: torch.Tensor, beta: float) -> torch.Tensor:
    """One EMA step of the squared mask gradients: β·ema + (1 − β)·g² (float64)."""
    g = mask_grad.detach().to(device="cpu", dtype=torch.float64)
    return ema * beta + (1.0 - beta) * g * g


def corrected_scores(ema: torch.Tensor, beta: float, steps: int) -> torch.Tensor:
    """The EMA without its start-up bias toward zero (as in Adam)."""
    if steps <= 0:
        return ema.clone()
    return ema / (1.0 - beta**steps)


def bn_gamma_scores(
    weights: list[tuple[torch.Tensor, torch.Tensor]], num_units: int
) -> torch.Tensor:
    """Ablation: per unit, the summed |γ| of the BN channels behind it (network slimming).

    `weights` holds (γ, unit index per channel) for each BN of a prunable group.
    """
    s = torch.zeros(num_units + 1, dtype=torch.float64)
    for gamma, units in weights:
        s.index_add_(0, units, gamma.detach().abs().double().cpu())
    return s[:-1]


def bn_gamma_of(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    """The BN-|γ| ablation's scores of `model`'s units (`bn_gamma_scores` of its norms)."""
    modules = dict(model.named_modules())
    n = graph.num_units
    pairs = []
    for name, kind in graph.mask_sites:
        mod = modules[name]
        if kind == "norm" and getattr(mod, "weight", None) is not None:
            units = graph.layers[name].out_units
            pairs.append((mod.weight, torch.where(units == FIXED, n, units)))
    return bn_gamma_scores(pairs, n)
