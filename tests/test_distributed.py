"""torchrun + DDP on CPU (gloo, 2 processes): the same pruning state on every rank, and the
same result as one process with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from taperprune.run.config import RunConfig
from taperprune.run.pipeline import run_prune

MODEL = Path(__file__).parent / "models" / "user_models.py"
# No BatchNorm: per-process batch statistics would make 2 × 16 differ from 1 × 32.
SETTINGS = dict(
    model=f"{MODEL}:plain_cnn",
    data="synthetic:1x16x16:4",
    budgets=["0.5", "0.25"],
    pretrain_epochs=1.0,
    taper_epochs=1.0,
    finetune_epochs=0.5,
    batch_size=32,
    lr=0.2,
    prune_lr=0.2,
    warmup_steps=3,
    train_limit=256,
    test_limit=64,
    onnx=False,
    latency_batches=[],
    report=False,
    checkpoint_every=1,
)
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")


def _torchrun(cfg: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "taperprune", "prune"]
        + (["--config", str(cfg)] if cfg.is_file() else [])
        + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **popen,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)
    try:
        run_prune(RunConfig(**{**SETTINGS, "out": str(out)}))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return out


def _close(a: Path, b: Path) -> None:
    """Same trace (λ, MACs, loss), channel plans and weights within 1e-6."""
    ra = list(csv.DictReader((a / "trace.csv").read_text().splitlines()))
    rb = list(csv.DictReader((b / "trace.csv").read_text().splitlines()))
    assert len(ra) == len(rb) > 5
    for x, y in zip(ra, rb, strict=True):
        assert x["phase"] == y["phase"] and x["removed"] == y["removed"]
        for k in ("macs", "lam", "loss_ema"):
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-6, abs=1e-9, nan_ok=True), k
    for s in json.loads((a / "summary.json").read_text())["snapshots"]:
        da, db = a / "snapshots" / s["label"], b / "snapshots" / s["label"]
        pa = json.loads((da / "plan.json").read_text())
        assert pa["kept_units"] == json.loads((db / "plan.json").read_text())["kept_units"]
        wa, wb = load_file(str(da / "model.safetensors")), load_file(str(db / "model.safetensors"))
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k


def test_two_processes_agree_and_match_one(single: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**SETTINGS, "out": str(tmp_path / "ddp")}))
    proc = _torchrun(cfg)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2
    # masks, scores and λ: max − min over the two ranks, checked by the run itself
    assert summary["ranks_agree"] == {"masks": 0.0, "scores": 0.0, "lam": 0.0}
    assert output.count("taperprune — ") == 1  # only rank 0 reports
    _close(single, tmp_path / "ddp")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_two_processes_killed_then_resumed(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**SETTINGS, "out": str(out)}))
    proc = _torchrun(cfg)
    latest = out / "checkpoint" / "latest.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if latest.is_file() and json.loads(latest.read_text()).get("phase") == "taper":
            break
        assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.01)
    for pid in [*_descendants(proc.pid), proc.pid]:  # the workers run in their own sessions
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    resumed = _torchrun(tmp_path / "none.yaml", "--resume", str(out))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    _close(single, out)
