"""What a list of budgets limits — MACs, parameters or measured latency — and its model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .budget import NS, budget_resource
from .cost import CostModel, build_cost_model
from .graph import ChannelGraph
from .latency_model import LatencyModel
from .latency_table import LatencySettings, Meter, build_latency_model
from .param_cost import build_param_model

Resource = CostModel | LatencyModel


def budget_cost(
    graph: ChannelGraph,
    model: nn.Module,
    budgets: Sequence[float | int | str] | str,
    *,
    example_input: torch.Tensor | None = None,
    latency: LatencySettings | None = None,
    meter: Meter | None = None,
    cache: Path | bool | None = True,
) -> tuple[str, Resource]:
    """(unit, model of R): ('MACs', the MAC model), ('params', P(m)) for budgets like
    '1.2Mparams', or ('ns', L(m) measured with `latency` settings) for '3.5ms'."""
    kind = budget_resource(budgets)
    if kind == "params":
        return "params", build_param_model(graph, model)
    if kind == "latency":
        settings = latency if latency is not None else LatencySettings()
        x = example_input if example_input is not None else torch.zeros((1, *graph.input_shape))
        return NS, build_latency_model(model, x, graph, settings, meter=meter, cache=cache)
    return "MACs", build_cost_model(graph)


__all__ = ["Resource", "budget_cost"]
