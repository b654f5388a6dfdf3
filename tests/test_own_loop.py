"""Your own loop: snapshots found by the budget as given, `save` → `load` round trips (with
exclusions), `finetune` improves a pruned model and is deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import taperprune
from taperprune import TaperPruner
from taperprune.errors import TaperpruneError
from taperprune.models import resnet20

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 256, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 3, 16, 16, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = templates[y] + 0.5 * torch.randn(n, 3, 16, 16, generator=gen)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def _pruned(exclude: tuple[str, ...] = ()) -> tuple[nn.Module, TaperPruner]:
    torch.manual_seed(0)
    model = resnet20(num_classes=4)
    pruner = TaperPruner(
        model,
        torch.zeros(1, 3, 16, 16),
        [0.5, 0.25],
        config=taperprune.PrunerConfig(warmup_steps=3),
        steps=12,
        exclude=exclude,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = _data()
    while not pruner.done:
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            pruner.step(loss)
            opt.zero_grad()
            if pruner.done:
                break
    return model, pruner


def test_snapshots_are_found_by_the_budget_as_given() -> None:
    _, pruner = _pruned()
    half = pruner.snapshots[pruner.budgets[0]]
    assert pruner.snapshots[0.5] is half and pruner.snapshots["0.5"] is half
    assert 0.25 in pruner.snapshots and 0.3 not in pruner.snapshots
    assert "nonsense" not in pruner.snapshots and pruner.snapshots.get(0.3) is None
    with pytest.raises(KeyError, match="no snapshot at budget 0.3"):
        pruner.snapshots[0.3]
    assert list(pruner.snapshots) == pruner.budgets  # keys stay MACs


@pytest.mark.parametrize("exclude", [(), ("layers.2.*",)])
def test_save_then_load_gives_the_same_function(exclude: tuple[str, ...], tmp_path: Path) -> None:
    _, pruner = _pruned(exclude)
    small = pruner.export(0.25).eval()
    out = taperprune.save(small, tmp_path / "q", pruner=pruner)
    again = taperprune.load(out, model=resnet20(num_classes=4)).eval()
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(small(x), again(x))
    # A built-in name makes the directory self-contained.
    named = taperprune.save(
        small, tmp_path / "n", pruner=pruner, model_name="resnet20", model_kwargs={"num_classes": 4}
    )
    assert torch.equal(small(x), taperprune.load(named).eval()(x))


def test_save_refuses_a_module_that_is_not_the_plans(tmp_path: Path) -> None:
    model, pruner = _pruned()
    with pytest.raises(TaperpruneError, match="physically pruned model"):
        taperprune.save(model, tmp_path / "a", pruner=pruner)
    with pytest.raises(TaperpruneError, match=r"layer '.*' of the module has"):
        taperprune.save(pruner.export(0.5), tmp_path / "b", pruner=pruner, budget=0.25)
    assert not (tmp_path / "b").exists()


def test_finetune_recovers_accuracy_and_is_deterministic() -> None:
    _, pruner = _pruned()
    data = _data(seed=1)

    def accuracy(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return float(sum((m(x).argmax(1) == y).sum() for x, y in data)) / 256

    runs = []
    for _ in range(2):
        small = pruner.export(0.25)
        state = {k: v.clone() for k, v in small.state_dict().items()}
        torch.manual_seed(0)
        before = accuracy(small)
        taperprune.finetune(small, data, steps=40, lr=0.05, bn_batches=4)
        runs.append((before, accuracy(small), small.state_dict()))
        small.load_state_dict(state)
    (before, after, w1), (_, _, w2) = runs
    assert after > before
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(ValueError, match="steps ≥ 0 and lr > 0"):
        taperprune.finetune(small, data, steps=-1)
