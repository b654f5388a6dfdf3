"""Channel multiples (`round_to`): the block each group's units leave in, checked once.

With `round_to` N a group keeps a multiple of N channels, or its full width. A unit holds
one channel, or one per conv group where a grouped conv ties channels, so a group of
s-channel units moves in blocks of lcm(N, s) channels: lcm(N, s) / s units. A group no
wider than its block cannot be pruned and keeps its full width; `round_to` is refused
only when that leaves no group to prune at all (a user asking for multiples of 8 on a
net with one 4-channel squeeze layer wants that layer left alone, not an error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .budget import amount, parse_budgets
from .errors import BudgetError, GraphError, TaperpruneError
from .graph import ChannelGraph


def block_units(graph: ChannelGraph, round_to: int) -> torch.Tensor:
    """(G,) long: units per block of every group; all ones for `round_to` = 1."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a whole number ≥ 1, got {round_to!r}")
    num_groups = len(graph.groups)
    if round_to == 1:
        return torch.ones(num_groups, dtype=torch.long)
    big = torch.full((num_groups,), -1, dtype=torch.long)
    small = torch.full((num_groups,), 1 << 62, dtype=torch.long)
    big.scatter_reduce_(0, graph.unit_group, graph.unit_size, reduce="amax")
    small.scatter_reduce_(0, graph.unit_group, graph.unit_size, reduce="amin")
    out = torch.empty(num_groups, dtype=torch.long)
    for gi, group in enumerate(graph.groups):
        size = int(big[gi])
        if size != int(small[gi]):  # not produced by build_graph's position ties
            raise GraphError(
                f"the channel group of {group.root!r} ties its channels in units of different "
                f"sizes, so round_to={round_to} cannot hold; use round_to=1"
            )
        out[gi] = math.lcm(round_to, size) // size
    widths = torch.tensor([g.size for g in graph.groups])
    if not bool((widths > out * big).any()):
        widest = max(graph.groups, key=lambda g: g.size)
        raise TaperpruneError(
            f"round_to={round_to} leaves nothing to prune: no prunable channel group is wider "
            f"than one block of {round_to} channels (the widest, of layer {widest.root!r}, has "
            f"{widest.size}); choose round_to below {widest.size}"
        )
    return out


def group_widths(graph: ChannelGraph, keep: torch.Tensor) -> torch.Tensor:
    """(G,) long: channels of every group's root layer that `keep` keeps."""
    kept = graph.unit_size * keep.long()
    return torch.zeros(len(graph.groups), dtype=torch.long).index_add_(0, graph.unit_group, kept)


def rounded_budgets(
    values: Sequence[float | int | str] | str,
    full_macs: int,
    minimum: float,
    round_to: int,
    unit: str = "MACs",
    max_ratio: float = 1.0,
) -> list[int]:
    """`parse_budgets`, saying that `round_to` or `max_ratio` sets the minimum where one does."""
    if round_to == 1 and max_ratio == 1:
        return parse_budgets(values, full_macs, minimum, unit)
    items = [v for v in values.split(",") if v.strip()] if isinstance(values, str) else values
    out = parse_budgets(items, full_macs, 0.0, unit)
    if out[-1] < minimum:
        last = str(items[-1]).strip()
        if round_to == 1:
            why = (
                f"max_pruning_ratio={max_ratio:g} (every prunable group keeps "
                f"≥ {1 - max_ratio:.0%} of its channels)",
                "a higher max_pruning_ratio",
            )
        else:
            why = (
                f"round_to={round_to} (one block of {round_to} channels left in every "
                "prunable group)",
                "a smaller round_to",
            )
        raise BudgetError(
            f"budget {last} ({amount(out[-1], unit)}) is below the least this model can reach "
            f"with {why[0]}: {amount(minimum, unit)} ({minimum / full_macs:.2%} of "
            f"{amount(full_macs, unit)}); choose a budget ≥ that or {why[1]}"
        )
    return out
