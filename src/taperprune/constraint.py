"""The holonomic constraint R(m) = B, solved exactly each step.

Keep unit u iff s_u ≥ λ·d_u: λ is the price of one MAC in loss, the smallest price
at which the kept set fits the budget. Units go in order of s/d, marginal costs are
recomputed as neighbours go (R is bilinear), removed units stay removed, and every
group keeps at least one unit. Removal is batched: a prefix of the s/d order goes at
once as long as no unit in it changes another's marginal cost, which gives exactly
the result of removing one unit at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cost import CostModel, macs_and_marginals

INF = float("inf")


@dataclass(frozen=True)
class Solution:
    keep: torch.Tensor  # (N,) bool
    macs: float  # R(keep)
    lam: float  # s/d of the last unit removed (0 when nothing had to go)
    removed: int  # units removed by this solve
    feasible: bool  # False when every group is down to one unit and R > budget
    marginals: torch.Tensor | None = None  # d for `keep`, to pass to the next solve


def group_interactions(cm: CostModel, unit_group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(G, G) bool: removing a unit of group i can change the marginal cost of a unit of j."""
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


def solve_budget(
    cm: CostModel,
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
) -> Solution:
    """Remove units in order of s/d until R(keep) ≤ budget; see the module docstring.

    `uniform_price` is the MAC-unaware ablation: order by s alone (every unit costs 1),
    while the budget is still measured in real MACs. `price_power` orders by s / d**p
    instead (p = 1 is the Lagrangian rule; p < 1 softens the MAC price). `marginals`
    may pass (R, d) for `keep` from the previous solve, to skip recomputing them.
    `fixed_price` orders by s / fixed_price**p (e.g. the marginal costs at full width)
    while the budget is still accounted in the current marginal MACs.
    """
    keep = keep.clone().bool()
    num_groups = interactions.shape[0]
    s = scores.to(torch.float64)
    total, d = marginals if marginals is not None else macs_and_marginals(cm, keep)
    lam, removed = 0.0, 0
    window = 128  # only the lowest ratios are sorted; grows when a step needs more
    while total > budget:
        live = torch.zeros(num_groups, dtype=torch.long).index_add_(0, unit_group, keep.long())
        cand = torch.nonzero(keep & (d > 0)).flatten()
        if uniform_price:
            price = torch.ones_like(d[cand])
        elif fixed_price is not None:
            price = fixed_price[cand] if price_power == 1.0 else fixed_price[cand] ** price_power
        elif price_power == 1.0:
            price = d[cand]
        else:
            price = d[cand] ** price_power
        ratio = s[cand] / price
        windowed = len(cand) > window
        if windowed:
            # Every unit up to the window-th smallest ratio, ties included: a prefix of
            # the full order, so the greedy choice inside it is unchanged.
            inside = ratio <= torch.kthvalue(ratio, window).values
            cand, ratio = cand[inside], ratio[inside]
        order = torch.argsort(ratio, stable=True)  # ties: lower unit index first
        cand, ratio = cand[order], ratio[order]
        g = unit_group[cand]
        allowed = _rank_within(g) < live[g] - 1
        cand, ratio, g = cand[allowed], ratio[allowed], g[allowed]
        if len(cand) == 0:
            if windowed:
                window *= 4
                continue
            return Solution(keep, total, lam, removed, feasible=False, marginals=d)
        pos = torch.arange(len(cand))
        first = torch.full((num_groups,), len(cand), dtype=torch.long)
        first.scatter_reduce_(0, g, pos, reduce="amin")
        firsts = torch.where(interactions, first.unsqueeze(0), len(cand)).min(1).values
        conflict = torch.nonzero(firsts[g] < pos).flatten()
        end = int(conflict[0]) if len(conflict) else len(cand)
        batch = cand[:end]
        after = total - torch.cumsum(d[batch], 0)
        fits = torch.nonzero(after <= budget).flatten()
        take = int(fits[0]) + 1 if len(fits) else end
        if windowed and take == len(cand):
            window *= 4
        keep[batch[:take]] = False
        lam = float(ratio[take - 1])
        removed += take
        total, d = macs_and_marginals(cm, keep)
    return Solution(keep, total, lam, removed, feasible=True, marginals=d)


def minimum_macs(cm: CostModel, unit_group: torch.Tensor, num_groups: int) -> float:
    """R with one unit left in every group: the least any budget can reach."""
    keep = torch.zeros(len(unit_group), dtype=torch.bool)
    first = torch.full((num_groups,), len(unit_group), dtype=torch.long)
    first.scatter_reduce_(0, unit_group, torch.arange(len(unit_group)), reduce="amin")
    keep[first] = True
    total, _ = macs_and_marginals(cm, keep)
    return total
