"""What a run leaves: every file read back, exports that reproduce the model, latency, report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny_run import TINY_RUN
from taperprune.errors import TaperpruneError
from taperprune.export import check_onnx, export_onnx, export_torchscript
from taperprune.latency import onnx_latency, speedups, torch_latency
from taperprune.models import demo_cnn
from taperprune.plan import load, make_plan, read_plan, save_snapshot_files, save_with_plan
from taperprune.pruner import TaperPruner
from taperprune.run.config import RunConfig
from taperprune.run.pipeline import run_prune
from taperprune.run.rundir import find_snapshot, read_run

SRC = Path(__file__).parents[1] / "src" / "taperprune"
RUN = dict(
    **TINY_RUN,
    finetune_epochs=0.25,
    warmup_steps=5,
    train_limit=384,
    test_limit=64,
    latency_batches=(1, 4),
    latency_runs=3,
)
RUN_FILES = [
    "config.yaml",
    "trace.csv",
    "summary.json",
    "report.html",
    "pareto.png",
    "trace.png",
    "widths.png",
    "base/plan.json",
    "base/model.safetensors",
    "base/model.onnx",
]
SNAPSHOT_FILES = ["plan.json", "model.safetensors", "metrics.json", "model.onnx"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    run_prune(RunConfig(out=str(out), **RUN))  # type: ignore[arg-type]
    return out


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taperprune", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_every_file_of_the_run_is_written_and_read_back(run: Path) -> None:
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    files = read_run(run)
    assert [s.label for s in files.snapshots] == ["50pct", "25pct"]
    assert len(files.trace) == files.summary["trace_rows"] > 5
    assert files.config["model"] == "demo_cnn"
    assert files.base_plan["macs"] == files.summary["full_macs"]
    for snap in files.snapshots:
        for name in SNAPSHOT_FILES:
            assert (snap.directory / name).is_file(), (snap.label, name)
        m = snap.metrics
        assert m["onnx_check"]["passed"] and m["onnx_check"]["max_abs_diff"] <= 1e-4 * max(
            m["onnx_check"]["output_scale"], 1.0
        )
        measured = {(lat["runtime"], lat["batch"]) for lat in m["latency"]}
        assert measured == {(r, b) for r in ("torch", "onnxruntime") for b in (1, 4)}
        assert set(m["speedup"]) == {"torch/b1", "torch/b4", "onnxruntime/b1", "onnxruntime/b4"}
        assert m["mac_reduction"] == pytest.approx(m["full_macs"] / m["macs"])
        for lat in m["latency"]:
            assert 0 < lat["median_ms"] <= lat["p90_ms"] and lat["threads"] >= 1
        # The ONNX file computes what the loaded model computes.
        assert check_onnx(load(snap.directory), (1, 16, 16), snap.directory / "model.onnx").passed


@pytest.mark.parametrize(
    "name",
    [
        "config.yaml",
        "trace.csv",
        "summary.json",
        "base/plan.json",
        "snapshots/25pct/plan.json",
        "snapshots/25pct/metrics.json",
    ],
)
def test_a_truncated_run_file_is_named(run: Path, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    f = copy / name
    text = f.read_text()
    f.write_text(text[: len(text) // 2])
    with pytest.raises(TaperpruneError, match=re.escape(name.split("/")[-1])):
        read_run(copy)


def test_a_truncated_trace_at_a_row_boundary_is_caught(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lines = (copy / "trace.csv").read_text().splitlines(keepends=True)
    (copy / "trace.csv").write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(TaperpruneError, match="trace.csv.*truncated"):
        read_run(copy)


def test_corrupted_weights_and_onnx_are_named(run: Path, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    shutil.copytree(run / "snapshots" / "50pct", snap)
    onnx = snap / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:200])
    with pytest.raises(TaperpruneError, match="model.onnx"):
        onnx_latency(onnx, (1, 16, 16), 1, runs=1)
    w = snap / "model.safetensors"
    w.write_bytes(b"\x00" * 16)
    with pytest.raises(TaperpruneError, match="model.safetensors"):
        load(snap)


def _pruned_in_memory() -> tuple[TaperPruner, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = demo_cnn(num_classes=3, width=6)
    example = torch.zeros(1, 1, 12, 12)
    pruner = TaperPruner(model, example, budgets=[0.4], steps=6, keep_snapshot_models=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    while not pruner.done:
        x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(loss)
    small = pruner.export(0.4).eval()
    return pruner, small, torch.randn(5, 1, 12, 12)


def test_round_trip_every_format_reproduces_the_in_memory_model(tmp_path: Path) -> None:
    pruner, small, x = _pruned_in_memory()
    with torch.no_grad():
        ref = small(x)
    snap = next(iter(pruner.snapshots.values()))
    plan = make_plan(
        pruner.graph,
        snap.keep,
        model_name="demo_cnn",
        model_kwargs={"num_classes": 3, "width": 6},
        macs=snap.macs,
        params=sum(p.numel() for p in small.parameters()),
    )
    save_snapshot_files(tmp_path / "snap", small, plan, {})
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "snap").eval()(x), ref)
    save_with_plan(tmp_path / "one.safetensors", small, plan)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "one.safetensors").eval()(x), ref)
    check = export_torchscript(small, (1, 12, 12), tmp_path / "m.pt")
    assert check is not None and check.passed and check.max_abs_diff == 0.0
    with torch.no_grad(), pytest.warns(FutureWarning, match="deprecated"):
        assert torch.equal(torch.jit.load(str(tmp_path / "m.pt"))(x), ref)
    check = export_onnx(small, (1, 12, 12), tmp_path / "m.onnx")
    assert check is not None and check.passed
    import onnxruntime as ort

    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), ref, atol=1e-4 * float(ref.abs().max()))


def test_load_with_a_user_instance_and_a_plan_for_another_model(tmp_path: Path) -> None:
    pruner, small, x = _pruned_in_memory()
    snap = next(iter(pruner.snapshots.values()))
    plan = make_plan(
        pruner.graph,
        snap.keep,
        model_name="not-a-builder",
        model_kwargs={},
        macs=snap.macs,
        params=0,
    )
    save_snapshot_files(tmp_path / "snap", small, plan, {})
    mine = load(tmp_path / "snap", model=demo_cnn(num_classes=3, width=6)).eval()
    with torch.no_grad():
        assert torch.equal(mine(x), small(x))
    wrong = "layer '0' has 1 → 6 channels in the plan, the model has 1 → 8"
    with pytest.raises(TaperpruneError, match=wrong):
        load(tmp_path / "snap", model=demo_cnn(num_classes=3, width=8))


def test_weights_without_a_plan_are_refused(run: Path, tmp_path: Path) -> None:
    with pytest.raises(TaperpruneError, match="no channel plan"):
        read_plan(run / "snapshots" / "50pct" / "model.safetensors")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_cli_export_checks_and_records_each_format(run: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"m.{fmt}"
    res = _cli("export", str(run), "--budget", "0.25", "--format", fmt, "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{fmt} check passed" in res.stdout and out.is_file()
    metrics = json.loads((run / "snapshots" / "25pct" / "metrics.json").read_text())
    assert metrics["export_checks"][fmt]["passed"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "onnx"], "choose one with --budget"),
        (["--budget", "0.3"], "no snapshot at budget 0.3"),
        (["--budget", "0.25", "--format", "tflite"], "--format must be one of"),
    ],
)
def test_cli_export_bad_input(run: Path, args: list[str], needle: str) -> None:
    res = _cli("export", str(run), *args)
    assert res.returncode == 2 and needle in res.stdout and "Traceback" not in res.stderr


def test_find_snapshot_by_label_fraction_and_macs(run: Path) -> None:
    files = read_run(run)
    snap = files.snapshots[1]
    assert find_snapshot(files, "25pct") is snap
    assert find_snapshot(files, "0.25") is snap
    assert find_snapshot(files, str(snap.metrics["target"])) is snap


def test_latency_measures_and_restores_threads() -> None:
    model = demo_cnn(width=4)
    before = torch.get_num_threads()
    lat = torch_latency(model, (1, 28, 28), 2, threads=1, warmup=1, runs=5, min_seconds=0.0)
    assert torch.get_num_threads() == before
    assert lat.threads == 1 and lat.runs == 5 and 0 < lat.median_ms <= lat.p90_ms
    # By default a measurement goes on past `runs` until half a second is timed.
    assert torch_latency(model, (1, 28, 28), 2, threads=1, warmup=1, runs=5).runs > 5
    assert speedups([lat], [lat]) == {"torch/b2": 1.0}
    with pytest.raises(TaperpruneError, match="batch, runs and threads"):
        torch_latency(model, (1, 28, 28), 0)


def test_cli_bench_latency_of_a_run_a_model_and_an_onnx_file(run: Path) -> None:
    res = _cli("bench-latency", str(run), "--batch", "1", "--runs", "2", "--runtime", "torch")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "threads:" in res.stdout
    for label in ("unpruned", "50pct", "25pct"):
        assert label in res.stdout
    onnx = str(run / "snapshots" / "25pct" / "model.onnx")
    res = _cli("bench-latency", onnx, "--runtime", "onnxruntime", "--batch", "2", "--runs", "2")
    assert res.returncode == 0 and "onnxruntime" in res.stdout, res.stdout + res.stderr
    res = _cli("bench-latency", "demo_cnn", "--input", "1x28x28", "--batch", "1", "--runs", "2")
    assert res.returncode == 0 and "demo_cnn" in res.stdout, res.stdout + res.stderr
    res = _cli("bench-latency", "demo_cnn", "--runtime", "tvm")
    assert res.returncode == 2 and "--runtime must be among" in res.stdout


def _pngs(html: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([^\"]+)", html)]


def test_report_embeds_every_plot(run: Path) -> None:
    html = (run / "report.html").read_text()
    images = _pngs(html)
    assert len(images) == 3
    for data in images:
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert "http://" not in html and "https://" not in html  # opens offline
    for text in ("25%", "50%", "ONNX check", "passed", "Settings"):
        assert text in html


def test_report_overlays_several_runs(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    res = _cli("report", str(run), str(other), "--out", str(tmp_path / "cmp"))
    assert res.returncode == 0, res.stdout + res.stderr
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert len(_pngs(html)) == 1 and "2 runs compared" in html
    assert "full" in html and "other" in html


def test_report_of_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    res = _cli("report", str(tmp_path))
    assert res.returncode == 2 and "not a taperprune run directory" in res.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_report_renders_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=3000",
    ]
    page = (run / "report.html").as_uri()
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    # The page's own script counts the images the browser decoded (naturalWidth > 0).
    assert 'data-images-decoded="3/3"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "page.png"
    subprocess.run(
        [str(CHROMIUM), *flags, "--window-size=1000,2400", f"--screenshot={shot}", page],
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 2400 and pixels.std() > 0.05  # not a blank page


def test_no_pickle_and_no_unsafe_torch_load_in_the_package() -> None:
    for path in SRC.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"import (c?pickle|dill)|pickle\.load|from pickle", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
