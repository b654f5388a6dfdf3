"""The one fit loop: non-finite steps never reach the weights, too many in a row stop
training, and every pruned model (snapshot or baseline) gets the same fine-tune protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from taperprune.errors import TaperpruneError
from taperprune.run.data import BatchStream
from taperprune.run.loop import FitLoop, finetune_structure


class _Poisoned(nn.Module):
    """A linear classifier whose loss is NaN on the batches listed in `bad`."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bad, self.calls = bad, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        self.calls += 1
        return out * math.nan if self.calls in self.bad else out


def _stream(n: int = 64) -> BatchStream:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    return BatchStream(data, 8, seed=0)


def test_non_finite_steps_leave_the_weights_alone() -> None:
    model = _Poisoned(bad={2, 3})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = FitLoop(torch.device("cpu"), max_bad_steps=5)
    weights = []
    for _ in loop.steps("t", model, _stream(), opt, 4):
        weights.append(model.fc.weight.detach().clone())
    assert not torch.equal(weights[0], weights[-1])  # good steps train
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])
    assert all(torch.isfinite(w).all() for w in weights)


def test_too_many_bad_steps_in_a_row_stop_training() -> None:
    model = _Poisoned(bad=set(range(1, 100)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = FitLoop(torch.device("cpu"), max_bad_steps=3)
    done = []
    with pytest.raises(TaperpruneError, match="3 consecutive steps"):
        for i, _ in loop.steps("t", model, _stream(), opt, 8):
            done.append(i)
    assert done == [0, 1]


def test_the_step_hook_sees_every_step_and_the_stop() -> None:
    seen: list[tuple[int, bool]] = []
    loop = FitLoop(
        torch.device("cpu"),
        max_bad_steps=2,
        on_step=lambda _label, i, stop: seen.append((i, stop is not None)),
    )
    model = _Poisoned(bad={3, 4})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    list(loop.steps("t", model, _stream(), opt, 5, start=1))
    assert seen == [(1, False), (2, False), (3, False), (4, True)]  # 2 bad in a row: stop


def test_finetune_protocol_order() -> None:
    calls: list[str] = []
    model = nn.Linear(1, 1)
    acc = iter([50.0, 70.0])
    before, after = finetune_structure(
        model,
        10,
        recalibrate=lambda m: calls.append("recalibrate"),
        evaluate=lambda m: calls.append("evaluate") or next(acc),
        fit=lambda m, steps: calls.append(f"fit {steps}"),
    )
    assert calls == ["recalibrate", "evaluate", "fit 10", "recalibrate", "evaluate"]
    assert (before, after) == (50.0, 70.0)


def test_finetune_protocol_without_steps_and_resumed() -> None:
    calls: list[str] = []
    out = finetune_structure(
        nn.Linear(1, 1),
        0,
        recalibrate=lambda m: calls.append("recalibrate"),
        evaluate=lambda m: calls.append("evaluate") or 10.0,
        fit=lambda m, steps: calls.append(f"fit {steps}"),
    )
    assert out == (10.0, 10.0) and calls == ["recalibrate", "evaluate", "fit 0"]
    calls.clear()
    remembered: list[float] = []
    out = finetune_structure(
        nn.Linear(1, 1),
        5,
        recalibrate=lambda m: calls.append("recalibrate"),
        evaluate=lambda m: calls.append("evaluate") or 30.0,
        fit=lambda m, steps: calls.append(f"fit {steps}"),
        acc0=20.0,
        on_acc0=remembered.append,
    )
    assert out == (20.0, 30.0) and calls == ["fit 5", "recalibrate", "evaluate"]
    assert remembered == [20.0]
