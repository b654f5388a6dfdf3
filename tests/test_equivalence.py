"""The invariants of the foundation: masked ≡ pruned, analytic MACs ≡ independent counters."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from taperprune.cost import build_cost_model, count_macs, layer_macs, macs, macs_and_marginals
from taperprune.graph import FIXED, build_graph
from taperprune.masks import ChannelMasks, _MaskedForward
from taperprune.models import alexnet_bvlc, demo_cnn, resnet20
from taperprune.small_nets import mobilenet_small, vgg_small
from taperprune.surgery import remove_masked


class ResidualConcatNet(nn.Module):
    """A residual add, a channel concat, a conv without BN and a flatten→linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(8)
        self.b1 = nn.Conv2d(8, 6, 1)  # no BN: masked on its weight
        self.b2 = nn.Conv2d(8, 5, 3, padding=1, bias=False)
        self.bnb2 = nn.BatchNorm2d(5)
        self.mix = nn.Conv2d(11, 12, 3, stride=2, padding=1, bias=False)
        self.bnm = nn.BatchNorm2d(12)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bna(self.a(x)))
        y = torch.cat([torch.relu(self.b1(x)), torch.relu(self.bnb2(self.b2(x)))], 1)
        y = torch.relu(self.bnm(self.mix(y)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(y, 1))))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64, random BN statistics and affine, so that BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.5)
    return model.eval()


def random_keep(graph, seed: int = 0, p: float = 0.5) -> torch.Tensor:
    """About half of each group's units removed, at least one kept."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(graph.num_units, generator=g) > p
    for gi in range(len(graph.groups)):
        units = graph.units_of_group(gi)
        if not bool(keep[units].any()):
            keep[units[torch.randint(len(units), (1,), generator=g)]] = True
    return keep


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of conv and matmul ops by torch's own FlopCounterMode (flops / 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    counts = counter.get_total_flops()
    return counts // 2 // x.shape[0]


CASES = {
    "demo_cnn": (lambda: demo_cnn(), (1, 28, 28)),
    "resnet20": (lambda: resnet20(), (3, 32, 32)),
    "mobilenet_small": (lambda: mobilenet_small(), (3, 32, 32)),
    "vgg_small": (lambda: vgg_small(), (3, 32, 32)),
    "vgg_small_28_ceil_pools": (lambda: vgg_small(in_channels=1), (1, 28, 28)),
    "residual_concat": (ResidualConcatNet, (3, 8, 8)),
    "alexnet_bvlc_grouped": (lambda: alexnet_bvlc(num_classes=10), (3, 227, 227)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (3, 64, 64)),
    "mobilenet_v2_depthwise": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10),
        (3, 64, 64),
    ),
    "densenet121_concat": (lambda: torchvision.models.densenet121(num_classes=10), (3, 64, 64)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pruned_equals_masked_and_macs_match(name: str) -> None:
    build, shape = CASES[name]
    torch.manual_seed(0)
    model = randomise(build())
    x = torch.randn(2, *shape, dtype=torch.float64)
    graph = build_graph(model, x[:1])
    cm = build_cost_model(graph)
    # Unmasked: analytic = hook counter = torch's FlopCounterMode.
    assert cm.full_macs == count_macs(model, x[:1]) == flop_counter_macs(model, x[:1])
    keep = random_keep(graph)
    masks = ChannelMasks(model, graph)
    masks.set_keep(keep)
    with torch.no_grad():
        masked_out = model(x)
    small = remove_masked(model, graph, keep).eval()
    with torch.no_grad():
        pruned_out = small(x)
    scale = masked_out.abs().max().item()
    assert (masked_out - pruned_out).abs().max().item() <= 1e-4 * scale
    expected = round(float(macs(cm, keep)))
    assert count_macs(small, x[:1]) == expected == flop_counter_macs(small, x[:1])
    assert expected < cm.full_macs
    assert sum(layer_macs(cm, keep).values()) == expected
    # The pruned copy is an ordinary module; the original is untouched and still masked.
    assert not any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in small.modules())
    assert any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in model.modules())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    masks.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize(
    "name", ["demo_cnn", "residual_concat", "mobilenet_v2_depthwise", "alexnet_bvlc_grouped"]
)
def test_marginal_costs_are_exact_removal_costs(name: str) -> None:
    build, shape = CASES[name]
    model = build()
    graph = build_graph(model, torch.zeros(1, *shape))
    cm = build_cost_model(graph)
    keep = random_keep(graph, seed=1, p=0.3)
    total, d = macs_and_marginals(cm, keep)
    assert total == float(macs(cm, keep))
    assert bool((d[~keep] == 0).all())
    live = torch.nonzero(keep).flatten()
    sample = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(0))[:40]]
    for u in sample.tolist():
        without = keep.clone()
        without[u] = False
        assert d[u].item() == total - float(macs(cm, without)), u


@pytest.mark.parametrize(
    ("build", "shape", "expected"),
    [
        (lambda: torchvision.models.vgg16(), (3, 224, 224), 15_470_264_320),
        (lambda: torchvision.models.alexnet(), (3, 224, 224), 714_188_480),
        (lambda: alexnet_bvlc(), (3, 227, 227), 724_406_816),
    ],
    ids=["vgg16", "alexnet", "alexnet_bvlc"],
)
def test_mac_anchors(build, shape, expected: int) -> None:
    model = build()
    x = torch.zeros(1, *shape)
    assert count_macs(model, x) == expected
    assert build_cost_model(build_graph(model, x)).full_macs == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_analytic_macs_equal_flop_counter_at_224(name: str) -> None:
    model = torchvision.models.get_model(name)
    x = torch.zeros(1, 3, 224, 224)
    analytic = build_cost_model(build_graph(model, x)).full_macs
    assert analytic == flop_counter_macs(model, x)


def test_grouped_conv_channels_are_tied_in_units() -> None:
    graph = build_graph(alexnet_bvlc(), torch.zeros(1, 3, 227, 227))
    conv1 = graph.groups[0]
    assert conv1.root == "0.0" and conv1.size == 96
    sizes = graph.unit_size[graph.units_of_group(0)]
    assert bool((sizes == 2).all())  # feeds conv2 (groups=2): position c and c+48 together
    units = conv1.channel_units
    assert bool((units[:48] == units[48:]).all())


def test_mask_gradients_are_read_after_backward() -> None:
    torch.manual_seed(0)
    model = resnet20()
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    masks = ChannelMasks(model, graph)
    model.train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = model.bn1.running_mean.clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grad = masks.grad
    assert grad is not None and grad.shape == (graph.num_units,)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    assert model.conv1.weight.grad is not None
    assert model.conv1.weight.grad.shape == model.conv1.weight.shape
    assert not torch.equal(before, model.bn1.running_mean)  # BN still trains
    g0 = grad.clone()
    masks.scale_grad(0.5)  # how the training loop undoes AMP's loss scale
    assert torch.equal(masks.grad, g0 * 0.5)
    masks.zero_grad()
    assert masks.grad is None


def test_input_and_output_channels_are_never_prunable() -> None:
    model = demo_cnn()
    graph = build_graph(model, torch.zeros(1, 1, 28, 28))
    assert bool((graph.layers["0"].in_units == FIXED).all())
    assert bool((graph.layers["16"].out_units == FIXED).all())
    assert bool((graph.layers["0"].out_units != FIXED).all())
