"""Distillation from the unpruned model: the loss is Hinton's mix (weight 0 is plain
cross-entropy), and a distilling run is deterministic for a seed, differs from one that
does not distil, and resumes to the same end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _tiny_run import FAST_RUN
from taperprune.distill import distillation_loss, frozen_teacher
from taperprune.errors import TaperpruneError
from taperprune.models import demo_cnn
from taperprune.run.config import RunConfig, config_from_mapping
from taperprune.run.pipeline import run_prune


def test_distillation_loss_is_hintons_mix() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    assert torch.equal(distillation_loss(s, t, y, 0.0, 4.0), F.cross_entropy(s, y))
    T, w = 3.0, 0.7
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    want = (1 - w) * F.cross_entropy(s, y) + w * T * T * kl
    assert distillation_loss(s, t, y, w, T).item() == pytest.approx(want.item(), rel=1e-6)
    # A student that matches the teacher pays only the hard part.
    assert distillation_loss(t, t, y, w, T).item() == pytest.approx(
        (1 - w) * F.cross_entropy(t, y).item(), rel=1e-6
    )


def test_frozen_teacher_is_a_copy_without_gradients() -> None:
    model = demo_cnn().train()
    teacher = frozen_teacher(model)
    assert not teacher.training and model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())


def _run(out: Path, **extra: object) -> dict:
    cfg = RunConfig(**{**FAST_RUN, "out": str(out), **extra})
    result = run_prune(cfg)
    return {s.label: (s.acc_at_snapshot, s.acc_finetuned, s.macs) for s in result.snapshots}


def test_a_distilling_run_is_deterministic_and_differs_from_plain(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", distill=0.5)
    b = _run(tmp_path / "b", distill=0.5)
    plain = _run(tmp_path / "plain")
    assert a == b
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert math.isfinite(summary["base_acc"])
    # The teacher changes what the taper and the fine-tunes see.
    trace_a = (tmp_path / "a" / "trace.csv").read_text()
    trace_plain = (tmp_path / "plain" / "trace.csv").read_text()
    assert trace_a != trace_plain
    assert set(a) == set(plain)


@pytest.mark.parametrize(("key", "value"), [("distill", 1.5), ("distill_temperature", 0)])
def test_bad_distillation_settings_fail_in_the_config(key: str, value: float) -> None:
    with pytest.raises(TaperpruneError, match=key):
        config_from_mapping({key: value})


@pytest.mark.parametrize("phase", ["prune", "fine-tune"])
def test_an_interrupted_distilling_run_resumes_to_the_same_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """Interrupted in the taper or a fine-tune (the teacher is read back from base/)."""
    import signal

    from taperprune.run.pipeline import resume_run
    from taperprune.run.trainer import Trainer

    whole = _run(tmp_path / "whole", distill=0.5)
    after = Trainer._after_step

    def interrupt(self: Trainer, label: str, i: int, stop: TaperpruneError | None) -> None:
        if label.startswith(phase) and i == 7:
            self.signal = signal.SIGINT
        after(self, label, i, stop)

    monkeypatch.setattr(Trainer, "_after_step", interrupt)
    out = tmp_path / "cut"
    with pytest.raises(TaperpruneError, match="interrupted"):
        _run(out, distill=0.5)
    monkeypatch.setattr(Trainer, "_after_step", after)
    result = resume_run(out)
    again = {s.label: (s.acc_at_snapshot, s.acc_finetuned, s.macs) for s in result.snapshots}
    assert again == whole
    assert (out / "trace.csv").read_text() == (tmp_path / "whole" / "trace.csv").read_text()
