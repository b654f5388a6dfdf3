"""A run whose budgets are parameters: every snapshot holds at most its budget's parameters,
its files say so, and a list mixing MACs and parameters fails before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _tiny_run import FAST_RUN
from taperprune.errors import TaperpruneError
from taperprune.run.config import RunConfig, config_from_mapping
from taperprune.run.pipeline import run_prune
from taperprune.run.rundir import find_snapshot, read_run


def test_a_parameter_budget_run(tmp_path: Path) -> None:
    cfg = RunConfig(**{**FAST_RUN, "budgets": ("0.5params", "4Kparams"), "out": str(tmp_path)})
    assert cfg.budget_unit == "params"
    result = run_prune(cfg)
    assert result.unit == "params" and result.full == result.full_params
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["unit"] == "params"
    targets = [round(0.5 * result.full_params), 4000]
    assert [s.target for s in result.snapshots] == targets
    for snap in result.snapshots:
        metrics = json.loads((tmp_path / "snapshots" / snap.label / "metrics.json").read_text())
        assert metrics["params"] == snap.params <= snap.target
        assert metrics["budget_error"] == snap.params - snap.target <= 0
        assert snap.macs < result.full_macs  # MACs are counted too, as measured
    run = read_run(tmp_path)
    assert find_snapshot(run, "0.5params").label == result.snapshots[0].label == "50pct"
    assert find_snapshot(run, "0.5").label == "50pct"


def test_a_list_mixing_macs_and_parameters_fails_in_the_config() -> None:
    with pytest.raises(TaperpruneError, match="budgets: budgets .* mix MACs and parameters"):
        config_from_mapping({"budgets": "0.5,1Mparams"})
