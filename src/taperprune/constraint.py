"""The holonomic constraint R(m) = B, solved exactly each step.

Keep unit u iff s_u ≥ λ·d_u: λ is the price of one MAC in loss, the smallest price
at which the kept set fits the budget. Units go in order of s/d, marginal costs are
recomputed as neighbours go (R is bilinear), removed units stay removed, and every
group keeps at least one unit. Removal is batched: a prefix of the s/d order goes at
once as long as no unit in it changes another's marginal cost, which gives exactly
the result of removing one unit at a time.

With blocks (`block_units`, from `round_to`) units leave a group in blocks: the group's
lowest-scoring live units, a block's score and price being its members' sums. A group
of c live units and blocks of L units first loses c mod L units (so that it lands on a
multiple of L), then L at a time, and keeps at least L (all c when c ≤ L). The greedy
order is then over blocks (ties: lower group first), batched the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .resource import Resource

INF = float("inf")


@dataclass(frozen=True)
class Solution:
    keep: torch.Tensor  # (N,) bool
    macs: float  # R(keep)
    lam: float  # s/d of the last unit (block) removed (0 when nothing had to go)
    removed: int  # units removed by this solve
    feasible: bool  # False when every group is down to one unit (block) and R > budget
    marginals: torch.Tensor | None = None  # d for `keep`, to pass to the next solve


@dataclass(frozen=True)
class _Price:
    """What one unit costs in the order (not in the budget): see `solve_budget`."""

    uniform: bool
    power: float
    fixed: torch.Tensor | None

    def of(self, units: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            return torch.ones(len(units), dtype=torch.float64)
        base = self.fixed[units] if self.fixed is not None else d[units]
        return base if self.power == 1.0 else base**self.power


def group_interactions(cm: Resource, unit_group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(G, G) bool: removing a unit of group i can change the marginal cost of a unit of j."""
    cm = cm.incidence
    n = cm.num_units
    nb = len(cm.coeff)
    ext_group = torch.cat([unit_group, torch.tensor([num_groups])])  # constant unit -> dummy

    def incidence(block: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        inc = torch.zeros(nb, num_groups + 1)
        inc.index_put_((block, ext_group[unit]), torch.ones(len(block)), accumulate=True)
        return inc[:, :num_groups]

    i_inc = incidence(cm.in_block, cm.in_unit)
    o_inc = incidence(cm.out_block, cm.out_unit)
    live_both = cm.both_unit != n
    b_inc = torch.zeros(nb, num_groups + 1)
    b_inc.index_put_(
        (cm.both_block[live_both], ext_group[cm.both_unit[live_both]]),
        torch.ones(int(live_both.sum())),
        accumulate=True,
    )
    b_inc = b_inc[:, :num_groups]
    cross = ((i_inc > 0).float().T @ (o_inc > 0).float()) > 0
    inter = cross | cross.T
    # A block with one and the same unit on both sides (depthwise) ties nothing else.
    trivial = (i_inc == 1) & (o_inc == 1) & (b_inc == 1)
    self_inter = ((i_inc > 0) & (o_inc > 0) & ~trivial).any(0)
    eye = torch.eye(num_groups, dtype=torch.bool)
    return (inter & ~eye) | torch.diag(self_inter)


def _rank_within(groups: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same group."""
    order = torch.argsort(groups, stable=True)
    sorted_g = groups[order]
    starts = torch.searchsorted(sorted_g, sorted_g)
    rank = torch.empty_like(groups)
    rank[order] = torch.arange(len(groups)) - starts
    return rank


def _conflict_free(g: torch.Tensor, interactions: torch.Tensor) -> int:
    """Length of the prefix of candidates (of groups `g`) in which none changes the marginal
    cost of a later one: removing it at once equals removing it one at a time."""
    pos = torch.arange(len(g))
    first = torch.full((interactions.shape[0],), len(g), dtype=torch.long)
    first.scatter_reduce_(0, g, pos, reduce="amin")
    firsts = torch.where(interactions, first.unsqueeze(0), len(g)).min(1).values
    conflict = torch.nonzero(firsts[g] < pos).flatten()
    return int(conflict[0]) if len(conflict) else len(g)


def solve_budget(
    cm: Resource,
    scores: torch.Tensor,
    keep: torch.Tensor,
    budget: float,
    unit_group: torch.Tensor,
    interactions: torch.Tensor,
    *,
    uniform_price: bool = False,
    price_power: float = 1.0,
    marginals: tuple[float, torch.Tensor] | None = None,
    fixed_price: torch.Tensor | None = None,
    block_units: torch.Tensor | None = None,
    floors: torch.Tensor | None = None,
) -> Solution:
    """Remove units in order of s/d until R(keep) ≤ budget; see the module docstring.

    `uniform_price` is the MAC-unaware ablation: order by s alone (every unit costs 1),
    while the budget is still measured in real MACs. `price_power` orders by s / d**p
    instead (p = 1 is the Lagrangian rule; p < 1 softens the MAC price). `marginals`
    may pass (R, d) for `keep` from the previous solve, to skip recomputing them.
    `fixed_price` orders by s / fixed_price**p (e.g. the marginal costs at full width)
    while the budget is still accounted in the current marginal MACs. `block_units` (G,)
    holds the units per block of every group (`blocks.block_units`); all ones (or None)
    is the one-unit-at-a-time solve. `floors` (G,) are the units each group keeps at least
    (`width_floor.UniformWidths.floors`; unit solve only); one each when None.
    """
    price = _Price(uniform_price, price_power, fixed_price)
    if block_units is not None and bool((block_units != 1).any()):
        return _solve_blocks(
            cm, scores, keep, budget, unit_group, interactions, block_units, price, marginals
        )
    keep = keep.clone().bool()
    num_groups = interactions.shape[0]
    least = torch.ones(num_groups, dtype=torch.long) if floors is None else floors
    s = scores.to(torch.float64)
    total, d = marginals if marginals is not None else cm.total_and_marginals(keep)
    lam, removed = 0.0, 0
    window = 128  # only the lowest ratios are sorted; grows when a step needs more
    while total > budget:
        live = torch.zeros(num_groups, dtype=torch.long).index_add_(0, unit_group, keep.long())
        cand = torch.nonzero(keep & (d > 0)).flatten()
        ratio = s[cand] / price.of(cand, d)
        windowed = len(cand) > window
        if windowed:
            # Every unit up to the window-th smallest ratio, ties included: a prefix of
            # the full order, so the greedy choice inside it is unchanged.
            inside = ratio <= torch.kthvalue(ratio, window).values
            cand, ratio = cand[inside], ratio[inside]
        order = torch.argsort(ratio, stable=True)  # ties: lower unit index first
        cand, ratio = cand[order], ratio[order]
        g = unit_group[cand]
        allowed = _rank_within(g) < live[g] - least[g]
        cand, ratio, g = cand[allowed], ratio[allowed], g[allowed]
        if len(cand) == 0:
            if windowed:
                window *= 4
                continue
            return Solution(keep, total, lam, removed, feasible=False, marginals=d)
        end = _conflict_free(g, interactions)
        batch = cand[:end]
        after = total - torch.cumsum(d[batch], 0)
        fits = torch.nonzero(after <= budget).flatten()
        take = int(fits[0]) + 1 if len(fits) else end
        if windowed and take == len(cand):
            window *= 4
        keep[batch[:take]] = False
        lam = float(ratio[take - 1])
        removed += take
        total, d = cm.total_and_marginals(keep)
    return Solution(keep, total, lam, removed, feasible=True, marginals=d)


@dataclass(frozen=True)
class _Blocks:
    """The blocks every group can still lose, in order, and their members."""

    units: torch.Tensor  # (M,) member units
    block: torch.Tensor  # (M,) block of each member
    group: torch.Tensor  # (K,) group of each block
    size: torch.Tensor  # (K,) units per block
    ratio: torch.Tensor  # (K,) summed score / summed price
    saving: torch.Tensor  # (K,) summed marginal MACs


def _next_blocks(
    ranked: torch.Tensor,
    keep: torch.Tensor,
    s: torch.Tensor,
    d: torch.Tensor,
    unit_group: torch.Tensor,
    block_units: torch.Tensor,
    price: _Price,
) -> _Blocks:
    """Chunk every group's live units, lowest score first (ties: lower unit), into blocks.

    `ranked` holds all units by group, then score, then index (scores are fixed in a solve).
    """
    num_groups = len(block_units)
    units = ranked[keep[ranked]]
    g = unit_group[units]
    count = torch.zeros(num_groups, dtype=torch.long).index_add_(0, g, torch.ones_like(g))
    n_blocks = ((count + block_units - 1) // block_units - 1).clamp(min=0)
    first = count - n_blocks * block_units  # the remainder block (a full one if none)
    rank = torch.arange(len(g)) - torch.searchsorted(g, g)
    chunk = torch.where(rank < first[g], 0, 1 + (rank - first[g]) // block_units[g])
    member = chunk < n_blocks[g]
    units, g, chunk = units[member], g[member], chunk[member]
    block = (torch.cumsum(n_blocks, 0) - n_blocks)[g] + chunk
    k = int(n_blocks.sum())

    def sums(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(k, dtype=torch.float64).index_add_(0, block, values)

    group = torch.repeat_interleave(torch.arange(num_groups), n_blocks)
    size = torch.zeros(k, dtype=torch.long).index_add_(0, block, torch.ones_like(block))
    ratio = sums(s[units]) / sums(price.of(units, d))
    return _Blocks(units, block, group, size, ratio, sums(d[units]))


def _chain_order(blocks: _Blocks) -> torch.Tensor:
    """The blocks that may go, in greedy order: a group's next block is its only candidate.

    A block whose ratio is below its predecessor's goes right after it (the greedy picks it
    next), so the key is the running maximum of the ratio along each group's chain; a block
    saving no MACs stops its group's chain.
    """
    k = len(blocks.group)
    chunk = torch.arange(k) - torch.searchsorted(blocks.group, blocks.group)
    stuck = torch.full((int(blocks.group.max()) + 1 if k else 0,), k, dtype=torch.long)
    bad = blocks.saving <= 0
    stuck.scatter_reduce_(0, blocks.group[bad], chunk[bad], reduce="amin")
    key = blocks.ratio.clone()
    same = blocks.group[1:] == blocks.group[:-1]
    for gi in torch.unique(blocks.group[1:][same & (key[1:] < key[:-1])]).tolist():
        seg = torch.nonzero(blocks.group == gi).flatten()
        key[seg] = torch.cummax(key[seg], 0).values
    order = torch.argsort(key, stable=True)  # ties: lower group, then the chain's order
    return order[chunk[order] < stuck[blocks.group[order]]]


def _solve_blocks(
    cm: Resource,
    scores: torch.Tensor,
    keep: torch.Tensor,
    budget: float,
    unit_group: torch.Tensor,
    interactions: torch.Tensor,
    block_units: torch.Tensor,
    price: _Price,
    marginals: tuple[float, torch.Tensor] | None,
) -> Solution:
    """`solve_budget` with blocks: remove the block of least summed s / summed price."""
    keep = keep.clone().bool()
    s = scores.to(torch.float64)
    total, d = marginals if marginals is not None else cm.total_and_marginals(keep)
    lam, removed = 0.0, 0
    ranked = torch.argsort(s, stable=True)
    ranked = ranked[torch.argsort(unit_group[ranked], stable=True)]
    while total > budget:
        blocks = _next_blocks(ranked, keep, s, d, unit_group, block_units, price)
        cand = _chain_order(blocks)
        if len(cand) == 0:
            return Solution(keep, total, lam, removed, feasible=False, marginals=d)
        end = _conflict_free(blocks.group[cand], interactions)
        batch = cand[:end]
        # Exact for blocks of groups that do not interact with themselves; for the others
        # (one per batch) the real saving is smaller, so the loop simply goes on.
        after = total - torch.cumsum(blocks.saving[batch], 0)
        fits = torch.nonzero(after <= budget).flatten()
        take = int(fits[0]) + 1 if len(fits) else end
        gone = torch.zeros(len(blocks.group), dtype=torch.bool)
        gone[batch[:take]] = True
        keep[blocks.units[gone[blocks.block]]] = False
        lam = float(blocks.ratio[batch[take - 1]])
        removed += int(blocks.size[batch[:take]].sum())
        total, d = cm.total_and_marginals(keep)
    return Solution(keep, total, lam, removed, feasible=True, marginals=d)


def minimum_macs(
    cm: Resource,
    unit_group: torch.Tensor,
    num_groups: int,
    block_units: torch.Tensor | None = None,
    floors: torch.Tensor | None = None,
) -> float:
    """R with one unit (one block of `block_units`, or `floors` units) left in every group:
    the least reachable.

    A group no wider than its block keeps all its units.
    """
    blocks = torch.ones(num_groups, dtype=torch.long) if block_units is None else block_units
    if floors is not None:
        blocks = torch.maximum(blocks, floors)
    keep = _rank_within(unit_group) < blocks[unit_group]
    total, _ = cm.total_and_marginals(keep)
    return total
