"""The one training loop. The pipeline's phases and the benchmark's baselines both train
through `FitLoop`, so AMP, skipped non-finite steps, DDP averaging and step counting are
the same for every method by construction."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distill import distillation_loss
from ..errors import TaperpruneError
from ..pruner import StepRecord, TaperPruner
from . import distributed as ddp
from .config import RunConfig
from .data import BatchStream

# Called after every step with (label, step index, the error that stops training or None).
StepHook = Callable[[str, int, TaperpruneError | None], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy takes 32-bit seeds; the config allows up to 2**63
    torch.manual_seed(seed % 2**64)


def make_optimizer(cfg: RunConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    """Top-1 accuracy in %."""
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x.to(device))
            correct += int((out.argmax(1).cpu() == y).sum())
            total += len(y)
    model.train(was)
    return 100.0 * correct / max(total, 1)


def _grads_finite(model: nn.Module) -> bool:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


@dataclass
class FitLoop:
    """Training steps with the run's AMP, DDP and non-finite-step rules."""

    device: torch.device
    amp: str | None = None  # None | "bf16" | "fp16"
    max_bad_steps: int = 20
    procs: ddp.Procs = ddp.SINGLE
    on_step: StepHook | None = None  # counts, checkpoints, interrupts (the pipeline)
    distill: float = 0.0  # weight of the teacher's soft targets where a teacher is given
    temperature: float = 4.0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def steps(
        self,
        label: str,
        model: nn.Module,
        stream: BatchStream,
        opt: torch.optim.Optimizer,
        total: int,
        *,
        start: int = 0,
        sched: torch.optim.lr_scheduler.LRScheduler | None = None,
        pruner: TaperPruner | None = None,
        after_backward: Callable[[nn.Module], None] | None = None,
        teacher: nn.Module | None = None,
    ) -> Iterator[tuple[int, StepRecord | None]]:
        """Train `model` from step `start` to `total`; yields (index, pruner record) after each.

        A step whose loss or gradient is not finite changes neither the weights nor the
        scores; `max_bad_steps` of them in a row stop training. With a `teacher` (and
        `distill` > 0) the loss is `distillation_loss` against its outputs.
        """
        device = self.device
        net = ddp.wrap(self.procs, model, device)
        scaler = torch.amp.GradScaler(enabled=self.amp == "fp16" and device.type == "cuda")
        teacher = teacher if self.distill > 0 else None
        bad = 0
        model.train()
        for i, (x, y) in enumerate(stream.batches(total - start), start=start):
            x, y = x.to(device), y.to(device)
            with self.autocast():
                logits = net(x)
                if teacher is None:
                    loss = F.cross_entropy(logits, y)
                else:
                    with torch.no_grad():
                        soft = teacher(x)
                    loss = distillation_loss(logits, soft, y, self.distill, self.temperature)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if after_backward is not None:
                after_backward(model)
            loss_v = ddp.mean(self.procs, loss.detach().float().reshape(1).clone())
            finite = bool(torch.isfinite(loss_v).all()) and (
                scaler.is_enabled() or _grads_finite(model)
            )
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0  # the one backward used
            if finite:
                scaler.step(opt)
                scaler.update()
            if sched is not None:
                sched.step()
            rec, stop = None, None
            if pruner is not None:
                if pruner.masks.grad is not None:  # identical scores on every rank
                    ddp.mean(self.procs, pruner.masks.grad)
                if scaler.is_enabled():  # the scores must not see the loss scale
                    pruner.masks.scale_grad(1.0 / scale)
                try:  # the pruner counts its own bad steps
                    rec = pruner.step(loss_v if finite else torch.tensor(math.nan))
                except TaperpruneError as exc:
                    stop = exc
            else:
                bad = 0 if finite else bad + 1
                if bad >= self.max_bad_steps:
                    stop = TaperpruneError(
                        f"{bad} consecutive steps had a non-finite loss or gradient"
                    )
            if self.on_step is not None:
                self.on_step(label, i, stop)
            elif stop is not None:
                raise stop
            yield i, rec

    def fit(
        self,
        model: nn.Module,
        stream: BatchStream,
        opt: torch.optim.Optimizer,
        steps: int,
        *,
        sched: torch.optim.lr_scheduler.LRScheduler | None = None,
        after_backward: Callable[[nn.Module], None] | None = None,
        label: str = "train",
        teacher: nn.Module | None = None,
    ) -> None:
        """`steps` plain training steps (no pruner)."""
        for _ in self.steps(
            label,
            model,
            stream,
            opt,
            steps,
            sched=sched,
            after_backward=after_backward,
            teacher=teacher,
        ):
            pass


def finetune_structure(
    model: nn.Module,
    steps: int,
    *,
    recalibrate: Callable[[nn.Module], None],
    evaluate: Callable[[nn.Module], float],
    fit: Callable[[nn.Module, int], None],
    acc0: float | None = None,
    on_acc0: Callable[[float], None] | None = None,
) -> tuple[float, float]:
    """The protocol every pruned model gets, taperprune's snapshots and baselines alike:
    recalibrate BN, evaluate, fine-tune at fixed structure, recalibrate, evaluate again.

    `acc0` given (a resumed fine-tune) skips the first recalibration and evaluation.
    Returns (top-1 before, top-1 after the fine-tune).
    """
    if acc0 is None:
        recalibrate(model)
        acc0 = evaluate(model)
    if on_acc0 is not None:
        on_acc0(acc0)
    fit(model, steps)
    if steps <= 0:
        return acc0, acc0
    # A short fine-tune moves the weights faster than the running statistics follow.
    recalibrate(model)
    return acc0, evaluate(model)
