"""Channel multiples (`round_to`): blocks in the λ solve, widths at every step, bad inputs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from _pruning_helpers import (
    CostCase,
    SmallResNet,
    TemplateData,
    cost_case,
    depthwise_net,
    grouped_net,
    small_cost_cases,
)
from taperprune.blocks import block_units, group_widths
from taperprune.constraint import Solution, _Blocks, _chain_order, minimum_macs, solve_budget
from taperprune.cost import count_macs, macs_and_marginals
from taperprune.errors import BudgetError, GraphError, TaperpruneError
from taperprune.graph import build_graph
from taperprune.masks import _MaskedForward
from taperprune.models import demo_cnn
from taperprune.pruner import PrunerConfig, Snapshot, TaperPruner
from taperprune.resource import check_budgets
from taperprune.schedule import ScheduleConfig, ScheduleKind

pytestmark = pytest.mark.usefixtures("one_thread")

torch.manual_seed(0)
CASES = small_cost_cases() + [
    cost_case("demo6", demo_cnn(width=6), (1, 12, 12)),
    cost_case("resnet6", SmallResNet(6)),
    cost_case("depthwise6", depthwise_net(6)),
    cost_case("grouped8", grouped_net(8)),
]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the definition
def unit_price(case: CostCase, mode: str, d: torch.Tensor) -> list[float]:
    if mode == "uniform":
        return [1.0] * case.graph.num_units
    if mode in ("static", "random"):
        return price_kw(case, mode)["fixed_price"].tolist()
    return d.tolist()


def block_greedy(
    case: CostCase,
    scores: torch.Tensor,
    keep: torch.Tensor,
    budget: float,
    blocks: torch.Tensor,
    mode: str = "macs",
) -> tuple[torch.Tensor, float, float, list[list[int]], bool]:
    """Remove the block of least summed s / summed price, one block at a time.

    A group's next block is its lowest-scoring live units (ties: lower unit): c mod L of
    its c live units when that is not 0, else L; a group keeps at least L units, a block
    must save MACs, ties between blocks go to the lower group. Prices and marginal costs
    are recomputed after every block. Returns keep, R, λ, the blocks removed, feasible.
    """
    keep = keep.clone()
    s = scores.to(torch.float64).tolist()
    total, d = macs_and_marginals(case.cm, keep)
    lam, removed = 0.0, list[list[int]]()
    while total > budget:
        price = unit_price(case, mode, d)
        best: list[int] = []
        best_ratio = math.inf
        for g in range(case.num_groups):
            live = [u for u in case.graph.units_of_group(g).tolist() if keep[u]]
            live.sort(key=lambda u: (s[u], u))
            c, size = len(live), int(blocks[g])
            if c <= size:
                continue
            block = live[: c - (math.ceil(c / size) - 1) * size]
            if sum(float(d[u]) for u in block) <= 0:
                continue
            ratio = sum(s[u] for u in block) / sum(price[u] for u in block)
            if not best or ratio < best_ratio:
                best, best_ratio = block, ratio
        if not best:
            return keep, total, lam, removed, False
        keep[best] = False
        lam = best_ratio
        removed.append(best)
        total, d = macs_and_marginals(case.cm, keep)
    return keep, total, lam, removed, True


def solve(case: CostCase, scores: torch.Tensor, keep: torch.Tensor, budget: float, **kw: Any):
    return solve_budget(case.cm, scores, keep, budget, case.unit_group, case.interactions, **kw)


def price_kw(case: CostCase, mode: str) -> dict[str, Any]:
    """Keywords of `solve_budget` for a price mode; "random" prices the units of one group
    differently, so that a group's later block can be cheaper than its next one."""
    if mode == "uniform":
        return {"uniform_price": True}
    if mode == "static":
        full = torch.ones(case.graph.num_units, dtype=torch.bool)
        return {"fixed_price": macs_and_marginals(case.cm, full)[1]}
    if mode == "random":
        gen = torch.Generator().manual_seed(case.graph.num_units)
        return {"fixed_price": torch.rand(case.graph.num_units, generator=gen).double() + 0.1}
    return {}


@st.composite
def problems(draw: st.DrawFn, full_start: bool = False) -> tuple[Any, ...]:
    """A case, block sizes (≥ 1 per group, some > 1), scores with ties, a start, a budget."""
    case = draw(st.sampled_from(CASES))
    n = case.graph.num_units
    sizes = [len(case.graph.units_of_group(g)) for g in range(case.num_groups)]
    blocks = torch.tensor([draw(st.integers(1, max(1, k))) for k in sizes], dtype=torch.long)
    if bool((blocks == 1).all()):
        g = int(torch.tensor(sizes).argmax())
        blocks[g] = max(2, sizes[g])
    value = st.one_of(
        st.sampled_from([0.0, 0.0, 1.0, 2.0, 0.5]),
        st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False),
    )
    scores = torch.tensor(draw(st.lists(value, min_size=n, max_size=n)), dtype=torch.float64)
    if full_start:
        keep = torch.ones(n, dtype=torch.bool)
    else:
        keep = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        for g in range(case.num_groups):
            units = case.graph.units_of_group(g)
            if not keep[units].any():
                keep[units[draw(st.integers(0, len(units) - 1))]] = True
    least = minimum_macs(case.cm, case.unit_group, case.num_groups, blocks)
    total = macs_and_marginals(case.cm, keep)[0]
    frac = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-0.3, 1.0)))
    budget = least + frac * max(0.0, total - least)  # below `least`: maybe infeasible
    return case, blocks, scores, keep, budget


@SETTINGS
@given(problems(), st.sampled_from(["macs", "uniform", "static", "random"]))
def test_block_solve_equals_block_greedy(problem, mode):
    case, blocks, scores, keep, budget = problem
    sol = solve(case, scores, keep, budget, block_units=blocks, **price_kw(case, mode))
    bk, btotal, blam, removed, bfeasible = block_greedy(case, scores, keep, budget, blocks, mode)
    assert sol.feasible == bfeasible
    assert torch.equal(sol.keep, bk), (case.name, blocks.tolist(), removed)
    assert sol.macs == pytest.approx(btotal, abs=1e-6)
    assert sol.lam == blam
    assert sol.removed == sum(len(b) for b in removed)
    assert torch.equal(sol.marginals, macs_and_marginals(case.cm, sol.keep)[1])


@SETTINGS
@given(problems(full_start=True))
def test_blocks_from_full_width_meet_the_budget_within_one_block(problem):
    case, blocks, scores, keep, budget = problem
    budget = max(budget, minimum_macs(case.cm, case.unit_group, case.num_groups, blocks))
    sol = solve(case, scores, keep, budget, block_units=blocks)
    assert sol.feasible  # the budget is at least the minimum with one block per group
    assert sol.macs <= budget
    assert not (sol.keep & ~keep).any()
    for g in range(case.num_groups):
        units = case.graph.units_of_group(g)
        c, size = int(sol.keep[units].sum()), int(blocks[g])
        assert c == len(units) or (c % size == 0 and c >= size), (g, c, size, len(units))
    _, _, _, removed, _ = block_greedy(case, scores, keep, budget, blocks)
    if removed:  # putting the last block back breaks the budget: overshoot < one block
        back = sol.keep.clone()
        back[removed[-1]] = True
        assert macs_and_marginals(case.cm, back)[0] > budget
    else:
        assert sol.removed == 0 and sol.lam == 0.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["macs", "uniform", "static"]))
def test_round_to_one_is_todays_solve(problem, mode):
    case, _, scores, keep, budget = problem
    today = solve(case, scores, keep, budget, **price_kw(case, mode))
    for blocks in (torch.ones(case.num_groups, dtype=torch.long), block_units(case.graph, 1)):
        got = solve(case, scores, keep, budget, block_units=blocks, **price_kw(case, mode))
        assert same_solution(got, today)


def same_solution(a: Solution, b: Solution) -> bool:
    return (
        torch.equal(a.keep, b.keep)
        and (a.macs, a.lam, a.removed, a.feasible) == (b.macs, b.lam, b.removed, b.feasible)
        and a.marginals is not None
        and b.marginals is not None
        and torch.equal(a.marginals, b.marginals)
    )


def test_chain_order_follows_each_groups_chain():
    """A cheaper later block goes right after its group's next one; a block saving no MACs
    stops its group (the property tests never meet one: marginal costs are positive)."""
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    ratio = torch.tensor([1.0, 0.5, 2.0, 0.7, 0.1, 0.9], dtype=torch.float64)
    saving = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.long)
    blocks = _Blocks(empty, empty, group, torch.ones(6).long(), ratio, saving)
    assert _chain_order(blocks).tolist() == [5, 0, 1, 2]


def test_minimum_macs_keeps_one_block_per_group():
    case = CASES[-4]  # demo6: groups of 6, 12, 24, 24 channels
    assert [g.size for g in case.graph.groups] == [6, 12, 24, 24]
    blocks = block_units(case.graph, 8)
    keep = torch.zeros(case.graph.num_units, dtype=torch.bool)
    for g, kept in enumerate([6, 8, 8, 8]):  # a group no wider than a block stays whole
        keep[case.graph.units_of_group(g)[:kept]] = True
    least = minimum_macs(case.cm, case.unit_group, case.num_groups, blocks)
    assert least == macs_and_marginals(case.cm, keep)[0]
    assert minimum_macs(case.cm, case.unit_group, case.num_groups) == case.min_macs


def test_block_units_count_channels_not_units():
    case = CASES[-1]  # grouped8: a grouped conv ties channels into 2-channel units
    sizes = [int(case.graph.unit_size[case.graph.units_of_group(g)[0]]) for g in range(3)]
    assert sizes == [2, 2, 1]
    assert block_units(case.graph, 4).tolist() == [2, 2, 4]
    assert block_units(case.graph, 3).tolist() == [3, 3, 3]  # lcm(3, 2) = 6 channels
    assert block_units(case.graph, 2).tolist() == [1, 1, 2]


# ---------------------------------------------------------------- the pruner
class MobileNetLike(nn.Module):
    """Stem, an inverted residual (pointwise, depthwise, pointwise, add), a grouped conv."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.dw = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24)
        )
        self.project = nn.Sequential(nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(
            nn.Conv2d(16, 20, 3, stride=2, padding=1, groups=2, bias=False), nn.BatchNorm2d(20)
        )
        self.fc = nn.Linear(20, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        h = torch.relu(self.dw(torch.relu(self.expand(x))))
        x = x + self.project(h)
        x = torch.relu(self.grouped(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


SHAPE = (1, 12, 12)
EXAMPLE = torch.zeros(1, *SHAPE)
PROBE = TemplateData(SHAPE, seed=999).batch(16)[0]
NETS = {
    "cnn": lambda: demo_cnn(num_classes=10, width=6),  # 6, 12, 24, 24 channels
    "resnet": lambda: SmallResNet(12, num_classes=10),  # residual groups of 12 and 24
    "mobilenet": MobileNetLike,  # depthwise in a 24-group, 2-channel units in 16 and 20
}


@dataclass
class Run:
    pruner: TaperPruner
    widths: list[torch.Tensor] = field(default_factory=list)  # group widths after each step
    equivalence: dict[int, float] = field(default_factory=dict)


def run_pruning(net: str, budgets: list[float], steps: int = 12, **cfg: Any) -> Run:
    torch.manual_seed(0)
    model = NETS[net]()
    config = PrunerConfig(
        schedule=ScheduleConfig(kind=ScheduleKind.LINEAR, steps=steps), warmup_steps=3, **cfg
    )
    holder: dict[str, Run] = {}

    def on_snapshot(snap: Snapshot) -> None:
        assert snap.model is not None
        model.eval()
        snap.model.eval()
        with torch.no_grad():
            diff = (model(PROBE) - snap.model(PROBE)).abs().max().item()
        model.train()
        holder["run"].equivalence[snap.target] = diff

    pruner = TaperPruner(model, EXAMPLE, budgets, config=config, on_snapshot=on_snapshot)
    run = holder["run"] = Run(pruner)
    data = TemplateData(SHAPE, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3 + steps + len(budgets) + 5):
        x, y = data.batch(16)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(loss)
        run.widths.append(group_widths(pruner.graph, pruner.keep))
        if pruner.done:
            break
    return run


def allowed(width: int, full: int, n: int) -> bool:
    return width == full or (width % n == 0 and width > 0)


@pytest.mark.parametrize("round_to", [4, 8])
@pytest.mark.parametrize("net", list(NETS))
def test_every_step_and_snapshot_keeps_multiples(net: str, round_to: int):
    run = run_pruning(net, [0.6, 0.35], round_to=round_to)
    p = run.pruner
    assert p.done and list(p.snapshots) == p.budgets
    full = [g.size for g in p.graph.groups]
    for step_widths in run.widths:
        for w, f in zip(step_widths.tolist(), full, strict=True):
            assert allowed(w, f, round_to), (step_widths.tolist(), full)
    assert all(r.macs <= r.budget for r in p.trace if r.phase == "taper")
    assert run.widths[-1].tolist() != full  # something was pruned
    for target, snap in p.snapshots.items():
        assert snap.macs <= target
        assert snap.model is not None and count_macs(snap.model, EXAMPLE) == snap.macs
        widths = group_widths(p.graph, snap.keep).tolist()
        assert all(allowed(w, f, round_to) for w, f in zip(widths, full, strict=True))
        layers = dict(snap.model.named_modules())
        for g, w in zip(p.graph.groups, widths, strict=True):
            root = layers[g.root]
            assert (root.out_channels if isinstance(root, nn.Conv2d) else root.out_features) == w
    assert max(run.equivalence.values()) < 1e-4, run.equivalence


def test_mobilenet_like_net_has_depthwise_and_two_channel_units():
    graph = build_graph(MobileNetLike(), EXAMPLE)
    assert graph.layers["dw.0"].depthwise
    sizes = {
        g.root: (g.size, int(graph.unit_size[graph.units_of_group(g.index)[0]]))
        for g in graph.groups
    }
    assert sizes == {"dw.0": (24, 1), "project.0": (16, 2), "grouped.0": (20, 2)}
    assert block_units(graph, 8).tolist() == [8, 4, 4]


def test_group_narrower_than_a_block_keeps_its_width():
    run = run_pruning("cnn", [0.5], round_to=8)
    assert all(int(w[0]) == 6 for w in run.widths)  # 6 channels < 8: never pruned
    assert {int(w[1]) for w in run.widths} <= {12, 8}


def test_round_to_one_runs_exactly_as_before():
    a = run_pruning("resnet", [0.5, 0.3])
    b = run_pruning("resnet", [0.5, 0.3], round_to=1)
    assert a.pruner.trace == b.pruner.trace
    assert torch.equal(a.pruner.keep, b.pruner.keep)
    assert torch.equal(a.pruner.block_units, torch.ones(len(a.pruner.graph.groups)).long())


# ---------------------------------------------------------------- bad inputs
def has_masks(model: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in model.modules())


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_round_to_must_be_a_positive_whole_number(value):
    with pytest.raises(ValueError, match="round_to"):
        PrunerConfig(round_to=value)
    with pytest.raises(ValueError, match="round_to"):
        check_budgets(demo_cnn(width=4), EXAMPLE, [0.5], round_to=value)


@pytest.mark.parametrize("value", [0, -1])
def test_run_config_says_round_to_in_one_line(value):
    from taperprune.run.config import config_from_mapping

    with pytest.raises(TaperpruneError, match="round_to") as err:
        config_from_mapping({"round_to": value})
    assert "\n" not in str(err.value)
    assert config_from_mapping({"round_to": 8}).method.round_to == 8


def test_round_to_wider_than_every_group_is_refused_before_anything():
    model = demo_cnn(width=4)  # groups of 4, 8, 16, 16 channels
    msg = r"round_to=16 leaves nothing to prune.*'8'.* has 16\); choose round_to below 16"
    with pytest.raises(TaperpruneError, match=msg) as err:
        TaperPruner(model, EXAMPLE, [0.5], config=PrunerConfig(round_to=16))
    assert "\n" not in str(err.value)
    assert not has_masks(model)
    with pytest.raises(TaperpruneError, match=msg):
        check_budgets(model, EXAMPLE, [0.5], round_to=16)
    assert TaperPruner(model, EXAMPLE, [0.95], config=PrunerConfig(round_to=15)).budgets


def test_budget_below_the_rounded_minimum_names_round_to():
    model = demo_cnn(width=4)
    least = TaperPruner(model, EXAMPLE, [0.9], config=PrunerConfig(round_to=8)).min_macs
    model = demo_cnn(width=4)
    assert least > TaperPruner(model, EXAMPLE, [0.9]).min_macs
    low = f"{int(least) - 1},"  # absolute MACs, with a trailing comma
    for call in (
        lambda: TaperPruner(demo_cnn(width=4), EXAMPLE, low, config=PrunerConfig(round_to=8)),
        lambda: check_budgets(demo_cnn(width=4), EXAMPLE, low, round_to=8),
    ):
        with pytest.raises(BudgetError, match=r"least this model can reach with round_to=8"):
            call()
    assert check_budgets(demo_cnn(width=4), EXAMPLE, [math.ceil(least)], round_to=8)


def test_units_of_different_sizes_in_one_group_are_refused():
    graph = build_graph(demo_cnn(width=4), EXAMPLE)
    sizes = graph.unit_size.clone()
    sizes[0] = 2
    odd = dataclasses.replace(graph, unit_size=sizes)
    with pytest.raises(GraphError, match="units of different sizes"):
        block_units(odd, 4)
    assert block_units(odd, 1).tolist() == [1, 1, 1, 1]
