"""The run directory: its layout, guarding it against overwrites, and reading it back.

OUT/config.yaml        every setting, resolved
    trace.csv          one row per pruner step
    summary.json       unpruned model and every snapshot's figures
    base/              plan.json, model.safetensors, model.onnx of the unpruned model
    snapshots/<label>/ plan.json, model.safetensors, metrics.json, model.onnx
    report.html, *.png
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..budget import parse_budget
from ..errors import BudgetError, TaperpruneError
from ..files import read_json, read_structured, write_atomic
from ..pruner import StepRecord

RUN_FILES = (
    "config.yaml",
    "trace.csv",
    "summary.json",
    "base",
    "snapshots",
    "checkpoint",
    "report.html",
    "pareto.png",
    "trace.png",
    "widths.png",
)


def budget_label(target: int, full: int) -> str:
    """Directory name of a snapshot: its share of the full MACs, e.g. '25pct'."""
    return f"{100.0 * target / full:.4g}pct"


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over another run unless asked to."""
    if out.exists() and not out.is_dir():
        raise TaperpruneError(f"output directory {out} is a file; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / "config.yaml").exists():
            raise TaperpruneError(
                f"output directory {out} exists and is not a taperprune run; choose another --out"
            )
        if not overwrite:
            raise TaperpruneError(
                f"output directory {out} already holds a run; pass --overwrite to replace it "
                "or choose another --out"
            )
        # Only the files a run writes go; anything else the user put there stays.
        for name in RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)


@dataclass(frozen=True)
class SnapshotFiles:
    """One snapshot directory, read back."""

    directory: Path
    plan: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        return self.directory.name


@dataclass(frozen=True)
class RunFiles:
    """A run directory, read back."""

    path: Path
    config: dict[str, Any]
    trace: list[dict[str, Any]]
    summary: dict[str, Any]
    base_plan: dict[str, Any]
    snapshots: list[SnapshotFiles]  # largest budget first

    @property
    def name(self) -> str:
        return self.path.name


def read_yaml(path: Path) -> Any:
    return read_structured(path, yaml.safe_load, (yaml.YAMLError,), "YAML")


def _cell(key: str, value: str) -> Any:
    if key == "phase":
        return value
    if value in ("True", "False"):
        return float(value == "True")
    return float(value)


def read_trace(path: Path) -> list[dict[str, Any]]:
    """trace.csv as rows of numbers (the phase column stays a string)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TaperpruneError(f"{path} is missing") from None
    rows = []
    reader = csv.DictReader(text.splitlines())
    for lineno, row in enumerate(reader, start=2):
        try:
            rows.append({k: _cell(k, v) for k, v in row.items()})
        except (TypeError, ValueError) as exc:
            raise TaperpruneError(
                f"{path} is corrupted or truncated at line {lineno}: {exc}"
            ) from exc
    return rows


def write_trace(path: Path, trace: Sequence[Any]) -> None:
    """trace.csv: one row per pruner step (`StepRecord`s)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(StepRecord)])
    writer.writeheader()
    for rec in trace:
        writer.writerow(asdict(rec))
    write_atomic(path, buf.getvalue())


def _check_config(config: Any, path: Path) -> None:
    from .config import RunConfig  # the settings a run writes

    # The run's own settings; method settings added in later versions may be absent.
    known = set(RunConfig.model_fields) - {"method"}
    missing = sorted(known - set(config)) if isinstance(config, dict) else sorted(known)
    if missing:
        raise TaperpruneError(
            f"{path} is truncated or not written by this taperprune: settings {missing} are missing"
        )


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file()


def read_run(path: str | Path) -> RunFiles:
    """Read every file of a finished run; a missing or corrupted file is named in the error."""
    path = Path(path)
    if not is_run(path):
        raise TaperpruneError(
            f"{path} is not a taperprune run directory (it has no config.yaml); give the --out "
            "directory of a `taperprune prune` run"
        )
    config = read_yaml(path / "config.yaml")
    _check_config(config, path / "config.yaml")
    summary = read_json(path / "summary.json")
    if not isinstance(summary, dict) or "snapshots" not in summary:
        raise TaperpruneError(
            f"{path / 'summary.json'} is not a finished run's summary (no snapshots); the run "
            "may have stopped early or the file is truncated"
        )
    trace = read_trace(path / "trace.csv")
    if "trace_rows" in summary and len(trace) != summary["trace_rows"]:
        raise TaperpruneError(
            f"{path / 'trace.csv'} is truncated: {len(trace)} rows, the run wrote "
            f"{summary['trace_rows']}"
        )
    snapshots = [
        SnapshotFiles(
            path / "snapshots" / s["label"],
            read_json(path / "snapshots" / s["label"] / "plan.json"),
            read_json(path / "snapshots" / s["label"] / "metrics.json"),
        )
        for s in summary["snapshots"]
    ]
    return RunFiles(
        path,
        config,
        trace,
        summary,
        read_json(path / "base" / "plan.json"),
        snapshots,
    )


def find_snapshot(run: RunFiles, budget: str) -> SnapshotFiles:
    """The snapshot of a budget given as the run's label ('25pct'), a fraction or MACs."""
    labels = [s.label for s in run.snapshots]
    for snap in run.snapshots:
        if budget == snap.label:
            return snap
    full = int(run.summary["full_macs"])
    try:
        target = parse_budget(budget, full)
    except BudgetError as exc:
        raise TaperpruneError(f"{exc}; this run has snapshots {labels}") from None
    for snap in run.snapshots:
        if abs(int(snap.metrics["target"]) - target) <= max(1, full // 10**6):
            return snap
    raise TaperpruneError(
        f"run {run.path} has no snapshot at budget {budget}; it has {labels} "
        "(give one of those, or its fraction such as 0.25)"
    )
