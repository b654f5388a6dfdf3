"""The λ solve (constraint.solve_budget) against its definition: a one-unit-at-a-time greedy."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _pruning_helpers import (
    CostCase,
    SelfResidual,
    cost_case,
    depthwise_net,
    small_cost_cases,
)
from taperprune.constraint import Solution, group_interactions, minimum_macs, solve_budget
from taperprune.cost import macs_and_marginals
from taperprune.models import demo_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = small_cost_cases()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def group_counts(case: CostCase, keep: torch.Tensor) -> torch.Tensor:
    return torch.zeros(case.num_groups, dtype=torch.long).index_add_(
        0, case.unit_group, keep.long()
    )


def brute_force(
    case: CostCase,
    scores: torch.Tensor,
    keep: torch.Tensor,
    budget: float,
    *,
    uniform_price: bool = False,
    fixed_price: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, float, list[int], list[float], bool]:
    """The definition: remove the live unit of least s/d (ties: lowest index) one at a time.

    (s/1 with `uniform_price`, s/fixed_price[u] with a fixed price.)

    Only units with d > 0 in a group with more than one live unit may go; marginal costs
    are recomputed after every removal. Returns keep, R, λ, removed units in order, R
    before each removal, feasible.
    """
    keep = keep.clone()
    s = scores.to(torch.float64).tolist()
    total, d = macs_and_marginals(case.cm, keep)
    lam, order, before = 0.0, [], []
    while total > budget:
        live = group_counts(case, keep).tolist()
        best, best_ratio = -1, math.inf
        for u in range(len(keep)):
            if not keep[u] or float(d[u]) <= 0 or live[int(case.unit_group[u])] <= 1:
                continue
            if uniform_price:
                ratio = s[u]
            elif fixed_price is not None:
                ratio = s[u] / float(fixed_price[u])
            else:
                ratio = s[u] / float(d[u])
            if best < 0 or ratio < best_ratio:
                best, best_ratio = u, ratio
        if best < 0:
            return keep, total, lam, order, before, False
        keep[best] = False
        lam = best_ratio
        order.append(best)
        before.append(total)
        total, d = macs_and_marginals(case.cm, keep)
    return keep, total, lam, order, before, True


def solve(
    case: CostCase, scores: torch.Tensor, keep: torch.Tensor, budget: float, **kw: Any
) -> Solution:
    return solve_budget(case.cm, scores, keep, budget, case.unit_group, case.interactions, **kw)


@st.composite
def problems(draw: st.DrawFn) -> tuple[CostCase, torch.Tensor, torch.Tensor, float]:
    """A case, scores ≥ 0 with ties and zeros, a start keep (≥ 1 unit per group), a budget."""
    case = draw(st.sampled_from(CASES))
    n = case.graph.num_units
    value = st.one_of(
        st.sampled_from([0.0, 0.0, 1.0, 2.0, 0.5]),
        st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False),
    )
    scores = torch.tensor(draw(st.lists(value, min_size=n, max_size=n)), dtype=torch.float64)
    keep = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    for g in range(case.num_groups):
        units = case.graph.units_of_group(g)
        if not keep[units].any():
            keep[units[draw(st.integers(0, len(units) - 1))]] = True
    total = macs_and_marginals(case.cm, keep)[0]
    frac = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    budget = case.min_macs + frac * (total - case.min_macs)
    return case, scores, keep, budget


def _price(case: CostCase, mode: str) -> dict[str, Any]:
    if mode == "uniform":
        return {"uniform_price": True}
    if mode == "static":  # the marginal costs at full width (PrunerConfig price="static")
        full = torch.ones(case.graph.num_units, dtype=torch.bool)
        return {"fixed_price": macs_and_marginals(case.cm, full)[1]}
    return {}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["macs", "uniform", "static"]))
def test_solve_equals_brute_force_greedy(problem, mode):
    case, scores, keep, budget = problem
    price = _price(case, mode)
    sol = solve(case, scores, keep, budget, **price)
    bk, btotal, blam, order, _, bfeasible = brute_force(case, scores, keep, budget, **price)
    assert sol.feasible and bfeasible
    assert torch.equal(sol.keep, bk), (case.name, order)
    assert sol.macs == pytest.approx(btotal, abs=1e-6)
    assert sol.lam == blam
    assert sol.removed == len(order)


@SETTINGS
@given(problems())
def test_budget_met_within_one_unit(problem):
    case, scores, keep, budget = problem
    sol = solve(case, scores, keep, budget)
    assert sol.feasible
    assert sol.macs <= budget
    assert sol.macs == pytest.approx(float(macs_and_marginals(case.cm, sol.keep)[0]))
    start = macs_and_marginals(case.cm, keep)[0]
    if start <= budget:
        assert sol.removed == 0 and torch.equal(sol.keep, keep) and sol.lam == 0.0
        return
    # Re-adding the last unit removed overshoots: R(keep) ≤ B < R(keep) + d_last.
    _, _, _, order, before, _ = brute_force(case, scores, keep, budget)
    d_last = before[-1] - sol.macs
    assert sol.macs <= budget < sol.macs + d_last
    plus = sol.keep.clone()
    plus[order[-1]] = True
    assert macs_and_marginals(case.cm, plus)[0] > budget
    # The same without the brute force: some removed unit, put back, breaks the budget.
    removed = torch.nonzero(keep & ~sol.keep).flatten().tolist()
    assert len(removed) == sol.removed
    overs = []
    for u in removed:
        k = sol.keep.clone()
        k[u] = True
        overs.append(macs_and_marginals(case.cm, k)[0] > budget)
    assert any(overs)


@SETTINGS
@given(problems(), st.floats(0.0, 1.0), st.booleans())
def test_lambda_monotone_in_budget(problem, shrink, uniform):
    case, scores, keep, budget = problem
    smaller = case.min_macs + shrink * (budget - case.min_macs)
    big = solve(case, scores, keep, budget, uniform_price=uniform)
    small = solve(case, scores, keep, smaller, uniform_price=uniform)
    assert small.lam >= big.lam
    # The smaller budget removes a superset: the removal order is the same prefix.
    assert not (small.keep & ~big.keep).any()
    assert small.removed >= big.removed


@SETTINGS
@given(problems(), st.booleans())
def test_masks_monotone_and_groups_nonempty(problem, uniform):
    case, scores, keep, budget = problem
    sol = solve(case, scores, keep, budget, uniform_price=uniform)
    assert sol.keep.dtype == torch.bool
    assert not (sol.keep & ~keep).any(), "a removed unit came back"
    assert (group_counts(case, sol.keep) >= 1).all()
    assert sol.removed == int((keep & ~sol.keep).sum())


@settings(max_examples=40, deadline=None)
@given(problems())
def test_solve_does_not_modify_its_input(problem):
    case, scores, keep, budget = problem
    keep_before, scores_before = keep.clone(), scores.clone()
    solve(case, scores, keep, budget)
    assert torch.equal(keep, keep_before) and torch.equal(scores, scores_before)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_infeasible_budget(case):
    scores = torch.rand(case.graph.num_units, dtype=torch.float64)
    keep = torch.ones(case.graph.num_units, dtype=torch.bool)
    sol = solve(case, scores, keep, case.min_macs - 1)
    assert not sol.feasible
    assert (group_counts(case, sol.keep) == 1).all()
    assert sol.macs == pytest.approx(case.min_macs)
    assert sol.macs > case.min_macs - 1
    # At exactly the minimum it is feasible, one unit per group.
    ok = solve(case, scores, keep, case.min_macs)
    assert ok.feasible and ok.macs <= case.min_macs


def test_uniform_price_orders_by_score_alone():
    case = CASES[2]  # demo4: very different marginal costs per group
    n = case.graph.num_units
    scores = torch.arange(n, 0, -1, dtype=torch.float64)  # the last units score lowest
    keep = torch.ones(n, dtype=torch.bool)
    budget = 0.9 * case.cm.full_macs
    sol = solve(case, scores, keep, budget, uniform_price=True)
    gone = torch.nonzero(~sol.keep).flatten().tolist()
    assert gone == list(range(n - len(gone), n))
    assert sol.lam == float(scores[gone[0]])


def test_minimum_macs_is_one_unit_per_group():
    case = CASES[0]
    keep = torch.zeros(case.graph.num_units, dtype=torch.bool)
    for g in range(case.num_groups):
        keep[case.graph.units_of_group(g)[-1]] = True
    assert macs_and_marginals(case.cm, keep)[0] == case.min_macs
    assert minimum_macs(case.cm, case.unit_group, case.num_groups) == case.min_macs


# ---------------------------------------------------------------- group interactions
def test_demo_cnn_adjacent_groups_interact():
    case = cost_case("demo", demo_cnn(width=4), (1, 12, 12))
    g = case.num_groups
    assert g == 4
    inter = group_interactions(case.cm, case.unit_group, g)
    for i in range(g):
        for j in range(g):
            assert bool(inter[i, j]) == (abs(i - j) == 1), (i, j)
    assert torch.equal(inter, inter.T)


def _marginals_before_after_removing_one(case, group: int):
    """The group's units, and d for all units before and after removing its first unit."""
    keep = torch.ones(case.graph.num_units, dtype=torch.bool)
    _, d = macs_and_marginals(case.cm, keep)
    units = case.graph.units_of_group(group)
    keep[units[0]] = False
    _, d2 = macs_and_marginals(case.cm, keep)
    return units, d, d2


def test_depthwise_self_blocks_do_not_self_interact():
    case = cost_case("dw", depthwise_net(4))
    inter = group_interactions(case.cm, case.unit_group, case.num_groups)
    # The group through the depthwise conv has blocks with one and the same unit on both
    # sides: removing one channel does not change another channel's marginal cost.
    assert not inter.diagonal().any()
    assert bool(inter[0, 1]) and bool(inter[1, 0])
    # Check against the definition: removing any unit of group 0 leaves the marginal
    # cost of every other unit of group 0 unchanged.
    units, d, d2 = _marginals_before_after_removing_one(case, 0)
    assert torch.equal(d[units[1:]], d2[units[1:]])


def test_stream_conv_makes_group_self_interacting():
    case = cost_case("self", SelfResidual(4))
    inter = group_interactions(case.cm, case.unit_group, case.num_groups)
    assert bool(inter[0, 0]) and not bool(inter[1, 1])
    units, d, d2 = _marginals_before_after_removing_one(case, 0)
    assert (d2[units[1:]] < d[units[1:]]).all()


def test_interactions_match_marginal_changes():
    """For every case: i interacts with j iff removing some unit of i changes some d of j."""
    for case in CASES:
        keep = torch.ones(case.graph.num_units, dtype=torch.bool)
        _, d = macs_and_marginals(case.cm, keep)
        seen = torch.zeros(case.num_groups, case.num_groups, dtype=torch.bool)
        for u in range(case.graph.num_units):
            k = keep.clone()
            k[u] = False
            _, d2 = macs_and_marginals(case.cm, k)
            changed = (d2 != d) & k
            gi = int(case.unit_group[u])
            for v in torch.nonzero(changed).flatten().tolist():
                seen[gi, int(case.unit_group[v])] = True
        # The solver may be conservative (declare more), never less.
        assert not (seen & ~case.interactions).any(), case.name
