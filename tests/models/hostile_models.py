"""Builders that misbehave, for the tests that check each ends in one clear line."""

from __future__ import annotations

import torch
from torch import nn


class _Pair(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x).mean((2, 3))
        return self.fc(h), h


def tuple_output(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    return _Pair(num_classes)


def raises(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    raise RuntimeError("the builder broke")


class _Strict(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(16 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def forwards_unknown_kwargs(num_classes: int = 10, **kw: object) -> nn.Module:
    """A common user pattern: extra keyword arguments go straight to the class."""
    return _Strict(num_classes, **kw)  # type: ignore[call-arg]
