"""The parameter model: P(m), the parameters of the masked network, exact for 0/1 masks.

The same bilinear form as the MAC model (`cost.CostModel`), so the λ solve, the blocks
of `round_to` and the marginal costs work unchanged: a conv or linear weight is
k·k·(C_in/groups)·C_out parameters (a block per conv group with k·k per pair), a bias
or a BatchNorm affine is linear in its output channels (a term whose input is the
constant unit), and every other parameter of the model is a constant term.
"""

from __future__ import annotations

import torch
from torch import nn

from .cost import CostModel, Term, assemble
from .graph import FIXED, ChannelGraph

_ONE = torch.tensor([FIXED])  # the constant "always kept" unit: a linear term's input


def build_param_model(graph: ChannelGraph, model: nn.Module) -> CostModel:
    """P(m) of `model` with the units of `graph` (built from this model)."""
    modules = dict(model.named_modules())
    terms: list[Term] = []
    counted = 0
    for name, lay in graph.layers.items():
        mod = modules[name]
        own = [p for p in mod.parameters(recurse=False)]
        counted += sum(p.numel() for p in own)
        if lay.kind == "norm":
            affine = sum(p is not None for p in (mod.weight, mod.bias))
            if affine:
                terms.append(Term(f"{name}.affine", _ONE, lay.out_units, 1, affine))
            continue
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        pairs = len(lay.in_units) // lay.conv_groups * len(lay.out_units)
        terms.append(
            Term(name, lay.in_units, lay.out_units, lay.conv_groups, weight.numel() // pairs)
        )
        if getattr(mod, "bias", None) is not None:
            terms.append(Term(f"{name}.bias", _ONE, lay.out_units, 1, 1))
    rest = sum(p.numel() for p in model.parameters()) - counted
    if rest:
        terms.append(Term("(other parameters)", _ONE, _ONE, 1, rest))
    return assemble(graph.num_units, terms)


__all__ = ["build_param_model"]
