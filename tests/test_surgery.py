"""Surgery checks: inexact surgery is refused naming its groups, the copy computes the
masked function, and the model checked is left exactly as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from _pruning_helpers import SmallResNet
from taperprune import surgery
from taperprune.errors import GraphError
from taperprune.graph import ChannelGraph, build_graph
from taperprune.masks import ChannelMasks, _MaskedForward
from taperprune.surgery import check_surgery, remove_masked

SHAPE = (1, 8, 8)


def conv_bn(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))


class ConcatOfInput(nn.Module):
    """cat([x, branch(x)]) → head: torch-pruning maps head's inputs to the wrong channels, so
    the pruned model silently computes something else (the group of 'branch.0')."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = conv_bn(1, 2)
        self.head = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.head(torch.cat([x, self.branch(x)], 1)))
        return self.fc(y.mean((2, 3)))


class AddOnInput(nn.Module):
    """x + conv(x) on the network input, then a sound conv-BN tail: only the group of 'conv'
    (tied to the input channels) is broken, and the pruned model cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.tail = conv_bn(2, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.tail(x + self.conv(x)))
        return self.fc(y.mean((2, 3)))


def widths_net() -> nn.Module:
    """Groups of 1, 2 and 3 units, in that order."""
    return nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine, so that no BN is the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def graph_of(model: nn.Module, shape: tuple[int, ...] = SHAPE) -> ChannelGraph:
    return build_graph(model, torch.zeros(1, *shape))


def some_keep(graph: ChannelGraph, seed: int) -> torch.Tensor:
    """About half of every group's units, at least one kept per group."""
    keep = torch.rand(graph.num_units, generator=torch.Generator().manual_seed(seed)) > 0.5
    for gi in range(len(graph.groups)):
        keep[graph.units_of_group(gi)[seed % 2]] = True
    return keep


# ----------------------------------------------------------------------------- refusals


def test_silently_wrong_surgery_is_refused_naming_its_group() -> None:
    torch.manual_seed(0)
    model = randomised(ConcatOfInput()).eval()
    graph = graph_of(model)
    assert sorted(g.root for g in graph.groups) == ["branch.0", "head"]
    with pytest.raises(GraphError) as info:
        check_surgery(model, graph)
    msg = str(info.value)
    assert msg.startswith("removing the masked channels changes what the model computes")
    assert msg.endswith(
        "Groups with inexact surgery (by their root layer): 'branch.0'; keep them whole "
        "with --exclude branch.0"
    )


def test_surgery_that_cannot_run_is_refused_naming_only_the_bad_group() -> None:
    torch.manual_seed(0)
    model = randomised(AddOnInput()).eval()
    graph = graph_of(model, (2, 8, 8))
    assert sorted(g.root for g in graph.groups) == ["conv", "tail.0"]
    with pytest.raises(GraphError, match=r"^the pruned model cannot run") as info:
        check_surgery(model, graph)
    assert str(info.value).endswith(
        "Groups with inexact surgery (by their root layer): 'conv'; keep them whole "
        "with --exclude conv"
    )


def test_sound_model_passes_with_one_trial_removing_first_and_last_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = widths_net().eval()
    graph = graph_of(model)
    assert [len(graph.units_of_group(g)) for g in range(len(graph.groups))] == [1, 2, 3]
    keeps: list[torch.Tensor] = []
    real = surgery.remove_masked

    def spy(m: nn.Module, g: ChannelGraph, keep: torch.Tensor, **kw: Any) -> nn.Module:
        keeps.append(keep.clone())
        return real(m, g, keep, **kw)

    monkeypatch.setattr(surgery, "remove_masked", spy)
    check_surgery(model, graph)
    # One removal: none of a 1-unit group, one unit of a 2-unit group, first and last of 3.
    assert [k.tolist() for k in keeps] == [[True, False, True, False, True, False]]


def test_wrong_copy_is_caught_by_the_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is compared with the masked model, not with itself."""
    torch.manual_seed(0)
    model = randomised(SmallResNet(3)).eval()
    graph = graph_of(model)
    real = surgery.prune_channels

    def off_by_a_bit(m: nn.Module, g: ChannelGraph, keep: torch.Tensor) -> nn.Module:
        small = real(m, g, keep)
        with torch.no_grad():
            small.fc.bias.add_(0.5)
        return small

    monkeypatch.setattr(surgery, "prune_channels", off_by_a_bit)
    with pytest.raises(GraphError, match="changes what the model computes"):
        remove_masked(model, graph, some_keep(graph, 0))
    with pytest.raises(GraphError, match="Groups with inexact surgery"):
        check_surgery(model, graph)


# ----------------------------------------------------------------------------- the original


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about `model` the checks must leave alone, by value and by identity."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "params": {n: p for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "grad_values": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "training": {n: m.training for n, m in model.named_modules()},
        "forwards": {n: m.__dict__.get("forward") for n, m in model.named_modules()},
        "hooks": {
            n: (list(m._forward_hooks.items()), list(m._forward_pre_hooks.items()))
            for n, m in model.named_modules()
        },
        "modules": {n: m for n, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():  # bit for bit: weights, BN statistics and counters
        w = after["state"][k]
        assert w.dtype == v.dtype and w.shape == v.shape and torch.equal(w, v), k
    for key in ("params", "grads", "forwards", "modules"):  # the very same objects
        assert after[key].keys() == before[key].keys(), key
        for n, obj in before[key].items():
            assert after[key][n] is obj, (key, n)
    for n, g in before["grad_values"].items():
        assert (g is None) == (after["grad_values"][n] is None), n
        assert g is None or torch.equal(g, after["grad_values"][n]), n
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]


class OwnForward:
    """A forward set on a module instance by its user (e.g. a wrapper for logging)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.module).forward(self.module, x)


def busy_model() -> tuple[nn.Module, ChannelGraph]:
    """A residual net in training mode with one BN frozen in eval, gradients, hooks and a
    forward of its own on one module: what a model inside a training loop may carry."""
    torch.manual_seed(0)
    model = randomised(SmallResNet(3))
    graph = graph_of(model)
    model.train()
    model.block.bn1.eval()
    model(torch.randn(4, *SHAPE)).square().sum().backward()
    calls: list[str] = []
    model.block.conv1.register_forward_hook(lambda m, i, o: calls.append("hook"))
    model.register_forward_pre_hook(lambda m, i: calls.append("pre"))
    model.bn1.forward = OwnForward(model.bn1)  # set on the instance, on a mask site
    return model, graph


def test_check_surgery_leaves_the_model_exactly_as_it_was() -> None:
    model, graph = busy_model()
    before = snapshot(model)
    check_surgery(model, graph)
    assert_unchanged(model, before)


def test_remove_masked_leaves_the_model_exactly_as_it_was() -> None:
    model, graph = busy_model()
    before = snapshot(model)
    small = remove_masked(model, graph, some_keep(graph, 1))
    assert_unchanged(model, before)
    assert small is not model
    assert not any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in small.modules())
    assert all(p.grad is None for p in small.parameters())


def test_the_original_is_unchanged_even_when_the_check_fails() -> None:
    torch.manual_seed(0)
    model = randomised(ConcatOfInput()).train()
    graph = graph_of(model)
    before = snapshot(model)
    with pytest.raises(GraphError):
        check_surgery(model, graph)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- a pruner's masks


def test_copy_computes_the_requested_masks_not_the_installed_ones() -> None:
    """A pruner's masks on the model are set aside (for the copy and the comparison), kept
    as they are, and still in force afterwards."""
    torch.manual_seed(0)
    model = randomised(SmallResNet(3)).eval()
    graph = graph_of(model)
    installed, wanted = some_keep(graph, 0), some_keep(graph, 1)
    assert not torch.equal(installed, wanted)
    masks = ChannelMasks(model, graph)
    masks.set_keep(installed)
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        masked_before = model(x)
    before = snapshot(model)

    small = remove_masked(model, graph, wanted).eval()  # verified against `wanted`

    assert_unchanged(model, before)
    assert torch.equal(masks.keep, installed)
    with torch.no_grad():
        assert torch.equal(model(x), masked_before)  # the pruner's masks still in force
        masks.set_keep(wanted)
        want, got = model(x), small(x)
    assert got.shape == want.shape
    assert (want - got).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert not any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in small.modules())
    masks.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_check_surgery_with_a_pruners_masks_installed() -> None:
    torch.manual_seed(0)
    model = randomised(SmallResNet(3)).train()
    graph = graph_of(model)
    masks = ChannelMasks(model, graph)
    masks.set_keep(some_keep(graph, 0))
    before = snapshot(model)
    check_surgery(model, graph)
    assert_unchanged(model, before)
    masks.remove()
