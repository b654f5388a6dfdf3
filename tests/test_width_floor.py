"""`width_floor`: every group keeps a share of its uniform-width allocation at each budget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _pruning_helpers import TemplateData, small_cost_cases
from taperprune.blocks import group_widths
from taperprune.constraint import _rank_within, minimum_macs, solve_budget
from taperprune.cost import macs_and_marginals
from taperprune.errors import BudgetError
from taperprune.models import demo_cnn
from taperprune.pruner import PrunerConfig, StepRecord, TaperPruner
from taperprune.resource import check_budgets
from taperprune.schedule import ScheduleConfig
from taperprune.width_floor import UniformWidths, ratio_floors, uniform_floor

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = small_cost_cases()


def floor_keep(case, floor: torch.Tensor) -> torch.Tensor:
    return _rank_within(case.unit_group) < floor[case.unit_group]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CASES), st.floats(0.0, 1.0), st.floats(0.05, 0.95))
def test_the_floors_fit_the_budget_they_are_drawn_for(case, frac, share):
    budget = case.min_macs + frac * (case.cm.full_macs - case.min_macs)
    floor = uniform_floor(case.cm, case.unit_group, case.num_groups, budget, share)
    units = torch.bincount(case.unit_group, minlength=case.num_groups)
    assert bool((floor >= 1).all()) and bool((floor <= units).all())
    total, _ = macs_and_marginals(case.cm, floor_keep(case, floor))
    # One unit per group is the least any solve keeps; above that the floors fit the budget.
    assert total <= max(budget, case.min_macs) + 1e-6


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CASES), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_the_solve_meets_the_budget_and_keeps_every_floor(case, frac, seed):
    budget = case.min_macs + frac * (case.cm.full_macs - case.min_macs)
    scores = torch.rand(case.graph.num_units, generator=torch.Generator().manual_seed(seed))
    keep = torch.ones(case.graph.num_units, dtype=torch.bool)
    floor = uniform_floor(case.cm, case.unit_group, case.num_groups, budget, 0.75)
    sol = solve_budget(
        case.cm, scores, keep, budget, case.unit_group, case.interactions, floors=floor
    )
    assert sol.feasible and sol.macs <= budget + 1e-6
    live = torch.bincount(case.unit_group[sol.keep], minlength=case.num_groups)
    assert bool((live >= floor).all()), (live.tolist(), floor.tolist())


def bisected_widths(case, budget: float) -> torch.Tensor:
    """Uniform width's allocation by plain bisection of the share (the first implementation)."""
    units = torch.bincount(case.unit_group, minlength=case.num_groups).to(torch.float64)
    rank = _rank_within(case.unit_group)

    def kept(x: float) -> torch.Tensor:
        return (x * units).round().clamp(min=1).long()

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        fits = macs_and_marginals(case.cm, rank < kept(mid)[case.unit_group])[0] <= budget
        lo, hi = (mid, hi) if fits else (lo, mid)
    return kept(lo)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CASES), st.lists(st.floats(0.0, 1.05), min_size=1, max_size=12))
def test_the_galloping_search_finds_what_bisection_finds_in_any_order_of_budgets(case, fracs):
    widths = UniformWidths(case.cm, case.unit_group, case.num_groups)  # one search, many asks
    for frac in fracs:
        budget = case.min_macs + frac * (case.cm.full_macs - case.min_macs)
        assert widths.widths(budget).tolist() == bisected_widths(case, budget).tolist()


def test_a_floor_changes_which_channels_a_lopsided_score_removes():
    case = CASES[2]  # demo4: 4-8-16-16 channels
    scores = torch.ones(case.graph.num_units)
    scores[case.unit_group == 1] = 1e-6  # the second layer is worth nothing to the scores
    keep = torch.ones(case.graph.num_units, dtype=torch.bool)
    budget = 0.3 * case.cm.full_macs
    args = (case.cm, scores, keep, budget, case.unit_group, case.interactions)
    bare = solve_budget(*args)
    floor = uniform_floor(case.cm, case.unit_group, case.num_groups, budget, 0.75)
    floored = solve_budget(*args, floors=floor)
    count = lambda s: torch.bincount(case.unit_group[s.keep], minlength=case.num_groups)  # noqa: E731
    assert int(count(bare)[1]) == 1  # without a floor the worthless layer falls to one unit
    assert int(count(floored)[1]) > 1
    assert floored.macs <= budget


def taper_steps(pruner: TaperPruner, model: torch.nn.Module) -> Iterator[StepRecord]:
    """Train on template data until the pruner is done; yield each taper step's record
    after checking it met its budget; then check every snapshot was taken."""
    data = TemplateData((1, 12, 12), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        x, y = data.batch(16)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        record = pruner.step(loss)
        if record.phase == "taper":
            assert record.macs <= record.budget
            yield record
        if pruner.done:
            break
    assert pruner.done and list(pruner.snapshots) == pruner.budgets


def test_a_pruner_with_a_floor_keeps_it_at_every_step():
    torch.manual_seed(0)
    model = demo_cnn(num_classes=10, width=6)
    example = torch.zeros(1, 1, 12, 12)
    config = PrunerConfig(
        schedule=ScheduleConfig(kind="exponential", steps=12), warmup_steps=3, width_floor=0.75
    )
    pruner = TaperPruner(model, example, [0.5, 0.2], config=config)
    n_groups = len(pruner.graph.groups)
    for record in taper_steps(pruner, model):
        floor = uniform_floor(pruner.cost, pruner.graph.unit_group, n_groups, record.budget, 0.75)
        assert bool((group_widths(pruner.graph, pruner.keep) >= floor).all())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"width_floor": 1.0}, "width_floor must be in"),
        ({"width_floor": 0.5, "round_to": 8}, "round_to 1 only"),
    ],
)
def test_bad_floors_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        PrunerConfig(**kwargs)


# ---------------------------------------------------------------- max_pruning_ratio


def test_the_cap_keeps_the_ceiling_of_the_unpruned_share_and_at_least_one_unit():
    unit_group = torch.repeat_interleave(torch.arange(4), torch.tensor([16, 64, 10, 32]))
    assert ratio_floors(unit_group, 4, 0.9).tolist() == [2, 7, 1, 4]
    assert ratio_floors(unit_group, 4, 0.5).tolist() == [8, 32, 5, 16]
    assert ratio_floors(unit_group, 4, 1.0).tolist() == [1, 1, 1, 1]


def test_a_capped_pruner_keeps_every_group_at_its_floor_and_meets_every_budget():
    torch.manual_seed(0)
    model = demo_cnn(num_classes=10, width=8)
    example = torch.zeros(1, 1, 12, 12)
    config = PrunerConfig(
        schedule=ScheduleConfig(kind="exponential", steps=12),
        warmup_steps=3,
        max_pruning_ratio=0.75,
    )
    pruner = TaperPruner(model, example, [0.5, 0.1], config=config)
    floor = ratio_floors(pruner.graph.unit_group, len(pruner.graph.groups), 0.75)
    assert pruner.min_macs == minimum_macs(
        pruner.cost, pruner.graph.unit_group, len(pruner.graph.groups), None, floor
    )
    for _ in taper_steps(pruner, model):
        assert bool((group_widths(pruner.graph, pruner.keep) >= floor).all())


def test_a_budget_below_what_the_cap_allows_is_refused_before_training():
    model = demo_cnn(num_classes=10, width=8)
    example = torch.zeros(1, 1, 12, 12)
    with pytest.raises(BudgetError, match=r"max_pruning_ratio=0\.5 .*higher max_pruning_ratio"):
        TaperPruner(model, example, [0.1], config=PrunerConfig(max_pruning_ratio=0.5))
    with pytest.raises(BudgetError, match=r"max_pruning_ratio=0\.5"):
        check_budgets(model, example, [0.1], max_pruning_ratio=0.5)
    assert check_budgets(model, example, [0.3], max_pruning_ratio=0.5)  # about ¼ is the least


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_pruning_ratio": 0.0}, "max_pruning_ratio must be in"),
        ({"max_pruning_ratio": 1.5}, "max_pruning_ratio must be in"),
        ({"max_pruning_ratio": 0.9, "round_to": 8}, "round_to 1 and no width_floor"),
        ({"max_pruning_ratio": 0.9, "width_floor": 0.5}, "round_to 1 and no width_floor"),
    ],
)
def test_bad_caps_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        PrunerConfig(**kwargs)
