"""A run whose budgets are latency, measured in eager torch here: each snapshot's modelled
latency is at most its budget, its measured latency is recorded next to it and is within
budget × 1.05 (or the run says it pruned on / kept it), the files, report and tables
say so; a bad latency setting fails before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _tiny_run import FAST_RUN
from taperprune.errors import TaperpruneError
from taperprune.run.config import RunConfig, config_from_mapping
from taperprune.run.pipeline import run_prune
from taperprune.run.report import write_report
from taperprune.run.rundir import find_snapshot, read_run

# These runs time real networks while the other test workers run: the warning that says
# so (tests/test_machine_load.py) is expected here, not a failure of what they test.
pytestmark = pytest.mark.filterwarnings("ignore::taperprune.errors.LatencyTimingWarning")


def test_a_latency_budget_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPERPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(
        **{
            **FAST_RUN,
            # The demo net at full width: at FAST_RUN's 8 channels and 16 px a torch forward
            # is mostly call overhead, and pruning cannot make it much faster.
            "data": "synthetic:1x28x28:4",
            "model_kwargs": {},
            "budgets": ("0.7latency", "0.5latency"),
            "latency_runtime": "torch",
            "out": str(tmp_path / "run"),
            "report": True,
        }
    )
    assert cfg.budget_unit == "ns"
    result = run_prune(cfg)
    assert result.unit == "ns" and result.full == result.full_latency_ns > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["unit"] == "ns" and summary["full_latency_ns"] == result.full_latency_ns
    assert summary["latency_model"]["runtime"] == "torch"
    assert [s.target for s in result.snapshots] == [
        round(0.7 * result.full_latency_ns),
        round(0.5 * result.full_latency_ns),
    ]
    notes = " ".join(summary["latency_notes"])
    for snap in result.snapshots:
        metrics = json.loads(
            (tmp_path / "run" / "snapshots" / snap.label / "metrics.json").read_text()
        )
        assert snap.predicted_ns is not None and snap.measured_ns is not None
        assert metrics["predicted_ns"] == snap.predicted_ns <= snap.target
        assert metrics["budget_error"] == snap.predicted_ns - snap.target <= 0
        # Measured on a shared machine: within budget × 1.05, or the run says why not.
        assert snap.measured_ns <= 1.05 * snap.target or "kept as it is" in notes
    assert list((tmp_path / "cache" / "latency").glob("*.json"))  # the table was cached
    run = read_run(tmp_path / "run")
    assert find_snapshot(run, "0.7latency").label == "70pct"
    html = write_report([tmp_path / "run"]).read_text()
    assert "target latency" in html and "modelled" in html and "measured" in html


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"budgets": "2ms,0.25"}, "mix MACs and latency"),
        ({"budgets": "2ms", "latency_runtime": "tvm"}, "latency_runtime"),
        ({"budgets": "2ms", "latency_batch": 0}, "latency_batch"),
    ],
)
def test_bad_latency_settings_fail_in_the_config(settings: dict, match: str) -> None:
    with pytest.raises(TaperpruneError, match=match) as err:
        config_from_mapping(settings)
    assert "\n" not in str(err.value)


def test_check_measures_latency_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from taperprune.cli import app

    monkeypatch.setenv("TAPERPRUNE_CACHE", str(tmp_path))
    # One thread: eager torch with two on a 2-core machine shared with the other test
    # worker ran up to 100× slower, and the model then put its floor above the full net.
    args = ["check", "demo_cnn", "--latency-runtime", "torch", "--latency-threads", "1"]
    args.append("--budgets")
    ok = CliRunner().invoke(app, [*args, "0.95latency"])
    assert ok.exit_code == 0, ok.output
    assert "timing every layer in torch" in ok.output and " ms" in ok.output
    assert "--latency-runtime torch" in " ".join(ok.output.split())  # the prune command
    low = CliRunner().invoke(app, [*args, "0.95latency,0.001latency"])
    assert "infeasible: below the least reachable" in low.output
    assert isinstance(low.exception, TaperpruneError)  # `main` makes it one line, exit 2
    assert "below the least this model can reach" in str(low.exception)
