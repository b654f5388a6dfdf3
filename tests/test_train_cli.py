"""End-to-end: the training pipeline, the run directory, loading snapshots, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

import taperprune
from _tiny_run import FAST_RUN
from taperprune.cli import app
from taperprune.cost import count_macs
from taperprune.errors import TaperpruneError
from taperprune.files import load_weights, save_weights
from taperprune.models import demo_cnn
from taperprune.run.config import RunConfig
from taperprune.run.pipeline import run_prune
from taperprune.run.state import RunResult

FAST = FAST_RUN


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    out = tmp_path_factory.mktemp("runs") / "r1"
    result = run_prune(RunConfig(out=str(out), **FAST))  # type: ignore[arg-type]
    return out, result


def test_run_writes_every_file_and_meets_budgets(run_dir) -> None:
    out, result = run_dir
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["budgets"] == ["0.5", "0.25"] and cfg["model"] == "demo_cnn"
    trace = (out / "trace.csv").read_text().splitlines()
    assert trace[0].startswith("step,phase,budget,macs,lam")
    assert len(trace) > 10
    assert (out / "base" / "model.safetensors").is_file()
    assert [s.label for s in result.snapshots] == ["50pct", "25pct"]
    for snap in result.snapshots:
        d = out / "snapshots" / snap.label
        metrics = json.loads((d / "metrics.json").read_text())
        plan = json.loads((d / "plan.json").read_text())
        assert metrics["macs"] <= metrics["target"]
        assert plan["macs"] == metrics["macs"] and plan["schema"] == 1
        model = taperprune.load(d)
        assert count_macs(model, torch.zeros(1, 1, 16, 16)) == plan["macs"]
        assert 0 <= metrics["acc_finetuned"] <= 100
        # BN statistics are recalibrated at the snapshot and after the (short) fine-tune:
        # without that this tiny run read 58.6 -> 79.7 and 56.3 -> 54.7 (4 classes: chance 25).
        assert metrics["acc_at_snapshot"] >= 65
        assert metrics["acc_finetuned"] >= metrics["acc_at_snapshot"]


def test_loaded_snapshot_computes_the_saved_function(run_dir) -> None:
    out, _ = run_dir
    d = out / "snapshots" / "25pct"
    model = taperprune.load(d).eval()
    state = load_weights(d / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    x = torch.randn(3, 1, 16, 16)
    again = taperprune.load(d).eval()
    assert torch.equal(model(x), again(x))


def test_same_seed_same_plan(run_dir, tmp_path: Path) -> None:
    out, _ = run_dir
    result = run_prune(RunConfig(out=str(tmp_path / "r2"), **FAST))  # type: ignore[arg-type]
    for snap in result.snapshots:
        a = json.loads((out / "snapshots" / snap.label / "plan.json").read_text())
        b = json.loads((tmp_path / "r2" / "snapshots" / snap.label / "plan.json").read_text())
        assert a["kept_units"] == b["kept_units"]


def test_refuses_to_overwrite_a_run(run_dir) -> None:
    out, _ = run_dir
    before = (out / "config.yaml").read_bytes()
    with pytest.raises(TaperpruneError, match="already holds a run"):
        run_prune(RunConfig(out=str(out), **FAST))  # type: ignore[arg-type]
    assert (out / "config.yaml").read_bytes() == before


def test_overwrite_replaces_the_old_run_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_prune(RunConfig(out=str(out), **{**FAST, "budgets": ("0.5",), "finetune_epochs": 0.0}))  # type: ignore[arg-type]
    (out / "notes.txt").write_text("mine")
    run_prune(
        RunConfig(out=str(out), **{**FAST, "budgets": ("0.25",), "finetune_epochs": 0.0}),  # type: ignore[arg-type]
        overwrite=True,
    )
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["25pct"]
    assert (out / "notes.txt").read_text() == "mine"


def test_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(TaperpruneError, match="not a taperprune run"):
        run_prune(RunConfig(out=str(tmp_path), **FAST))  # type: ignore[arg-type]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_corrupted_snapshot_files_name_themselves(run_dir, tmp_path: Path) -> None:
    out, _ = run_dir
    import shutil

    d = tmp_path / "snap"
    shutil.copytree(out / "snapshots" / "50pct", d)
    (d / "plan.json").write_text((d / "plan.json").read_text()[:50])
    with pytest.raises(TaperpruneError, match="plan.json"):
        taperprune.load(d)
    shutil.copytree(out / "snapshots" / "50pct", tmp_path / "snap2")
    w = tmp_path / "snap2" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(TaperpruneError, match="model.safetensors"):
        taperprune.load(tmp_path / "snap2")


def test_plan_for_another_model_is_refused(run_dir, tmp_path: Path) -> None:
    out, _ = run_dir
    import shutil

    d = tmp_path / "snap"
    shutil.copytree(out / "snapshots" / "50pct", d)
    plan = json.loads((d / "plan.json").read_text())
    plan["model"]["kwargs"]["width"] = 4
    (d / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(TaperpruneError, match="another model"):
        taperprune.load(d)


def test_weights_round_trip_and_start_from_weights(tmp_path: Path) -> None:
    model = demo_cnn(num_classes=4, width=8)
    save_weights(tmp_path / "w.safetensors", model)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        state = load_weights(tmp_path / f)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    cfg = RunConfig(
        out=str(tmp_path / "run"),
        weights=str(tmp_path / "w.safetensors"),
        **{**FAST, "pretrain_epochs": 5.0, "finetune_epochs": 0.0},
    )  # type: ignore[arg-type]
    result = run_prune(cfg)
    assert len(result.snapshots) == 2
    base = load_weights(tmp_path / "run" / "base" / "model.safetensors")
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())  # no pretraining


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    save_weights(tmp_path / "w.safetensors", demo_cnn(num_classes=4, width=4))
    cfg = RunConfig(out=str(tmp_path / "run"), weights=str(tmp_path / "w.safetensors"), **FAST)  # type: ignore[arg-type]
    with pytest.raises(TaperpruneError, match="do not fit"):
        run_prune(cfg)


runner = CliRunner()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taperprune", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_macs_anchor() -> None:
    res = _cli("macs", "alexnet_bvlc", "--input", "3x227x227", "--num-classes", "1000")
    assert res.returncode == 0, res.stderr
    assert "724,406,816" in res.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["macs", "nosuchmodel"], "unknown model"),
        (["macs", "demo_cnn", "--input", "3xax2"], "CxHxW"),
        (["macs", "demo_cnn", "--input", "1x1x1"], "does not fit the model"),
        (["prune", "--data", "nosuch", "--out", "{tmp}/x"], "unknown data set"),
        (
            ["prune", "--data", "synthetic", "--budgets", "0.25,0.5", "--out", "{tmp}/x"],
            "strictly decreasing",
        ),
        (
            ["prune", "--data", "synthetic", "--budgets", "1.5", "--out", "{tmp}/x"],
            "fractions must be in (0, 1)",
        ),
        (
            ["prune", "--data", "synthetic", "--budgets", "2G", "--out", "{tmp}/x"],
            "not below the model",
        ),
        (["prune", "--data", "synthetic", "--budgets", "0", "--out", "{tmp}/x"], "must be > 0"),
        (
            ["prune", "--data", "synthetic", "--budgets", "0.00001", "--out", "{tmp}/x"],
            "least this model can reach",
        ),
        (["prune", "--data", "fashion-mnist:/nonexistent", "--out", "{tmp}/x"], "apt-get"),
    ],
)
def test_cli_bad_input_one_clear_line_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "prune":
        args += ["--pretrain-epochs", "0", "--train-limit", "256", "--test-limit", "64"]
    res = _cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in " ".join(res.stdout.split())
    assert "Traceback" not in res.stdout + res.stderr


def test_cli_prune_with_config_file_and_flag_override(tmp_path: Path) -> None:
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in FAST.items()}
    cfg["budgets"] = "0.9,0.5"  # overridden below
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["prune", "--config", str(tmp_path / "cfg.yaml"), "--budgets", "0.5", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["budgets"] == ["0.5"]
    assert (out / "snapshots" / "50pct" / "plan.json").is_file()


def test_cli_config_with_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("modle: demo_cnn\n")
    res = _cli("prune", "--config", str(tmp_path / "cfg.yaml"))
    assert res.returncode == 2 and "unknown settings" in res.stdout


def test_readme_config_block_lists_every_default() -> None:
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"### The config file.*?```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    documented = yaml.safe_load(block.group(1))
    assert documented == RunConfig().to_mapping()


class _Batches:
    """A loader that can be iterated again (as a DataLoader can), 700 batches each time."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        from itertools import cycle, islice

        return islice(cycle(self.loader), 700)


def test_readme_training_loop_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's 'own training loop' snippet, executed on a small model and data: it
    prunes, fine-tunes, saves and loads back the same function."""
    import re

    from taperprune.models import resnet20
    from taperprune.run.data import load_data

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## In your own training loop\n\n```python\n(.*?)```", readme, re.S)
    assert code is not None
    torch.manual_seed(0)
    model = resnet20()
    data = load_data("synthetic:3x32x32:10", batch_size=32)
    scope = {
        "model": model,
        "loader": _Batches(data.train),
        "criterion": torch.nn.CrossEntropyLoss(),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
        "build_unpruned_model": resnet20,
    }
    monkeypatch.chdir(tmp_path)
    exec(code.group(1), scope)
    pruner = scope["pruner"]
    assert pruner.done
    assert count_macs(scope["small"], torch.zeros(1, 3, 32, 32)) <= pruner.budgets[1]
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert pruner.snapshots[0.25] is pruner.snapshots[pruner.budgets[1]]
    x = torch.randn(4, 3, 32, 32)
    small, again = scope["small"].eval(), scope["again"].eval()
    assert torch.equal(small(x), again(x))


def test_recalibrate_bn_estimates_the_data_statistics() -> None:
    from taperprune.calibrate import recalibrate_bn

    bn = torch.nn.BatchNorm2d(3, momentum=0.1).eval()
    x = torch.randn(64, 3, 4, 4) * 2 + 5
    loader = [(x[i : i + 16], torch.zeros(16)) for i in range(0, 64, 16)]
    recalibrate_bn(bn, loader, torch.device("cpu"), batches=4)  # type: ignore[arg-type]
    means = torch.stack([b.mean((0, 2, 3)) for b, _ in loader]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert bn.momentum == 0.1 and not bn.training
