"""Synthetic data (`--data synthetic[:CxHxW:K]`): learnable in seconds, for trying the
pipeline on a model without its data, and for the tests."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ..errors import DataError


def synthetic_sets(
    arg: str | None, seed: int, shape: tuple[int, int, int] | None
) -> tuple[TensorDataset, TensorDataset, int, tuple[int, int, int]]:
    """`synthetic[:CxHxW:K]`: 2048 training and 512 test examples of K noisy class templates
    (shape: the spec's, else `shape`, else 1x28x28); (train, test, classes, shape)."""
    default = "x".join(map(str, shape or (1, 28, 28)))
    shape_s, _, k_s = (arg or f"{default}:10").partition(":")
    shape_s = shape_s or default
    try:
        c, h, w = (int(v) for v in shape_s.lower().split("x"))
        k = int(k_s or 10)
    except ValueError:
        raise DataError(
            f"synthetic spec {arg!r} is not CxHxW:K, e.g. synthetic:3x32x32:10"
        ) from None
    if min(c, h, w) < 1 or k < 1:
        raise DataError(
            f"synthetic spec {arg!r}: channels, height, width and classes must be ≥ 1, "
            "e.g. synthetic:3x32x32:10"
        )
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(k, c, h, w, generator=gen)

    def make(n: int) -> TensorDataset:
        y = torch.randint(0, k, (n,), generator=gen)
        x = templates[y] + 1.5 * torch.randn(n, c, h, w, generator=gen)
        return TensorDataset(x, y)

    return make(2048), make(512), k, (c, h, w)
