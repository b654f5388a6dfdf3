"""The pipeline's set-up work: the channel graph is built once per run and shared by the
budget check, the base plan and the pruner."""

from __future__ import annotations

from pathlib import Path

import pytest

from _tiny_run import NO_OUTPUTS, TINY_RUN
from taperprune import graph as graph_mod
from taperprune.run.config import RunConfig
from taperprune.run.pipeline import run_prune


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
