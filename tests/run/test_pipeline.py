"""The pipeline's set-up work (the channel graph is built once per run and shared by the
budget check, the base plan and the pruner) and its streams (each snapshot's fine-tune
reads its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _tiny_run import FAST_RUN, NO_OUTPUTS, TINY_RUN
from taperprune import graph as graph_mod
from taperprune.run.config import RunConfig
from taperprune.run.pipeline import Run, run_prune


def test_a_run_builds_the_channel_graph_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    built: list[object] = []
    original = graph_mod.ChannelGraph.__init__

    def counting(self: object, *args: object, **kwargs: object) -> None:
        built.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(graph_mod.ChannelGraph, "__init__", counting)
    cfg = RunConfig(
        out=str(tmp_path / "run"),
        **{**TINY_RUN, **NO_OUTPUTS, "finetune_epochs": 0.0, "warmup_steps": 5},
    )
    result = run_prune(cfg)
    assert len(result.snapshots) == 2
    assert len(built) == 1


def _snapshot_results(out: Path, **extra: object) -> dict[str, tuple[float, float, float]]:
    cfg = RunConfig(out=str(out), **{**FAST_RUN, **extra})
    return {s.label: (s.acc_at_snapshot, s.acc_finetuned, s.macs) for s in run_prune(cfg).snapshots}


def test_a_snapshot_s_fine_tune_does_not_depend_on_where_the_taper_left_the_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A taper that runs longer after a snapshot (a cap that binds late, another schedule)
    # must not change that snapshot's recalibration and fine-tune: each reads its own
    # stretch of the batch stream with its own random seed.
    rng_at_recalibration: list[bytes] = []
    recalibrate = Run._recalibrate

    def recording(self: Run, model: torch.nn.Module) -> None:
        rng_at_recalibration.append(bytes(torch.get_rng_state().numpy()))
        recalibrate(self, model)

    monkeypatch.setattr(Run, "_recalibrate", recording)
    plain, plain_rng = _snapshot_results(tmp_path / "plain"), list(rng_at_recalibration)
    rng_at_recalibration.clear()
    finetunes = Run._finetunes

    def after_a_longer_taper(self: Run) -> None:
        for _ in self.prep.stream.batches(7):
            pass
        torch.rand(13)
        finetunes(self)

    monkeypatch.setattr(Run, "_finetunes", after_a_longer_taper)
    assert _snapshot_results(tmp_path / "longer") == plain
    assert rng_at_recalibration == plain_rng and len(plain_rng) == 4  # 2 snapshots × 2


def test_the_largest_seed_runs(tmp_path: Path) -> None:
    # numpy's generator takes 32-bit seeds and torch's 64-bit ones; the config allows any
    # seed below 2**63, and the data order multiplies it.
    big = 2**63 - 1
    assert _snapshot_results(tmp_path / "a", seed=big, finetune_epochs=0.0) == _snapshot_results(
        tmp_path / "b", seed=big, finetune_epochs=0.0
    )


@pytest.mark.parametrize("old", [False, True])
@pytest.mark.parametrize("where", ["mid fine-tune", "between fine-tunes"])
def test_resuming_an_old_fine_tune_checkpoint_says_its_data_order_differs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    old: bool,
    where: str,
) -> None:
    # Before each snapshot read its own stretch of the stream, a fine-tune continued the
    # taper's (a low epoch); resuming such a checkpoint, saved inside a fine-tune or at the
    # boundary after one, cannot end where a run of either version would, and the user is
    # told so. A checkpoint of this version is not flagged.
    import json
    import signal

    from taperprune.errors import RunInterrupted, TaperpruneError
    from taperprune.run.pipeline import resume_run
    from taperprune.run.trainer import Trainer

    after, save = Trainer._after_step, Trainer.checkpoint

    def interrupt(self: Trainer, label: str, i: int, stop: TaperpruneError | None) -> None:
        if label.startswith("fine-tune") and i == 3:
            self.signal = signal.SIGINT
        after(self, label, i, stop)

    def killed_after_the_first_fine_tune(self: Trainer) -> None:
        save(self)
        if self.state.phase == "finetune" and self.state.finetune == {"index": 1}:
            raise RunInterrupted("killed")

    if where == "mid fine-tune":
        monkeypatch.setattr(Trainer, "_after_step", interrupt)
    else:
        monkeypatch.setattr(Trainer, "checkpoint", killed_after_the_first_fine_tune)
    out = tmp_path / "cut"
    with pytest.raises(TaperpruneError, match="interrupted|killed"):
        _snapshot_results(out)
    monkeypatch.setattr(Trainer, "_after_step", after)
    monkeypatch.setattr(Trainer, "checkpoint", save)
    ckpt = out / "checkpoint"
    state_file = ckpt / json.loads((ckpt / "latest.json").read_text())["dir"] / "state.json"
    saved = json.loads(state_file.read_text())
    assert ("acc0" in saved["state"]["finetune"]) is (where == "mid fine-tune")
    assert saved["state"]["stream"]["epoch"] >= 1 << 20  # this version's stream
    if old:
        saved["state"]["stream"]["epoch"] = 3
        state_file.write_text(json.dumps(saved))
    capsys.readouterr()
    resume_run(out)
    said = " ".join(capsys.readouterr().out.split())
    assert ("old data order" in said) is old
