"""Shared helpers for the pruning tests: tiny models, their cost models, synthetic data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from taperprune.constraint import group_interactions, minimum_macs
from taperprune.cost import CostModel, build_cost_model
from taperprune.graph import ChannelGraph, build_graph
from taperprune.models import BasicBlock, demo_cnn


class SmallResNet(nn.Module):
    """Stem, an identity-shortcut block and a downsampling block with a 1x1 shortcut."""

    def __init__(self, width: int = 3, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block = BasicBlock(width, width, 1)
        self.block2 = BasicBlock(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.block2(self.block(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SelfResidual(nn.Module):
    """A residual stream read and written by one conv: its group interacts with itself."""

    def __init__(self, width: int = 3, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.mix = nn.Conv2d(width, width, 1)
        self.head = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.mix(x))
        x = torch.relu(self.head(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def depthwise_net(width: int = 3, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    """conv → BN → depthwise conv → BN → pointwise conv → linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def grouped_net(width: int = 4, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    """A grouped (non-depthwise) conv, then flatten → hidden linear → linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=2),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, 5),
        nn.ReLU(),
        nn.Linear(5, num_classes),
    )


@dataclass(frozen=True)
class CostCase:
    name: str
    graph: ChannelGraph
    cm: CostModel
    unit_group: torch.Tensor
    num_groups: int
    interactions: torch.Tensor
    min_macs: float


def cost_case(name: str, model: nn.Module, input_shape: tuple[int, ...] = (1, 8, 8)) -> CostCase:
    graph = build_graph(model, torch.zeros(1, *input_shape))
    cm = build_cost_model(graph)
    n_groups = len(graph.groups)
    return CostCase(
        name,
        graph,
        cm,
        graph.unit_group,
        n_groups,
        group_interactions(cm, graph.unit_group, n_groups),
        minimum_macs(cm, graph.unit_group, n_groups),
    )


def small_cost_cases() -> list[CostCase]:
    """Tiny networks covering plain chains, residual adds, depthwise convs, self-interaction."""
    torch.manual_seed(0)
    return [
        cost_case("demo2", demo_cnn(width=2)),
        cost_case("demo3", demo_cnn(width=3)),
        cost_case("demo4", demo_cnn(width=4), (1, 12, 12)),
        cost_case("resnet", SmallResNet(3)),
        cost_case("depthwise", depthwise_net(3)),
        cost_case("self_residual", SelfResidual(3)),
        cost_case("grouped", grouped_net(4)),
    ]


class TemplateData:
    """A learnable classification task: one random template per class plus noise."""

    def __init__(
        self,
        shape: tuple[int, ...] = (1, 12, 12),
        classes: int = 10,
        noise: float = 0.8,
        seed: int = 0,
    ) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.templates = torch.randn(classes, *shape, generator=self.gen)
        self.classes = classes
        self.noise = noise

    def batch(self, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, self.classes, (n,), generator=self.gen)
        x = self.templates[y] + self.noise * torch.randn(
            n, *self.templates.shape[1:], generator=self.gen
        )
        return x, y

    def batches(self, count: int, n: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.batch(n) for _ in range(count)]
