"""`finetune`: what a run does to each snapshot, for your own loop — recalibrate BN,
fine-tune at fixed structure with SGD and a cosine learning rate, recalibrate again."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .calibrate import cycle_batches, recalibrate_bn
from .errors import TaperpruneError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def finetune(
    model: nn.Module,
    loader: Iterable[Any],
    steps: int,
    *,
    lr: float = 0.03,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    loss_fn: Loss | None = None,
    bn_batches: int = 50,
    device: torch.device | str | None = None,
    max_bad_steps: int = 20,
) -> nn.Module:
    """Fine-tune a (pruned) model in place for `steps` batches of `loader`; returns it.

    The defaults are the `taperprune prune` run's: SGD (momentum 0.9, weight decay 5e-4),
    learning rate 0.03 falling to 0 on a cosine, BN statistics re-estimated on `bn_batches`
    batches before and after. A step whose loss is not finite is skipped (the weights do
    not move); `max_bad_steps` of them in a row stop with a TaperpruneError.
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"finetune needs steps ≥ 0 and lr > 0, got {steps}, {lr}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    recalibrate_bn(model, loader, device, bn_batches)
    if steps == 0:
        return model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    was, bad = model.training, 0
    model.train()
    for x, y in cycle_batches(loader, steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device)), y.to(device))
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
            bad = 0
        else:
            bad += 1
            if bad >= max_bad_steps:
                raise TaperpruneError(
                    f"finetune: {bad} non-finite losses in a row; lower lr (now {lr})"
                )
        sched.step()
    model.train(was)
    recalibrate_bn(model, loader, device, bn_batches)
    return model
