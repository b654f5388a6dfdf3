"""A run directory from someone else (issue 14): every path stays inside the run, every
file fits its schema, and whatever is wrong is one line with exit code 2, never a
traceback and never a file written outside the run."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _tiny_run import FAST_RUN
from taperprune.errors import TaperpruneError
from taperprune.run.checkpoint import save_checkpoint
from taperprune.run.config import RunConfig
from taperprune.run.pipeline import run_prune
from taperprune.run.report import _run_meta, _snapshot_table
from taperprune.run.rundir import budget_label, check_out_dir, find_snapshot, read_run
from taperprune.run.schemas import LABEL

FAST = FAST_RUN


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("made") / "run"
    run_prune(RunConfig(out=str(out), **FAST))  # type: ignore[arg-type]
    return out


@pytest.fixture
def world(made: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run at tmp/runs/run, and a victim directory tmp/elsewhere (plus
    tmp/runs/elsewhere, where `../../elsewhere` from the run's checkpoint/ leads)."""
    run = tmp_path / "runs" / "run"
    shutil.copytree(made, run)
    for where in (tmp_path / "elsewhere", tmp_path / "runs" / "elsewhere"):
        shutil.copytree(made / "snapshots" / "25pct", where / "victim")
        (where / "keep.txt").write_text("not yours")
    return run, tmp_path / "elsewhere"


def _outside(tmp: Path, run: Path) -> dict[str, tuple[int, int]]:
    """Every file under tmp but outside the run, with its size and mtime."""
    seen = {}
    for path in tmp.rglob("*"):
        if path.is_relative_to(run) or path.is_dir():
            continue
        st_ = path.lstat()
        seen[str(path.relative_to(tmp))] = (st_.st_size, st_.st_mtime_ns)
    return seen


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`taperprune ARGS` in this process (a subprocess per case cost seconds of torch import
    each), its output captured as piped output is: not a terminal, 80 columns."""
    from taperprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    old, sys.argv = sys.argv, ["taperprune", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = old
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _set(key: str, value: Any) -> Callable[[Any], Any]:
    return lambda d: d | {key: value}


def _drop(key: str) -> Callable[[Any], Any]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def _label(value: str) -> Callable[[Any], Any]:
    def change(summary: Any) -> Any:
        summary["snapshots"][1]["label"] = value
        return summary

    return change


def _link(path: Path, to: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(to)


def _unfinished(run: Path) -> Path:
    """The run as if interrupted: no summary.json, a checkpoint (content irrelevant here)."""
    (run / "summary.json").unlink()
    save_checkpoint(run / "checkpoint", {"phase": "taper"}, 7, "taper")
    return run / "checkpoint"


EXPORT = ["export", "{run}", "--budget", "0.25", "--format", "safetensors"]
S25 = "snapshots/25pct"


def _case(name: str, run: Path, elsewhere: Path) -> list[str]:
    """Tamper with the run copy for one case; the command line that reads it."""
    summary, metrics = run / "summary.json", run / S25 / "metrics.json"
    args = EXPORT
    if name == "label ../../../elsewhere/victim":
        _edit_json(summary, _label("../../../elsewhere/victim"))
    elif name == "label absolute path":
        _edit_json(summary, _label(str(elsewhere / "victim")))
    elif name == "label 25pct/../../..":
        _edit_json(summary, _label("25pct/../../../elsewhere/victim"))
    elif name == "snapshots/25pct is a symlink":
        _link(run / S25, elsewhere / "victim")
        args = ["export", "{run}", "--budget", "25pct", "--format", "onnx"]
    elif name == "metrics.json is a symlink":
        _link(metrics, elsewhere / "victim" / "metrics.json")
    elif name == "model.onnx is a symlink (default export target)":
        _link(run / S25 / "model.onnx", elsewhere / "victim" / "model.onnx")
        args = ["export", "{run}", "--budget", "25pct", "--format", "onnx"]
    elif name == "snapshot given directly, metrics.json a symlink":
        _link(metrics, elsewhere / "victim" / "metrics.json")
        args = ["export", f"{{run}}/{S25}", "--format", "safetensors"]
    elif name == "base is a symlink (bench-latency)":
        _link(run / "base", elsewhere / "victim")
        args = ["bench-latency", "{run}", "--batch", "1", "--runs", "1"]
    elif name == "summary: snapshots a string":
        _edit_json(summary, _set("snapshots", "50pct,25pct"))
    elif name == "summary: an entry without label":
        _edit_json(summary, lambda d: d | {"snapshots": [_drop("label")(d["snapshots"][0])]})
    elif name == "summary: full_macs missing":
        _edit_json(summary, _drop("full_macs"))
    elif name == "summary: full_macs 'abc'":
        _edit_json(summary, _set("full_macs", "abc"))
    elif name == "summary: a JSON list (report)":
        summary.write_text("[1, 2]")
        args = ["report", "{run}"]
    elif name == "metrics: no target":
        _edit_json(metrics, _drop("target"))
    elif name == "metrics: a JSON list":
        metrics.write_text("[]")
    elif name == "metrics: export_checks a list":
        _edit_json(metrics, _set("export_checks", []))
    elif name == "trace.csv: non-UTF-8 bytes (report)":
        (run / "trace.csv").write_bytes((run / "trace.csv").read_bytes()[:300] + b"\xff\xfe,\x80")
        args = ["report", "{run}"]
    elif name == "trace.csv: a word in a number column (report)":
        lines = (run / "trace.csv").read_text().splitlines()
        cells = lines[3].split(",")
        lines[3] = ",".join([*cells[:2], "abc", *cells[3:]])  # the budget column
        (run / "trace.csv").write_text("\n".join(lines) + "\n")
        args = ["report", "{run}"]
    elif name == "config.yaml: a bad setting":
        text = (run / "config.yaml").read_text().replace("batch_size: 32", "batch_size: -3")
        (run / "config.yaml").write_text(text)
    elif name == "resume: latest.json dir ../../elsewhere/ck":
        ck = _unfinished(run)
        shutil.copytree(next(ck.glob("step-*")), run.parent / "elsewhere" / "ck")
        _edit_json(ck / "latest.json", _set("dir", "../../elsewhere/ck"))
        args = ["prune", "--resume", "{run}"]
    elif name == "resume: latest.json dir absolute":
        ck = _unfinished(run)
        _edit_json(ck / "latest.json", _set("dir", str(elsewhere / "victim")))
        args = ["prune", "--resume", "{run}"]
    elif name == "resume: checkpoint/ is a symlink":
        ck = _unfinished(run)
        shutil.copytree(ck, elsewhere / "ck")
        _link(ck, elsewhere / "ck")
        args = ["prune", "--resume", "{run}"]
    elif name == 'resume: state.json {"phase": "taper"}':
        ck = _unfinished(run)
        (next(ck.glob("step-*")) / "state.json").write_text('{"phase": "taper"}')
        args = ["prune", "--resume", "{run}"]
    elif name == 'resume: state {"phase": "taper"} in format 1':
        _unfinished(run)
        args = ["prune", "--resume", "{run}"]
    elif name == "resume: latest.json a list":
        ck = _unfinished(run)
        (ck / "latest.json").write_text("[]")
        args = ["prune", "--resume", "{run}"]
    else:
        raise AssertionError(name)
    return [a.replace("{run}", str(run)) for a in args]


CASES = {  # case → what the one line names
    "label ../../../elsewhere/victim": "snapshots[1].label: '../../../elsewhere/victim' is not",
    "label absolute path": "summary.json: snapshots[1].label:",
    "label 25pct/../../..": "summary.json: snapshots[1].label:",
    "snapshots/25pct is a symlink": "25pct: path: a symbolic link to",
    "metrics.json is a symlink": "metrics.json: path: a symbolic link to",
    "model.onnx is a symlink (default export target)": "model.onnx: path: a symbolic link to",
    "snapshot given directly, metrics.json a symlink": "metrics.json: path: a symbolic link to",
    "base is a symlink (bench-latency)": "run/base: path: a symbolic link to",
    "summary: snapshots a string": "summary.json: snapshots: input should be a valid list",
    "summary: an entry without label": "summary.json: snapshots[0].label: field required",
    "summary: full_macs missing": "summary.json: full_macs: field required",
    "summary: full_macs 'abc'": "summary.json: full_macs: input should be a valid integer",
    "summary: a JSON list (report)": "summary.json: top level: a list where a mapping belongs",
    "metrics: no target": "metrics.json: target: field required",
    "metrics: a JSON list": "metrics.json: top level: a list",
    "metrics: export_checks a list": "metrics.json: export_checks: input should be a valid dict",
    "trace.csv: non-UTF-8 bytes (report)": "trace.csv: text: not UTF-8",
    "trace.csv: a word in a number column (report)": "trace.csv: line 4, column budget: input",
    "config.yaml: a bad setting": "config.yaml: batch_size: Input should be greater than",
    "resume: latest.json dir ../../elsewhere/ck": "latest.json: dir: '../../elsewhere/ck' is not",
    "resume: latest.json dir absolute": "latest.json: dir:",
    "resume: checkpoint/ is a symlink": "run/checkpoint: path: a symbolic link to",
    'resume: state.json {"phase": "taper"}': "state.json: format: field required",
    'resume: state {"phase": "taper"} in format 1': "checkpoint: phase_step: field required",
    "resume: latest.json a list": "latest.json: top level: a list",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tampered_run_is_one_line_exit_2_nothing_outside(
    world: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    run, elsewhere = world
    args = _case(case, run, elsewhere)
    before = _outside(tmp_path, run)
    res = _cli(*args)
    said = res.stdout + res.stderr
    assert res.returncode == 2, said
    assert "Traceback" not in said
    assert len(said.strip().splitlines()) == 1, said
    assert said.startswith("error: ") and CASES[case] in said, said
    assert _outside(tmp_path, run) == before


def test_the_run_itself_exports_and_out_may_go_anywhere(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    run, elsewhere = world
    res = _cli(*[a.replace("{run}", str(run)) for a in EXPORT], "--trust-model-file")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run / S25 / "25pct-with-plan.safetensors").is_file()
    metrics = json.loads((run / S25 / "metrics.json").read_text())
    assert metrics["export_checks"]["safetensors"]["passed"] is True
    chosen = elsewhere / "mine.safetensors"  # --out is the user's own choice
    res = _cli("export", str(run / S25), "--format", "safetensors", "--out", str(chosen))
    assert res.returncode == 0 and chosen.is_file(), res.stdout + res.stderr


def test_overwrite_removes_a_link_not_what_it_points_to(world: tuple[Path, Path]) -> None:
    run, elsewhere = world
    _link(run / "snapshots", elsewhere)
    check_out_dir(run, overwrite=True)
    assert not (run / "snapshots").exists() and (elsewhere / "keep.txt").is_file()


@pytest.mark.parametrize("full", [7, 100, 313_472, 10**9 + 7])
def test_every_label_budget_label_writes_fits_the_pattern(full: int) -> None:
    targets = range(1, full, max(1, full // 997))
    assert all(LABEL.fullmatch(budget_label(t, full)) for t in targets)
    assert LABEL.fullmatch(budget_label(full, full)) and budget_label(full, full) == "100pct"
    for bad in ("../x", "/tmp/x", "25pct/..", "25PCT", "pct", ".5pct", "25pct\n"):
        assert not LABEL.fullmatch(bad)


# ------------------------------------------------------------------ property test
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../x", "/tmp/x", "../../elsewhere/victim", "25pct", "1e+02pct", "50pct"]),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=3),
)
SUMMARY_KEYS = ["full_macs", "full_params", "base_acc", "seconds", "trace_rows", "snapshots"]
METRICS_KEYS = ["target", "macs", "params", "step", "acc_at_snapshot", "acc_finetuned"]
METRICS_KEYS += ["onnx_check", "speedup", "export_checks", "label"]
EDITS = st.tuples(
    st.sampled_from(["summary", "entry", "metrics"]),
    st.sampled_from(sorted({*SUMMARY_KEYS, *METRICS_KEYS, "label"})),
    st.one_of(st.just("<drop>"), VALUES),
)


def _apply(doc: Any, key: str, value: Any) -> Any:
    if value == "<drop>":
        doc.pop(key, None)
    else:
        doc[key] = value
    return doc


@settings(max_examples=25, deadline=None)
@given(edits=st.lists(EDITS, min_size=1, max_size=3), whole=st.sampled_from([None, [], "x", 3]))
def test_mutated_files_read_back_or_fail_in_one_line(
    made: Path, edits: list[tuple[str, str, Any]], whole: Any
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(made, run, ignore=shutil.ignore_patterns("*.safetensors"))
        summary = json.loads((run / "summary.json").read_text())
        metrics = json.loads((run / S25 / "metrics.json").read_text())
        for where, key, value in edits:
            if where == "summary":
                _apply(summary, key, value)
            elif where == "metrics":
                _apply(metrics, key, value)
            elif isinstance(summary.get("snapshots"), list) and summary["snapshots"]:
                entry = summary["snapshots"][-1]
                if isinstance(entry, dict):
                    _apply(entry, key, value)
        if whole is not None and len(edits) == 3:  # now and then, not a mapping at all
            metrics = whole
        (run / "summary.json").write_text(json.dumps(summary))
        (run / S25 / "metrics.json").write_text(json.dumps(metrics))
        try:
            files = read_run(run)
            for budget in ("25pct", "0.25", "0.5", str(files.summary["full_macs"] // 4)):
                try:
                    find_snapshot(files, budget)
                except TaperpruneError as exc:
                    assert "\n" not in str(exc)
            _snapshot_table(files), _run_meta(files)  # the report renders what was read
        except TaperpruneError as exc:
            assert "\n" not in str(exc) and str(exc).strip(), str(exc)
