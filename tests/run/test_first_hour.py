"""A user's first hour: every setting is a flag with help, own builders get only what they
name, --input shapes synthetic data, and progress shows off a terminal too."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from _tiny_run import FAST_RUN
from taperprune.cli import app, main
from taperprune.errors import DataError, ModelError
from taperprune.models import build_model
from taperprune.run.config import RunConfig
from taperprune.run.data import load_data
from taperprune.run.flags import SETTING_HELP, setting_names
from taperprune.run.pipeline import run_prune
from taperprune.run.progress import PhaseProgress, format_duration

MODELS = Path(__file__).parents[1] / "models"


def test_every_setting_is_a_documented_flag() -> None:
    names = setting_names()
    assert set(names) == set(SETTING_HELP), "each setting needs one help line, and no more"
    assert set(names) == set(RunConfig().to_mapping())
    text = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "200"}).output
    for name in names:
        assert f"--{name.replace('_', '-')}" in text, name
    assert "[default: (0.05)]" in text  # --lr's default is shown


def test_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, RunConfig] = {}
    monkeypatch.setattr(
        "taperprune.run.pipeline.run_prune", lambda cfg, **_: seen.setdefault("c", cfg)
    )
    monkeypatch.setattr("taperprune.cli._print_result", lambda result: None)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.2\nworkers: 1\n")
    args = ["prune", "--config", str(cfg_file), "--lr", "0.01", "--finetune-lr", "0.002"]
    args += ["--warmup-steps", "7", "--model-kwargs", "{width: 8}", "--no-onnx"]
    args += ["--input", "1x20x20", "--latency-batches", "", "--skip-bad-images"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen["c"]
    assert (cfg.lr, cfg.finetune_lr, cfg.workers) == (0.01, 0.002, 1)  # flag > file > default
    assert cfg.method.warmup_steps == 7 and cfg.model_kwargs == {"width": 8}
    assert cfg.onnx is False and cfg.latency_batches == () and cfg.skip_bad_images
    assert cfg.input == "1x20x20"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input", "3x32"], "input: must be an input shape CxHxW"),
        (["--model-kwargs", "[1, 2]"], "model_kwargs: must be a YAML mapping"),
    ],
)
def test_bad_flag_values_are_one_line(args: list[str], needle: str, capsys) -> None:
    old = sys.argv
    sys.argv = ["taperprune", "prune", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    assert exc.value.code == 2 and needle in out and len(out.strip().splitlines()) == 1


def test_a_builder_gets_only_what_it_names() -> None:
    # `def build(num_classes=10, **kw): return MyNet(num_classes, **kw)`: in_channels is
    # not named, so it is not passed (it used to reach MyNet and fail).
    model = build_model(
        f"{MODELS / 'hostile_models.py'}:forwards_unknown_kwargs", num_classes=3, in_channels=1
    )
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 3)


def test_a_builder_argument_it_does_not_take_is_named(tmp_path: Path) -> None:
    f = tmp_path / "net.py"
    f.write_text(
        "from torch import nn\n"
        "def build(num_classes=10, width=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))\n"
    )
    with pytest.raises(ModelError, match=r"takes no argument depth \(it takes: num_classes"):
        build_model(f"{f}:build", num_classes=3, depth=2)


def test_a_builder_that_raises_is_one_line_naming_its_arguments() -> None:
    with pytest.raises(ModelError) as exc:
        build_model(f"{MODELS / 'hostile_models.py'}:raises", num_classes=4, in_channels=1)
    text = str(exc.value)
    assert "raised RuntimeError: the builder broke" in text and "num_classes=4" in text
    assert "\n" not in text


def test_input_shapes_synthetic_data_and_must_match_fixed_sets() -> None:
    data = load_data("synthetic", batch_size=8, input_shape=(3, 12, 10), train_limit=16)
    assert data.input_shape == (3, 12, 10)
    assert next(iter(data.train))[0].shape == (8, 3, 12, 10)
    with pytest.raises(DataError, match="does not match data set synthetic:1x8x8:2"):
        load_data("synthetic:1x8x8:2", batch_size=8, input_shape=(3, 8, 8))


def test_bare_synthetic_takes_the_models_usual_input() -> None:
    from taperprune.run.prepare import input_shape

    assert input_shape(RunConfig(model="resnet20", data="synthetic")) == (3, 32, 32)
    assert input_shape(RunConfig(model="demo_cnn", data="synthetic")) == (1, 28, 28)
    assert input_shape(RunConfig(model="resnet20", data="synthetic:1x8x8:2")) is None
    assert input_shape(RunConfig(data="synthetic", input="3x9x9")) == (3, 9, 9)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_off_a_terminal_with_eta() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=80)
    clock = _Clock()
    with PhaseProgress(console, "prune: taper", 100, every=30, clock=clock) as prog:
        for step in range(1, 101):
            clock.now += 1.0  # one second a step: a line every 30 steps
            prog.update(step, f"MACs {100 - step}%")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "prune: taper 0/100 started"
    assert lines[1] == "prune: taper 30/100 (30%), 0:30 elapsed, ETA 1:10 | MACs 70%"
    assert len(lines) == 5 and lines[-1] == "prune: taper 100/100 done in 1:40"
    assert format_duration(3725) == "1:02:05"


def test_a_run_logs_progress_when_output_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPERPRUNE_PROGRESS_SECONDS", "0")
    buf = io.StringIO()
    cfg = RunConfig(**{**FAST_RUN, "out": str(tmp_path / "run")})
    run_prune(cfg, console=Console(file=buf, force_terminal=False, width=80))
    text = buf.getvalue()
    for phase in ("pretrain", "prune: warm-up", "prune: taper", "fine-tune 50pct"):
        assert re.search(rf"^{phase} \d+/\d+ \(\d+%\), \d+:\d\d elapsed, ETA", text, re.M), phase
    assert "budget" in text and "loss" in text
