"""The parameter model P(m) equals the parameters of the physically pruned model, for any
kept set: convs with and without bias, BatchNorm, depthwise and grouped convs, flatten →
linear, residual streams, and parameters outside any prunable layer."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from taperprune.cost import count_params, macs
from taperprune.graph import ChannelGraph, build_graph
from taperprune.models import demo_cnn, resnet20
from taperprune.param_cost import build_param_model
from taperprune.surgery import remove_masked

pytestmark = pytest.mark.usefixtures("one_thread")


class _Mixed(nn.Module):
    """Biased convs, a grouped conv, a PReLU-free head and a parameter outside any layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)  # bias, no BN
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise, bias
        self.head = nn.Linear(8 * 4 * 4, 5)
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = torch.relu(self.bn(self.b(x)))
        x = torch.relu(self.c(x))
        return self.head(x.flatten(1)) * self.temperature


NETS = {
    "demo_cnn": (lambda: demo_cnn(), (1, 28, 28)),
    "resnet20": (lambda: resnet20(), (3, 16, 16)),
    "mixed": (_Mixed, (3, 4, 4)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),
}
_BUILT: dict[str, tuple[nn.Module, ChannelGraph]] = {}


def _net(name: str) -> tuple[nn.Module, ChannelGraph]:
    if name not in _BUILT:
        torch.manual_seed(0)
        build, shape = NETS[name]
        model = build()
        _BUILT[name] = (model, build_graph(model, torch.zeros((1, *shape))))
    return _BUILT[name]


@pytest.mark.parametrize("name", list(NETS))
def test_full_width_counts_every_parameter(name: str) -> None:
    model, graph = _net(name)
    pm = build_param_model(graph, model)
    assert pm.full_macs == count_params(model)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(list(NETS)), seed=st.integers(0, 2**31 - 1), p=st.floats(0.1, 0.9))
def test_masked_count_equals_the_pruned_models(name: str, seed: int, p: float) -> None:
    model, graph = _net(name)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(graph.num_units, generator=gen) < p
    for g in range(len(graph.groups)):  # every group keeps a unit
        keep[graph.units_of_group(g)[0]] = True
    small = remove_masked(model, graph, keep)
    assert float(macs(build_param_model(graph, model), keep)) == count_params(small)


def _train_to_done(model: nn.Module, pruner: object, shape: tuple[int, ...]) -> list[float]:
    """Drive `pruner` with SGD steps on random data; the budget and P(m) after each step."""
    from taperprune import TaperPruner

    assert isinstance(pruner, TaperPruner)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    seen = []
    while not pruner.done:
        x = torch.randn((16, *shape), generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        rec = pruner.step(loss)
        opt.zero_grad()
        assert rec.macs <= rec.budget  # the parameter budget holds at every step
        seen.append(rec.macs)
    return seen


def test_parameter_budgets_are_met_exactly_from_below() -> None:
    from taperprune import PrunerConfig, TaperPruner

    torch.manual_seed(0)
    model = resnet20()
    shape = (3, 16, 16)
    full = count_params(model)
    pruner = TaperPruner(
        model,
        torch.zeros((1, *shape)),
        ["0.5params", "60Kparams"],
        config=PrunerConfig(warmup_steps=2),
        steps=20,
    )
    assert pruner.unit == "params" and pruner.full_macs == full
    assert pruner.budgets == [round(0.5 * full), 60_000]
    _train_to_done(model, pruner, shape)
    for target in pruner.budgets:
        snap = pruner.snapshots[target]
        assert count_params(snap.model) == snap.macs <= target
        # Within one channel's worth of parameters of the budget (the solve stops there).
        assert target - snap.macs < 0.01 * full
    assert pruner.snapshots["0.5params"] is pruner.snapshots[pruner.budgets[0]]


def test_a_list_mixing_macs_and_parameters_is_refused() -> None:
    from taperprune import TaperPruner
    from taperprune.errors import BudgetError

    model = demo_cnn()
    with pytest.raises(BudgetError, match="mix MACs and parameters"):
        TaperPruner(model, torch.zeros(1, 1, 28, 28), ["0.5", "0.2params"])
    with pytest.raises(BudgetError, match=r"not below the model's 241,898 params"):
        TaperPruner(model, torch.zeros(1, 1, 28, 28), ["300Kparams"])
