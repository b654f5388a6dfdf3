"""Two more built-in nets for small (32x32, or 28x28) inputs, so comparisons cover the
families users prune: a depthwise MobileNet-V2-style net and a plain VGG-style net."""

from __future__ import annotations

import torch
from torch import nn


class InvertedResidual(nn.Module):
    """MobileNet-V2's block: 1x1 expand → 3x3 depthwise → 1x1 project (+ identity)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def mobilenet_small(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    """A MobileNet-V2-style net for 32x32 inputs: depthwise blocks, expansion 4, residual
    streams of 16-24-32-64 channels (× width/16); 8.4 M MACs at width 16."""
    w = [width * k // 16 for k in (16, 24, 32, 64)]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 2 * w[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(2 * w[0]),
        nn.ReLU6(inplace=True),
        InvertedResidual(2 * w[0], w[0], 1, 1),
    ]
    cin = w[0]
    for cout, stride in ((w[1], 2), (w[1], 1), (w[2], 2), (w[2], 1), (w[3], 2), (w[3], 1)):
        layers.append(InvertedResidual(cin, cout, stride, 4))
        cin = cout
    layers += [
        nn.Conv2d(cin, 4 * w[3], 1, bias=False),
        nn.BatchNorm2d(4 * w[3]),
        nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w[3], num_classes),
    ]
    return nn.Sequential(*layers)


def vgg_small(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> nn.Module:
    """A VGG-11-BN-style net at half width for 32x32 inputs: eight 3x3 conv + BN layers,
    32-64-128-128-256-256-256-256 channels (× width/32); 38.6 M MACs at width 32.

    Its five max-pools round up (`ceil_mode`), so 28x28 inputs (Fashion-MNIST, the bench's
    data) end at 1x1 as 32x32 ones do; a 32x32 input pools exactly as VGG-11's."""
    plan = [1, 0, 2, 0, 4, 4, 0, 8, 8, 0, 8, 8, 0]  # channels ÷ width; 0: a 2x2 max-pool
    layers: list[nn.Module] = []
    cin = in_channels
    for item in plan:
        if item == 0:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        cout = width * item
        layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
