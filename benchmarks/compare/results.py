"""results.csv: one row per (view, net, method, seed, budget) run, and the run ids that
name each run and its directory (so an interrupted bench resumes)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taperprune.errors import TaperpruneError
from taperprune.files import read_json, write_atomic

FIELDS = (
    "view",
    "net",
    "method",
    "seed",
    "budget",
    "target_macs",
    "macs",
    "budget_error_macs",
    "budget_error_pct",
    "one_channel_macs",
    "full_macs",
    "params",
    "steps",
    "step_budget",
    "acc_before_finetune",
    "acc",
    "base_acc",
    "latency_ms",
    "run_seconds",
    "run_id",
)


def parse_net(spec: str) -> tuple[str, dict[str, Any]]:
    """'demo_cnn:width=8' → ('demo_cnn', {'width': 8}); 'nets/my.py:build:width=8' →
    ('nets/my.py:build', {'width': 8}) (a file's builder is the name up to its function)."""
    if ".py:" in spec:
        path, _, tail = spec.partition(".py:")
        function, _, rest = tail.partition(":")
        if not function:
            raise TaperpruneError(f"net {spec!r}: expected path/file.py:function[:key=value,…]")
        name = f"{path}.py:{function}"
    else:
        name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise TaperpruneError(f"net {spec!r}: expected name:key=value,…")
        try:
            kwargs[key] = int(value)
        except ValueError:
            try:
                kwargs[key] = float(value)
            except ValueError:
                kwargs[key] = value
    return name, kwargs


def net_dir(spec: str) -> str:
    """A directory name for a net: 'demo_cnn:width=8' → 'demo_cnn_width8'; a file's path
    is reduced to its file name ('nets/my.py:build' → 'my.py_build')."""
    if ".py:" in spec:
        path, _, tail = spec.partition(".py:")
        spec = f"{Path(path).name}.py:{tail}"
    return spec.replace(":", "_").replace("=", "").replace(",", "_")


# ------------------------------------------------------------------ results file
_INTS = {
    "seed",
    "target_macs",
    "macs",
    "budget_error_macs",
    "one_channel_macs",
    "full_macs",
    "params",
    "steps",
    "step_budget",
}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results.csv (numbers as float/int); [] when it does not exist."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict[str, Any] = {}
        for k, v in r.items():
            if k in ("view", "net", "method", "run_id"):
                row[k] = v
            elif k in _INTS:
                row[k] = int(float(v or 0))
            else:
                row[k] = float(v)
        out.append(row)
    return out


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_atomic(path, buf.getvalue())


def run_id_steps(run_id: str) -> int:
    """The step count a baseline's run id records (its total optimizer steps)."""
    return int(run_id.rsplit("steps=", 1)[1])


def run_dir(root: Path, run_id: str) -> Path:
    """The directory of the taperprune run `run_id` (view/net/method/seedN[/key=value…])."""
    parts = run_id.split("/")
    last = max(i for i, p in enumerate(parts) if re.fullmatch(r"seed\d+", p))
    view, *net, method, seed = parts[: last + 1]
    overrides = parts[last + 1 :]
    out = root / "runs" / view / net_dir("/".join(net)) / method / seed
    return out / "_".join(o.replace("=", "") for o in overrides) if overrides else out


def optimizer_steps(run_dir: Path, rows: Sequence[dict[str, Any]]) -> int:
    """Optimizer steps of a whole taperprune run (its summary.json, else its rows' largest)."""

    summary = run_dir / "summary.json"
    if summary.exists():
        return int(read_json(summary)["optimizer_steps"])
    return max(int(r["steps"]) for r in rows)


def complete_seeds(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per net, view and method, the rows of the seeds that have run every budget the
    method's lowest seed has, and a line for each seed left out: a half-run seed would pull
    the method's mean toward whichever budgets happened to finish."""
    by: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["net"], r["view"], r["method"]), []).append(r)
    kept: list[dict[str, Any]] = []
    notes: list[str] = []
    for (net, view, method), mine in by.items():
        seeds = sorted({r["seed"] for r in mine})
        cells: dict[int, set[tuple[Any, Any]]] = {s: set() for s in seeds}
        for r in mine:
            cells[r["seed"]].add((r["budget"], r["step_budget"]))
        for seed in seeds:
            if cells[seeds[0]] <= cells[seed]:
                kept += [r for r in mine if r["seed"] == seed]
            else:
                missing = len(cells[seeds[0]] - cells[seed])
                notes.append(f"{net} {view} {method}: seed {seed} left out ({missing} to go)")
    return kept, notes
