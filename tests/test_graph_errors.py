"""What the channel graph refuses, fixes in place, or lets the user exclude."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from taperprune.errors import GraphError, ModelError
from taperprune.graph import FIXED, build_graph
from taperprune.masks import ChannelMasks
from taperprune.models import alexnet_bvlc, build_model, demo_cnn
from taperprune.surgery import remove_masked


def test_model_without_conv_or_linear() -> None:
    with pytest.raises(GraphError, match="no Conv or Linear"):
        build_graph(nn.Sequential(nn.ReLU()), torch.zeros(1, 3, 8, 8))


def test_model_with_nothing_prunable() -> None:
    with pytest.raises(GraphError, match="no prunable channel group"):
        build_graph(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.zeros(1, 3, 2, 2))


def test_example_input_of_the_wrong_shape() -> None:
    with pytest.raises(GraphError, match=r"\(1, 3, 28, 28\) does not fit the model"):
        build_graph(demo_cnn(), torch.zeros(1, 3, 28, 28))


def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ModelError, match="demo_cnn.*torchvision"):
        build_model("resnet_nine_thousand")


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn(self.c1(x)))
        x = torch.relu(self.bn(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def test_cross_channel_layer_fixes_its_group_and_keeps_the_rest_exact() -> None:
    model = GroupNormNet().eval()
    graph = build_graph(model, torch.zeros(1, 3, 8, 8))
    assert "c1" in graph.fixed_groups and "mixes channels" in graph.fixed_groups["c1"]
    assert [g.root for g in graph.groups] == ["c2"]
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    keep[:3] = True
    masks = ChannelMasks(model, graph)
    masks.set_keep(keep)
    x = torch.randn(2, 3, 8, 8)
    small = remove_masked(model, graph, keep).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)


def test_lrn_alexnet_keeps_the_lrn_groups_and_stays_exact() -> None:
    model = alexnet_bvlc(num_classes=10, lrn=True).eval()
    x = torch.randn(1, 3, 227, 227)
    graph = build_graph(model, x)
    assert set(graph.fixed_groups) >= {"0.0", "0.4"}
    keep = torch.rand(graph.num_units, generator=torch.Generator().manual_seed(0)) > 0.5
    for gi in range(len(graph.groups)):
        keep[graph.units_of_group(gi)[0]] = True
    ChannelMasks(model, graph).set_keep(keep)
    small = remove_masked(model, graph, keep).eval()
    with torch.no_grad():
        a, b = model(x), small(x)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


class PReLUNet(nn.Module):
    """A conv followed by a per-channel PReLU: tp prunes it, and PReLU(0) = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3)
        self.act = nn.PReLU(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.c1(x)).mean((2, 3)))


def test_per_channel_prelu_is_pruned_exactly() -> None:
    model = PReLUNet().eval()
    with torch.no_grad():
        model.act.weight.uniform_(0.1, 0.5)
    graph = build_graph(model, torch.zeros(1, 3, 6, 6))
    keep = torch.tensor([True, False, True, False, False, True])
    ChannelMasks(model, graph).set_keep(keep)
    small = remove_masked(model, graph, keep).eval()
    assert small.act.weight.shape == (3,)
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-6)


class SelfAttentionPoolNet(nn.Module):
    """A parametrised layer type the graph cannot mask, inside a prunable group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        h, _ = self.attn(h, h, h)
        return self.fc(h.mean(1))


def test_unsupported_layer_is_named_with_the_fix() -> None:
    with pytest.raises(GraphError, match=r"'attn'.*MultiheadAttention.*--exclude 'attn'"):
        build_graph(SelfAttentionPoolNet().eval(), torch.zeros(1, 3, 6, 6))


def test_exclude_pattern_that_matches_nothing() -> None:
    with pytest.raises(GraphError, match="matches no layer"):
        build_graph(demo_cnn(), torch.zeros(1, 1, 28, 28), exclude=["features.*"])


def test_excluded_layer_keeps_all_its_channels() -> None:
    model = demo_cnn().eval()
    graph = build_graph(model, torch.zeros(1, 1, 28, 28), exclude=["4"])
    assert "4" in graph.fixed_groups and "excluded" in graph.fixed_groups["4"]
    assert bool((graph.layers["4"].out_units == FIXED).all())
    assert bool((graph.layers["8"].in_units == FIXED).all())
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    for gi in range(len(graph.groups)):
        keep[graph.units_of_group(gi)[0]] = True
    small = remove_masked(model, graph, keep)
    # The excluded layer is untouched on both sides; the other groups still prune.
    assert small[4].in_channels == 32 and small[4].out_channels == 64
    assert small[0].out_channels == 32 and small[8].out_channels == 1


def test_user_model_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.py"
    f.write_text(
        "from torch import nn\n"
        "def build(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),"
        " nn.Linear(4 * 6 * 6, num_classes))\n"
    )
    model = build_model(f"{f}:build", num_classes=5, in_channels=3)
    assert model[-1].out_features == 5
    graph = build_graph(model, torch.zeros(1, 3, 8, 8))
    assert graph.groups[0].root == "0"


def test_user_model_file_that_fails_to_import(tmp_path: Path) -> None:
    f = tmp_path / "broken.py"
    f.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ModelError, match="importing model file .* failed"):
        build_model(f"{f}:build")
    with pytest.raises(ModelError, match="does not exist"):
        build_model(f"{tmp_path / 'absent.py'}:build")
    ok = tmp_path / "ok.py"
    ok.write_text("x = 1\n")
    with pytest.raises(ModelError, match="no function 'build'"):
        build_model(f"{ok}:build")
