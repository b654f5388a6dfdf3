"""Faults a long run must survive: SIGKILL, Ctrl-C, NaN losses, bad inputs, several processes."""

from __future__ import annotations

import json
import os
import random
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

from _tiny_run import NO_OUTPUTS, TINY_RUN
from taperprune.errors import TaperpruneError
from taperprune.run.checkpoint import load_checkpoint, save_checkpoint
from taperprune.run.config import RunConfig
from taperprune.run.data import BatchStream
from taperprune.run.pipeline import resume_run, run_prune

MODELS = Path(__file__).parent / "models" / "user_models.py"
TINY = dict(
    **TINY_RUN,
    **NO_OUTPUTS,
    finetune_epochs=0.5,
    warmup_steps=3,
    train_limit=256,
    test_limit=64,
    bn_recalibration_batches=4,
    checkpoint_every=1,
)


def _env() -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "COLUMNS": "200",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    # The thread count the in-process reference runs with (conftest sets it under xdist):
    # runs with different thread counts round differently, and these compare bit for bit.
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    return env


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taperprune", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=300,
    )


def _same_results(a: Path, b: Path) -> None:
    """Bit-equal channel plans, weights, trace and accuracies."""
    sa, sb = (
        json.loads((a / "summary.json").read_text()),
        json.loads((b / "summary.json").read_text()),
    )
    assert [s["label"] for s in sa["snapshots"]] == [s["label"] for s in sb["snapshots"]]
    assert (a / "trace.csv").read_text() == (b / "trace.csv").read_text()
    wa, wb = (
        load_file(str(a / "base" / "model.safetensors")),
        load_file(str(b / "base" / "model.safetensors")),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for s in sa["snapshots"]:
        da, db = a / "snapshots" / s["label"], b / "snapshots" / s["label"]
        pa, pb = (
            json.loads((da / "plan.json").read_text()),
            json.loads((db / "plan.json").read_text()),
        )
        assert pa["kept_units"] == pb["kept_units"]
        wa, wb = load_file(str(da / "model.safetensors")), load_file(str(db / "model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (s["label"], k)
        ma, mb = (
            json.loads((da / "metrics.json").read_text()),
            json.loads((db / "metrics.json").read_text()),
        )
        assert (ma["acc_at_snapshot"], ma["acc_finetuned"]) == (
            mb["acc_at_snapshot"],
            mb["acc_finetuned"],
        )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (in this process) of the settings the fault tests use."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_prune(RunConfig(out=str(out), **TINY))  # type: ignore[arg-type]
    assert not (out / "checkpoint").exists()  # a finished run leaves nothing to resume
    return out


def _start(out: Path, tmp: Path) -> subprocess.Popen[str]:
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg | {"out": str(out)}))
    return subprocess.Popen(
        [sys.executable, "-m", "taperprune", "prune", "--config", str(tmp / "cfg.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def _wait_for_checkpoint(proc: subprocess.Popen[str], out: Path, step: int) -> dict:
    latest = out / "checkpoint" / "latest.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if latest.is_file():
            try:
                pointer = json.loads(latest.read_text())
            except json.JSONDecodeError:  # never half-written (atomic), but be safe
                pointer = {}
            if pointer.get("step", -1) >= step:
                return pointer
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stdout.read()}"  # type: ignore[union-attr]
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


# Three kill points, drawn at random (seeded) from the first, middle and last third of the
# run's optimizer steps, so pretraining, the taper and the fine-tunes are all interrupted.
@pytest.mark.parametrize("third", [0, 1, 2])
def test_sigkill_then_resume_ends_bit_equal(reference: Path, tmp_path: Path, third: int) -> None:
    total = json.loads((reference / "summary.json").read_text())["optimizer_steps"]
    lo, hi = 1 + third * total // 3, max(1 + third * total // 3, (third + 1) * total // 3 - 1)
    kill_at = random.Random(third).randint(lo, hi)
    out = tmp_path / "run"
    proc = _start(out, tmp_path)
    pointer = _wait_for_checkpoint(proc, out, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    res = _cli("prune", "--resume", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    _same_results(reference, out)
    print(f"killed after checkpoint {pointer} (drawn step {kill_at} of {total})")


def test_ctrl_c_checkpoints_and_says_how_to_resume(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, tmp_path)
    _wait_for_checkpoint(proc, out, 12)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert f"taperprune prune --resume {out}" in " ".join(output.split())
    assert "Traceback" not in output
    assert json.loads((out / "checkpoint" / "latest.json").read_text())["step"] >= 12
    res = _cli("prune", "--resume", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    _same_results(reference, out)


def _nan_cfg(out: Path, steps: str, **extra: object) -> RunConfig:
    os.environ["TAPERPRUNE_TEST_NAN_STEPS"] = steps
    base = {**TINY, "model_kwargs": {}, "model": f"{MODELS}:nan_cnn", "checkpoint_every": 0}
    return RunConfig(out=str(out), **(base | extra))  # type: ignore[arg-type]


def test_nan_steps_are_skipped_and_never_reach_weights_or_scores(tmp_path: Path) -> None:
    # Forward passes 12-14 (in the taper: pretraining has 8 steps) return NaN.
    try:
        result = run_prune(_nan_cfg(tmp_path / "run", "12,13,14"))
    finally:
        os.environ.pop("TAPERPRUNE_TEST_NAN_STEPS")
    rows = (tmp_path / "run" / "trace.csv").read_text().splitlines()
    skipped = [r for r in rows if ",skipped," in r]
    assert len(skipped) == 3
    assert len(result.snapshots) == 2
    for s in result.snapshots:
        w = load_file(str(tmp_path / "run" / "snapshots" / s.label / "model.safetensors"))
        assert all(bool(torch.isfinite(t).all()) for t in w.values())


def test_too_many_nan_steps_stop_with_a_usable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    try:
        with pytest.raises(TaperpruneError, match="4 consecutive.*--resume") as err:
            run_prune(_nan_cfg(out, "3,4,5,6", max_bad_steps=4))
    finally:
        os.environ.pop("TAPERPRUNE_TEST_NAN_STEPS")
    assert "Lower the learning rate" in str(err.value)
    state = load_checkpoint(out / "checkpoint")
    assert state["phase"] == "pretrain" and state["phase_step"] == 6
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    result = resume_run(out)  # the fault is gone (no NaN steps set): the run finishes
    assert len(result.snapshots) == 2


def test_checkpoint_round_trip_keeps_types() -> None:
    import numpy as np

    state = {
        "t": torch.arange(5.0),
        "opt": {"state": {0: {"m": torch.ones(2)}}, "groups": [{"lr": 0.1, "params": [0]}]},
        "rng": (3, (1, 2), None),
        "np": np.random.get_state(),
        "f": float("nan"),
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), state, 7, "taper")
        save_checkpoint(Path(tmp), state, 7, "taper")  # same step twice: never clobbered
        back = load_checkpoint(Path(tmp))
        assert len(list(Path(tmp).glob("step-*"))) == 1
    assert torch.equal(back["t"], state["t"]) and back["opt"]["state"][0]["m"].sum() == 2
    assert back["rng"] == (3, (1, 2), None) and back["opt"]["groups"][0]["params"] == [0]
    assert back["np"][0] == "MT19937" and (back["np"][1] == state["np"][1]).all()
    assert back["f"] != back["f"]


def test_batch_stream_resumes_and_shards_like_one_process() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(100.0), torch.arange(100))
    one = BatchStream(data, 8, seed=3)
    first = [y.tolist() for _, y in one.batches(20)]  # crosses an epoch (12 per epoch)
    again = BatchStream(data, 8, seed=3)
    list(again.batches(7))
    saved = again.state_dict()
    later = BatchStream(data, 8, seed=3)
    later.load_state_dict(saved)
    assert [y.tolist() for _, y in later.batches(13)] == first[7:]
    ranks = [BatchStream(data, 8, seed=3, rank=r, world=2) for r in range(2)]
    halves = [[y.tolist() for _, y in s.batches(20)] for s in ranks]
    assert [a + b for a, b in zip(*halves, strict=True)] == first
    with pytest.raises(TaperpruneError, match="divisible"):
        BatchStream(data, 9, seed=0, world=2)


# ------------------------------------------------------------------ bad inputs
def _bad(tmp: Path, case: str) -> list[str]:
    """The command line of one bad-input case (files it needs are made here)."""
    run = ["prune", "--data", "synthetic:1x16x16:4", "--pretrain-epochs", "0"]
    run += ["--train-limit", "128", "--test-limit", "32", "--out", str(tmp / "x")]
    if case == "no prunable layer":
        return run + ["--model", f"{MODELS}:linear_only"]
    if case == "unsupported layer":
        return run + ["--model", f"{MODELS}:unsupported_layer"]
    if case == "model file fails to import":
        return run + ["--model", f"{MODELS.parent / 'broken_import.py'}:build"]
    if case == "model file missing":
        return run + ["--model", str(tmp / "nope.py:build")]
    if case == "function missing":
        return run + ["--model", f"{MODELS}:nope"]
    if case == "resume: not a run":
        return ["prune", "--resume", str(tmp)]
    if case == "resume with flags":
        (tmp / "config.yaml").write_text("model: demo_cnn\n")
        return ["prune", "--resume", str(tmp), "--seed", "3"]
    if case == "batch size > data":
        return run + ["--batch-size", "4096"]
    raise AssertionError(case)


BAD_INPUTS = {
    "no prunable layer": "no prunable channel group",
    "unsupported layer": "cannot mask it exactly; exclude it with --exclude",
    "model file fails to import": "importing model file",
    "model file missing": "does not exist",
    "function missing": "has no function 'nope'",
    "resume: not a run": "not a taperprune run directory",
    "resume with flags": "--resume continues with the run's own config.yaml",
    "batch size > data": "fewer than one batch",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_message_exit_2_nothing_written(case: str, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _cli(*_bad(tmp_path, case))
    assert res.returncode == 2, res.stdout + res.stderr
    assert BAD_INPUTS[case] in " ".join(res.stdout.split()), res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before or after == sorted([*before, "config.yaml"]), (before, after)
    assert not (tmp_path / "x").exists()


def test_resume_errors_name_the_problem(reference: Path, tmp_path: Path) -> None:
    res = _cli("prune", "--resume", str(reference))
    assert res.returncode == 2 and "has finished" in " ".join(res.stdout.split())
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    (copy / "summary.json").unlink()
    res = _cli("prune", "--resume", str(copy))
    assert res.returncode == 2 and "no checkpoint" in " ".join(res.stdout.split())


def test_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, tmp_path)
    _wait_for_checkpoint(proc, out, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = out / "checkpoint"
    where = ckpt / json.loads((ckpt / "latest.json").read_text())["dir"]
    tensors = where / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:64])
    res = _cli("prune", "--resume", str(out))
    said = " ".join(res.stdout.split())
    assert res.returncode == 2 and "tensors.safetensors is corrupted or truncated" in said
    (where / "state.json").write_text("{")
    res = _cli("prune", "--resume", str(out))
    assert res.returncode == 2 and "state.json" in res.stdout
