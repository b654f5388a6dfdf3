"""Every runtime's speed-up is shown, a slowdown in red with its likely reason: in the
snapshot line, the final table and the report."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from taperprune import cli
from taperprune.latency import Latency
from taperprune.run.deploy import aligned_share, latency_text, slowdown_reason
from taperprune.run.report import _latency_cell


def test_aligned_share_and_the_reason_it_gives() -> None:
    assert aligned_share({"a": 8, "b": 16, "c": 12, "d": 5}) == 0.5
    assert aligned_share({}) is None
    assert "only 50% of the pruned widths" in slowdown_reason(0.5)
    assert "--round-to 8" in slowdown_reason(0.5)
    assert "none of the pruned widths" in slowdown_reason(0.0)
    assert "fixed per-layer costs" in slowdown_reason(1.0)
    assert "fixed per-layer costs" in slowdown_reason(None)


def test_the_snapshot_line_marks_a_slowdown() -> None:
    measured = [
        Latency("torch", 1, 2, 0.5, 0.6, 20),
        Latency("onnxruntime", 32, 2, 6.0, 6.5, 20),
    ]
    text = latency_text(measured, {"torch/b1": 1.5, "onnxruntime/b32": 0.6})
    assert "torch b1: 0.50 ms (1.50×)" in text
    assert "onnxruntime b32: 6.00 ms ([red]0.60×, slower[/red])" in text


def test_the_report_cell_shows_every_runtime_and_why_one_is_slower() -> None:
    cell = _latency_cell(
        {"speedup": {"torch/b1": 1.2, "onnxruntime/b32": 0.7}, "aligned_widths": 0.25}
    )
    assert "torch/b1: 1.20×" in cell
    assert '<span class="slow"' in cell and "onnxruntime/b32: 0.70×, slower" in cell
    assert "only 25% of the pruned widths" in cell
    assert "slow" not in _latency_cell({"speedup": {"torch/b1": 1.2}})


def test_the_final_table_has_a_column_per_runtime(tmp_path: Path, monkeypatch) -> None:
    snap = tmp_path / "snapshots" / "50pct"
    snap.mkdir(parents=True)
    (snap / "metrics.json").write_text(
        json.dumps({"speedup": {"torch/b1": 1.25, "onnxruntime/b32": 0.5}})
    )
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=120, force_terminal=False))
    result = SimpleNamespace(
        out=tmp_path,
        snapshots=[SimpleNamespace(label="50pct", target=500, macs=490)],
        unit="MACs",
        full_macs=1000,
    )
    cli._print_speedups(result)
    text = buf.getvalue()
    assert "torch b1" in text and "onnxruntime b32" in text
    assert "1.25×" in text and "0.50×" in text and "2.04×" in text  # MACs ÷
    assert "slower than unpruned" in text


def test_a_measurement_stops_after_its_time_but_not_before_three_runs() -> None:
    import math
    import time

    from taperprune.latency import MIN_RUNS, _time

    def call() -> None:
        time.sleep(0.02)

    _, _, runs = _time(call, 0, 100, max_seconds=0.05)
    assert MIN_RUNS <= runs <= 5  # about 0.05 s of 0.02-s runs, at least three
    assert _time(call, 0, 4, max_seconds=math.inf)[2] == 4  # bench-latency: every run asked


def test_a_short_call_is_timed_for_at_least_its_minimum_time_and_never_past_its_maximum() -> None:
    import time

    from taperprune.latency import _time

    def call() -> None:
        time.sleep(0.005)

    _, _, runs = _time(call, 0, 3, max_seconds=10.0, min_seconds=0.1)
    assert 12 <= runs <= 21  # 0.1 s of ≥ 5-ms runs, not the 3 asked
    _, _, runs = _time(call, 0, 3, max_seconds=0.02, min_seconds=1.0)
    assert runs <= 5  # the maximum wins over the minimum
