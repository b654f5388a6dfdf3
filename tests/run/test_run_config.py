"""The one run config: every setting reachable, each checked when the config is built, and
the errors one line that names the setting."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from taperprune.errors import TaperpruneError
from taperprune.latency import RUNTIMES
from taperprune.run.config import (
    METHOD_KEYS,
    RunConfig,
    config_from_mapping,
    dump_config,
    read_config_file,
)
from taperprune.schedule import ScheduleConfig, ScheduleKind
from taperprune.settings import PriceKind, PrunerConfig, ScoreKind


def test_every_method_setting_is_a_flat_key() -> None:
    paths = set(METHOD_KEYS.values())
    for f in dataclasses.fields(PrunerConfig):
        if f.name != "schedule":
            assert (f.name,) in paths
    for f in dataclasses.fields(ScheduleConfig):
        if f.name != "steps":  # the run derives the taper's length from taper_epochs
            assert ("schedule", f.name) in paths


def test_flat_keys_reach_the_method_config() -> None:
    cfg = RunConfig(
        schedule="linear",
        tolerance=0.1,
        pause_factor=3.0,
        min_speed=0.2,
        score="bn_gamma",
        score_beta=0.9,
        price="macs",
        warmup_steps=7,
        max_bad_steps=4,
    )
    m = cfg.method
    assert m.schedule.kind is ScheduleKind.LINEAR and m.schedule.tolerance == 0.1
    assert m.schedule.pause_factor == 3.0 and m.schedule.min_speed == 0.2
    assert m.score is ScoreKind.BN_GAMMA and m.score_beta == 0.9
    assert m.price is PriceKind.MACS and m.warmup_steps == 7
    assert cfg.max_bad_steps == 4
    assert cfg.pruner_config(123).schedule.steps == 123


def test_config_yaml_round_trips() -> None:
    cfg = RunConfig(budgets=("0.5", "1G"), tolerance=0.2, exclude=("fc*",), latency_batches=(1,))
    again = config_from_mapping(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["schedule"] == "adaptive"


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"schedule": "adaptve"}, "schedule"),
        ({"price": "static_"}, "price"),
        ({"score": "tayler"}, "score"),
        ({"tolerance": -1}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"warmup_steps": -5}, "warmup_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"workers": -1}, "workers"),
        ({"device": "tpu"}, "device"),
        ({"image_size": 0}, "image_size"),
        ({"bn_recalibration_batches": -1}, "bn_recalibration_batches"),
        ({"model_kwargs": [1]}, "model_kwargs"),
        ({"budgets": None}, "budgets"),
        ({"budgets": []}, "budgets"),
        ({"latency_runtimes": ["tensorrt"]}, "latency_runtimes"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"min_speed": 2.0}, "min_speed"),
        ({"score_beta": 1.0}, "score_beta"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(settings: dict, names: str) -> None:
    with pytest.raises(TaperpruneError) as err:
        config_from_mapping(settings, source="cfg.yaml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("cfg.yaml:")
    assert names in text


def test_unknown_settings_are_named() -> None:
    with pytest.raises(TaperpruneError, match=r"unknown settings \['modle'\]"):
        config_from_mapping({"modle": "x"})


def test_budgets_accept_yaml_forms() -> None:
    assert config_from_mapping({"budgets": 0.5}).budgets == ("0.5",)
    assert config_from_mapping({"budgets": "0.5, 0.25"}).budgets == ("0.5", "0.25")
    assert config_from_mapping({"budgets": [0.5, "1G"]}).budgets == ("0.5", "1G")


def test_runtimes_are_the_latency_modules() -> None:
    cfg = RunConfig(latency_runtimes=RUNTIMES)
    assert cfg.latency_runtimes == RUNTIMES


def test_a_yaml_syntax_error_is_file_line_column(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("model: demo_cnn\nbudgets: [0.5,\n")
    with pytest.raises(TaperpruneError) as err:
        read_config_file(path)
    assert str(err.value).startswith(f"{path}:3:1: ")
    assert "\n" not in str(err.value)


@given(
    st.dictionaries(
        st.sampled_from(sorted(METHOD_KEYS)),
        st.one_of(st.floats(), st.integers(-5, 5), st.text(max_size=5), st.none()),
        max_size=3,
    )
)
def test_any_method_values_give_a_config_or_one_line(settings: dict) -> None:
    try:
        cfg = config_from_mapping(settings)
    except TaperpruneError as exc:
        assert "\n" not in str(exc)
    else:
        PrunerConfig(**dataclasses.asdict(cfg.method))  # valid by the library's own checks


def test_a_misspelt_setting_fails_before_torch_is_imported(tmp_path: Path) -> None:
    """The CLI checks the whole config before it imports torch or reads any data."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("schedule: adaptve\n")
    code = (
        "import sys\n"
        "from taperprune.cli import main\n"
        f"sys.argv = ['taperprune', 'prune', '--config', {str(cfg)!r}, "
        f"'--out', {str(tmp_path / 'run')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "False 2", res.stdout + res.stderr
    assert "schedule" in res.stdout and "adaptve" in res.stdout
    assert not (tmp_path / "run").exists()
