"""What a list of budgets limits — MACs, parameters or measured latency — and its model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .blocks import block_units, rounded_budgets
from .budget import NS, budget_resource
from .constraint import minimum_macs
from .cost import CostModel, build_cost_model
from .graph import ChannelGraph, build_graph
from .latency_meter import LatencySettings, Meter
from .latency_model import LatencyModel
from .latency_table import build_latency_model
from .param_cost import build_param_model
from .surgery import check_surgery
from .width_floor import ratio_floors

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


def check_budgets(
    model: nn.Module,
    example_input: torch.Tensor,
    budgets: Sequence[float | int | str] | str,
    *,
    exclude: Sequence[str] = (),
    graph: ChannelGraph | None = None,
    round_to: int = 1,
    max_pruning_ratio: float = 1.0,
    latency: LatencySettings | None = None,
    meter: Meter | None = None,
) -> list[int]:
    """Validate budgets, `round_to` and the surgery before any training: the budgets in
    MACs (in parameters for '1.2Mparams', in ns for '3.5ms': then the latency model is
    measured now, and cached for the pruner), or why not.

    `graph`: the model's channel graph when the caller has built it already.
    """
    graph = graph if graph is not None else build_graph(model, example_input, exclude=exclude)
    blocks = block_units(graph, round_to)
    unit, cost = budget_cost(
        graph, model, budgets, example_input=example_input, latency=latency, meter=meter
    )
    check_surgery(model, graph)
    floors = ratio_floors(graph.unit_group, len(graph.groups), max_pruning_ratio)
    least = minimum_macs(cost, graph.unit_group, len(graph.groups), blocks, floors)
    return rounded_budgets(budgets, cost.full_macs, least, round_to, unit, max_pruning_ratio)


__all__ = ["Resource", "budget_cost", "check_budgets"]
