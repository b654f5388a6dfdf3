"""Other processes' CPU use while a latency is timed: measured, warned about, recorded."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from taperprune import latency_table, machine_load
from taperprune.errors import LatencyTimingWarning
from taperprune.graph import build_graph
from taperprune.latency_gate import load_notes
from taperprune.latency_meter import LatencySettings
from taperprune.latency_table import build_latency_model
from taperprune.machine_load import BUSY_CORES, OthersMeter, busy_note
from taperprune.models import demo_cnn
from test_latency_budget import FakeMeter


def test_others_cores_are_the_machine_s_busy_ticks_less_this_process_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    ticks = iter([(1000, 200), (1000 + 3 * hz, 200 + hz)])  # 3 s busy, 1 of them ours
    clock = iter([10.0, 12.0])  # over 2 s
    monkeypatch.setattr(machine_load, "cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(machine_load.time, "monotonic", lambda: next(clock))
    assert OthersMeter().cores() == pytest.approx(1.0)  # 2 s of others' CPU in 2 s


def test_no_proc_means_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_load, "cpu_ticks", lambda: None)
    assert OthersMeter().cores() is None
    assert busy_note(None, "x") is None


def test_the_real_counters_read_something_here() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc")
    cores = OthersMeter().cores()
    assert cores is not None and cores >= 0.0


def test_a_busy_note_only_above_the_threshold() -> None:
    assert busy_note(BUSY_CORES - 0.01, "the latency model") is None
    note = busy_note(1.5, "the latency model")
    assert note is not None and "1.50 CPU cores" in note and "quiet machine" in note


class _Busy:
    cores_used: float | None = 1.5

    def cores(self) -> float | None:
        return self.cores_used


def _build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cores: float | None):
    _Busy.cores_used = cores
    monkeypatch.setattr(latency_table, "OthersMeter", _Busy)
    # The "real" meter here is the deterministic fake (the real one times for seconds).
    monkeypatch.setattr(latency_table, "RuntimeMeter", lambda settings: FakeMeter())
    net, x = demo_cnn(in_channels=1, num_classes=3, width=4), torch.zeros(1, 1, 12, 12)
    graph = build_graph(net, x)
    return build_latency_model(net, x, graph, LatencySettings("torch"), cache=tmp_path), (
        net,
        x,
        graph,
    )


def test_a_latency_model_timed_under_load_warns_and_says_so_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.warns(LatencyTimingWarning, match="1.50 CPU cores"):
        lm, (net, x, graph) = _build(monkeypatch, tmp_path, 1.5)
    assert lm.others_cores == 1.5 and load_notes(lm)
    (entry,) = tmp_path.glob("*.json")
    assert json.loads(entry.read_text())["others_cores"] == 1.5
    again = build_latency_model(net, x, graph, LatencySettings("torch"), cache=tmp_path)
    assert again.others_cores == 1.5 and load_notes(again)  # a later run is told too


def test_a_quiet_machine_gives_no_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyTimingWarning)
        lm, _ = _build(monkeypatch, tmp_path, 0.05)
    assert lm.others_cores == 0.05 and load_notes(lm) == []


def test_a_pruner_on_a_model_timed_under_load_notes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from taperprune.pruner import TaperPruner
    from taperprune.settings import PrunerConfig

    with pytest.warns(LatencyTimingWarning):
        _, (net, x, _) = _build(monkeypatch, tmp_path, 1.5)  # cached in tmp_path
    config = PrunerConfig(latency_runtime="torch")
    pruner = TaperPruner(
        net, x, ["0.8latency"], config=config, latency_meter=FakeMeter(), latency_cache=tmp_path
    )
    assert any("1.50 CPU cores" in note for note in pruner.notes)
