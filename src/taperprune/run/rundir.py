"""The run directory: its layout, guarding it against overwrites, and reading it back.

OUT/config.yaml        every setting, resolved
    trace.csv          one row per pruner step
    summary.json       unpruned model and every snapshot's figures
    base/              plan.json, model.safetensors, model.onnx of the unpruned model
    snapshots/<label>/ plan.json, model.safetensors, metrics.json, model.onnx
    report.html, *.png

A run directory may come from someone else: every file is read against a schema (a
violation is one line, "<file>: <field>: <what is wrong> (<what to do>)"), and every path
is refused when it leaves the directory or passes through a symbolic link.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from ..budget import parse_budget
from ..errors import BudgetError, TaperpruneError
from ..files import read_json, read_structured, write_atomic
from .lock import LOCK_NAME
from .schemas import FULL_KEY, TRACE_COLUMNS, Metrics, PlanFields, Summary, TraceRow

_DATA = ("config.yaml", "trace.csv", "summary.json", "base", "snapshots", "checkpoint")
RUN_FILES = (*_DATA, "report.html", "pareto.png", "trace.png", "widths.png")  # what a run writes
# What `budget_label` writes ('50pct', '12.5pct', '1.235e-05pct'): never a path.
RESTORE = "the file was changed or damaged after the run wrote it; restore it or prune again"
LINK = "a run's files must lie inside its directory; replace the link by a copy of its target"


def budget_label(target: int, full: int) -> str:
    """Directory name of a snapshot: its share of the full MACs, e.g. '25pct'."""
    return f"{100.0 * target / full:.4g}pct"


# ---------------------------------------------------------------- errors and paths
def file_error(file: object, field: str, what: str, todo: str = RESTORE) -> TaperpruneError:
    """The one-line error about one field of one file."""
    return TaperpruneError(f"{file}: {field}: {what} ({todo})")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_error(
    exc: ValidationError, file: object, todo: str = RESTORE, at: str = ""
) -> TaperpruneError:
    """The first violation of a schema, as `file_error`."""
    err = exc.errors(include_url=False)[0]
    loc = "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" if p.isprintable() else f".{p!r}"
        for p in err["loc"]
    )
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    got = "" if err["type"] in ("missing", "value_error") else f", got {_shown(err['input'])}"
    return file_error(file, at + (loc.lstrip(".") or "top level"), msg + got, todo)


def validate(
    schema: type[BaseModel], value: Any, file: object, todo: str = RESTORE, at: str = ""
) -> Any:
    """`value` checked against a schema; one line naming the field if it does not fit."""
    if not isinstance(value, dict):
        what = f"a {type(value).__name__} where a mapping belongs"
        raise file_error(file, at + "top level", what, todo)
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise schema_error(exc, file, todo, at) from None


def inside(root: Path, relative: str | Path, *, file: object = None, field: str = "path") -> Path:
    """root/relative, refused when it would leave `root` or pass through a symbolic link."""
    rel = Path(relative)
    where = file if file is not None else root / rel
    if rel.is_absolute() or ".." in rel.parts:
        raise file_error(where, field, f"{str(relative)!r} leads outside {root}", LINK)
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            what = "" if path == where else f"{path} is "
            raise file_error(where, field, f"{what}a symbolic link to {os.readlink(path)}", LINK)
    if not path.resolve().is_relative_to(root.resolve()):
        raise file_error(where, field, f"{path} resolves outside {root}", LINK)
    return path


def check_links(root: Path, names: Iterable[str] | None = None) -> None:
    """Refuse a symbolic link among `names` in `root` (all its entries when None) or below."""
    if names is None:
        names = [p.name for p in root.iterdir()] if root.is_dir() else []
    for name in names:
        top = inside(root, name)
        if not top.is_dir():
            continue
        for folder, dirs, files in os.walk(top):  # does not follow links
            for entry in (*dirs, *files):
                inside(root, Path(folder, entry).relative_to(root))


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError, RecursionError) as exc:  # a directory, huge integers, nesting
        raise file_error(path, "file", f"cannot be read as JSON: {exc}") from None


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over another run unless asked to."""
    if out.exists() and not out.is_dir():
        raise TaperpruneError(f"output directory {out} is a file; choose another --out")
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):  # our own lock
        if not (out / "config.yaml").exists():
            raise TaperpruneError(
                f"output directory {out} exists and is not a taperprune run; choose another --out"
            )
        if not overwrite:
            raise TaperpruneError(
                f"output directory {out} already holds a run; pass --overwrite to replace it "
                "or choose another --out"
            )
        # Only the files a run writes go; anything else the user put there stays. A link
        # goes itself: what it points to is never touched.
        for name in RUN_FILES:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading
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
    if path.is_symlink():
        raise file_error(path, "path", f"is a symbolic link to {os.readlink(path)}", LINK)
    try:
        return read_structured(path, yaml.safe_load, (yaml.YAMLError,), "YAML")
    except (OSError, ValueError, RecursionError) as exc:
        raise file_error(path, "file", f"cannot be read as YAML: {exc}") from None


def read_metrics(path: Path) -> dict[str, Any]:
    """A snapshot's metrics.json, checked."""
    metrics = _read_json(path)
    validate(Metrics, metrics, path)
    return metrics


def read_plan_fields(path: Path) -> dict[str, Any]:
    """A plan.json, checked for what reading a run uses."""
    plan = _read_json(path)
    validate(PlanFields, plan, path)
    return plan


def read_trace(path: Path) -> list[dict[str, Any]]:
    """trace.csv as rows of numbers (the phase column stays a string)."""
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise TaperpruneError(f"{path} is missing") from None
    except OSError as exc:
        raise file_error(path, "file", f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise file_error(path, "text", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(text.splitlines())
    header = list(reader.fieldnames or [])
    if header != TRACE_COLUMNS:
        raise file_error(path, "header", f"columns {header}, not the trace's {TRACE_COLUMNS}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row or None in row.values():
            raise file_error(path, f"line {line}", "a wrong number of fields (cut or corrupted)")
        cells = {k: float(v == "True") if v in ("True", "False") else v for k, v in row.items()}
        rows.append(validate(TraceRow, cells, path, at=f"line {line}, column ").model_dump())
    return rows


def write_trace(path: Path, trace: Sequence[Any]) -> None:
    """trace.csv: one row per pruner step (`StepRecord`s)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRACE_COLUMNS)
    writer.writeheader()
    for rec in trace:
        writer.writerow(asdict(rec))
    write_atomic(path, buf.getvalue())


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml: a mapping holding every run setting, valid as a `RunConfig`."""
    from .config import RunConfig, config_from_mapping  # the settings a run writes

    config = read_yaml(path)
    if not isinstance(config, dict):
        raise file_error(path, "top level", f"a {type(config).__name__} where settings belong")
    # The run's own settings; method settings added in later versions may be absent.
    missing = sorted(set(RunConfig.model_fields) - {"method"} - set(config))
    if missing:
        raise file_error(path, "settings", f"{missing} are missing: truncated or not a run's")
    config_from_mapping(config, source=path)
    return config


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file()


def read_snapshot(
    run: Path, relative: str, *, file: object = None, field: str = "path"
) -> SnapshotFiles:
    """The snapshot directory run/relative, its plan and metrics checked."""
    directory = inside(run, relative, file=file, field=field)
    return SnapshotFiles(
        directory,
        read_plan_fields(inside(run, f"{relative}/plan.json")),
        read_metrics(inside(run, f"{relative}/metrics.json")),
    )


def read_run(path: str | Path) -> RunFiles:
    """Read every file of a finished run; a missing or malformed file is named in the error."""
    path = Path(path)
    if not is_run(path):
        raise TaperpruneError(
            f"{path} is not a taperprune run directory (it has no config.yaml); give the --out "
            "directory of a `taperprune prune` run"
        )
    check_links(path, RUN_FILES)
    config = read_config(path / "config.yaml")
    summary_path = path / "summary.json"
    summary = _read_json(summary_path)
    if isinstance(summary, dict) and "snapshots" not in summary:
        raise file_error(
            summary_path,
            "snapshots",
            "missing: the run may have stopped early, or the file is truncated",
            "finish the run with `taperprune prune --resume`, or restore the file",
        )
    checked = validate(Summary, summary, summary_path)
    trace = read_trace(path / "trace.csv")
    if checked.trace_rows is not None and len(trace) != checked.trace_rows:
        raise file_error(
            path / "trace.csv",
            "rows",
            f"the file is truncated: {len(trace)} rows, the run wrote {checked.trace_rows}",
        )
    base_plan = read_plan_fields(path / "base" / "plan.json")
    snapshots = [
        read_snapshot(path, f"snapshots/{s.label}", file=summary_path, field=f"snapshots[{i}]")
        for i, s in enumerate(checked.snapshots)
    ]
    for snap in snapshots:
        if snap.plan["layers"].keys() != base_plan["layers"].keys():
            raise file_error(
                snap.directory / "plan.json", "layers", "not the layers of base/plan.json"
            )
    return RunFiles(path, config, trace, summary, base_plan, snapshots)


def find_snapshot(run: RunFiles, budget: str) -> SnapshotFiles:
    """The snapshot of a budget given as the run's label ('25pct'), a fraction or MACs."""
    labels = [s.label for s in run.snapshots]
    for snap in run.snapshots:
        if budget == snap.label:
            return snap
    unit = run.summary.get("unit", "MACs")
    full = int(run.summary[FULL_KEY[unit]])
    try:
        target = parse_budget(budget, full, unit)
    except BudgetError as exc:
        raise TaperpruneError(f"{exc}; this run has snapshots {labels}") from None
    for snap in run.snapshots:
        if abs(int(snap.metrics["target"]) - target) <= max(1, full // 10**6):
            return snap
    raise TaperpruneError(
        f"run {run.path} has no snapshot at budget {budget}; it has {labels} "
        "(give one of those, or its fraction such as 0.25)"
    )
