"""Model files the reliability tests load with `--model tests/models/user_models.py:NAME`."""

from __future__ import annotations

import os

import torch
from torch import nn


def plain_cnn(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    """No BatchNorm: a DDP run then computes exactly what one process computes."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, num_classes),
    )


class NanAfter(nn.Module):
    """Turns the training forward passes numbered in $TAPERPRUNE_TEST_NAN_STEPS into NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        spec = os.environ.get("TAPERPRUNE_TEST_NAN_STEPS", "")
        self.bad = {int(s) for s in spec.split(",") if s.strip()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls in self.bad:
                return x * float("nan")
        return x


def nan_cnn(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    net = plain_cnn(num_classes, in_channels)
    return nn.Sequential(*net, NanAfter())


def linear_only(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    """One linear layer: its outputs are the model's outputs, so nothing can be pruned."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16 * 16, num_classes))


def unsupported_layer(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    """A transposed conv inside a prunable group: taperprune cannot count or mask it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ConvTranspose2d(8, 8, 2, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
