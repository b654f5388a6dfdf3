"""The comparison harness (`python -m benchmarks.compare`): its quick mode end to end, with
its invariants (MACs ≤ target for every method, taperprune within one channel of the
target, equal steps, the same seed giving the same row, a finished bench resuming without
work), the baselines' landing on a MAC target, and the summary tables."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from benchmarks.compare import harness as bench_mod
from benchmarks.compare.__main__ import app
from benchmarks.compare.baselines import BASELINES, prune_to_macs, tp_pruner, uniform_width
from benchmarks.compare.config import METHODS, TAPERPRUNE, BenchConfig, quick_config
from benchmarks.compare.harness import Bench
from benchmarks.compare.results import parse_net
from benchmarks.compare.table import Cell, markdown, within_noise
from typer.testing import CliRunner

from taperprune.cost import count_macs
from taperprune.errors import BudgetError, TaperpruneError
from taperprune.models import build_model

DATA = "synthetic:1x28x28:10"
VOLATILE = {"run_seconds", "latency_ms"}  # timings: everything else must repeat exactly


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        app, ["--quick", "--data", DATA, "--out", str(out), "--threads", "2"]
    )
    assert result.exit_code == 0, result.output
    return out, bench_mod.read_rows(out / "results.csv")


def test_quick_bench_covers_every_method_and_view(quick: tuple[Path, list[dict[str, Any]]]):
    out, rows = quick
    per_budget = {r["method"] for r in rows if r["view"] == "per-budget"}
    assert per_budget == set(METHODS)
    assert {r["view"] for r in rows} == {"per-budget", "curve", "steps"}
    assert len(rows) == len(METHODS) * 2 + 2 * 2 + 2 * 2  # per-budget, curve, steps
    table = (out / "table.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert all(0.0 <= r["acc"] <= 100.0 and r["latency_ms"] > 0 for r in rows)


def test_every_method_reaches_at_most_its_target(quick: tuple[Path, list[dict[str, Any]]]):
    _, rows = quick
    for r in rows:
        assert r["macs"] <= r["target_macs"], r["run_id"]
        assert r["budget_error_macs"] == r["macs"] - r["target_macs"]
        assert math.isclose(
            r["budget_error_pct"], 100 * r["budget_error_macs"] / r["target_macs"], rel_tol=1e-4
        )


def test_taperprune_lands_within_one_channel_of_the_target(quick):
    _, rows = quick
    ours = [r for r in rows if r["method"] in TAPERPRUNE]
    assert ours
    for r in ours:
        assert 0 <= r["target_macs"] - r["macs"] <= r["one_channel_macs"], r["run_id"]


def test_baselines_get_the_steps_taperprune_spent(quick):
    _, rows = quick
    ours = {
        (r["seed"], r["budget"]): r["steps"]
        for r in rows
        if r["view"] == "per-budget" and r["method"] == "taperprune"
    }
    for r in rows:
        if r["view"] == "per-budget" and r["method"] not in TAPERPRUNE:
            assert r["steps"] == ours[(r["seed"], r["budget"])], r["run_id"]
    # Curve view: taperprune's whole run shared out over the budgets.
    curve = {r["steps"] for r in rows if r["view"] == "curve"}
    assert len(curve) == 1 and 0 < curve.pop() < sum(ours.values())
    # Steps view: the baseline matches the taperprune run of the same step budget.
    for n in (40, 80):
        steps = {r["steps"] for r in rows if r["view"] == "steps" and r["step_budget"] == n}
        assert len(steps) == 1 and steps.pop() <= n


def test_same_seed_gives_the_same_rows(quick, tmp_path: Path):
    _, rows = quick
    cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path)))
    bench = Bench(cfg)
    net = bench.pretrained(cfg.nets[0], 0)
    again = bench.run_taperprune(net, "per-budget", "taperprune", 0, cfg.budgets)
    first = [r for r in rows if r["view"] == "per-budget" and r["method"] == "taperprune"]
    ref = next(r for r in rows if r["method"] == "tp_l1_global" and r["view"] == "per-budget")
    base = bench.run_baseline(net, "per-budget", "tp_l1_global", 0, ref["budget"], ref["steps"], 0)
    for a, b in [*zip(first, again, strict=True), (ref, base)]:
        for key in set(a) - VOLATILE:
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_a_finished_bench_resumes_without_work(quick, monkeypatch: pytest.MonkeyPatch):
    out, rows = quick

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(bench_mod, "run_prune", refuse)
    monkeypatch.setattr(bench_mod.Bench, "train", refuse)
    cfg = quick_config(BenchConfig(data=DATA, out=str(out)))
    assert len(Bench(cfg).run()) == len(rows)


# ------------------------------------------------------------------ baselines
def _trained_like(name: str = "demo_cnn") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    for m in model.modules():  # distinct BN scales, as after training (slimming ranks by them)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.0)
    return model


@pytest.mark.parametrize("method", list(BASELINES))
@pytest.mark.parametrize("fraction", [0.5, 0.03])
def test_torch_pruning_baselines_land_at_or_below_the_target(method: str, fraction: float):
    model = _trained_like()
    x = torch.zeros(1, 1, 28, 28)
    target = int(fraction * count_macs(model, x))
    pruner = tp_pruner(model, x, BASELINES[method])

    def grads(m: torch.nn.Module) -> None:
        m.zero_grad()
        m(torch.randn(8, 1, 28, 28)).square().mean().backward()

    taylor = BASELINES[method].importance == "taylor"
    macs = prune_to_macs(model, x, target, pruner, gradients=grads if taylor else None)
    assert macs == count_macs(model, x) <= target
    assert macs > 0.5 * target  # small increments: it does not overshoot far
    assert model(x).shape == (1, 10)


def test_uniform_width_scales_every_layer_alike():
    model = _trained_like()
    x = torch.zeros(1, 1, 28, 28)
    target = int(0.25 * count_macs(model, x))
    small, macs = uniform_width(model, x, target)
    assert macs == count_macs(small, x) <= target
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    full = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    ratios = [w / f for w, f in zip(widths, full, strict=True)]
    assert max(ratios) - min(ratios) <= 1.0 / min(full)  # one rounding step apart at most
    wider, _ = uniform_width(model, x, int(target * 1.3))
    assert count_macs(wider, x) > macs  # the bisection finds the widest fit, not any fit


def test_baselines_refuse_an_unreachable_target():
    model = _trained_like()
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(BudgetError, match="target"):
        prune_to_macs(copy.deepcopy(model), x, 10, tp_pruner(model, x, BASELINES["tp_l1_global"]))
    with pytest.raises(BudgetError, match="target"):
        uniform_width(model, x, 10)


# ------------------------------------------------------------------ tables and settings
def _cell(mean: float, std: float, n: int = 3) -> Cell:
    return Cell(mean, std, n, 0.1, 100.0)


def test_within_noise_uses_the_standard_error_of_the_difference():
    assert within_noise(_cell(90.0, 0.3), _cell(90.4, 0.3))
    assert not within_noise(_cell(90.0, 0.1), _cell(91.0, 0.1))
    assert within_noise(_cell(90.0, math.nan, 1), _cell(95.0, math.nan, 1))  # no estimate


def test_markdown_marks_the_best_and_flags_a_missed_target():
    def row(method: str, seed: int, acc: float, macs: int) -> dict[str, Any]:
        return {
            "view": "per-budget", "net": "n", "method": method, "seed": seed, "budget": 0.5,
            "target_macs": 100, "macs": macs, "budget_error_macs": macs - 100,
            "budget_error_pct": float(macs - 100), "one_channel_macs": 10, "full_macs": 200,
            "params": 1, "steps": 50, "step_budget": 0, "acc_before_finetune": acc, "acc": acc,
            "base_acc": 92.0, "latency_ms": 1.0, "run_seconds": 1.0, "run_id": f"{method}{seed}",
        }  # fmt: skip

    rows = [row("taperprune", s, 91.0 + 0.1 * s, 99) for s in range(3)]
    rows += [row("tp_l1_global", s, 89.0 + 0.1 * s, 101) for s in range(3)]
    text = markdown(rows)
    assert "| taperprune | **91.10 ± 0.10** |" in text
    assert "+2.00 vs tp_l1_global |" in text  # outside the noise: no "(within noise)"
    assert "| n | tp_l1_global | **no** |" in text


def test_parse_net_and_config_errors():
    assert parse_net("demo_cnn:width=8,depth=2.5,act=relu") == (
        "demo_cnn",
        {"width": 8, "depth": 2.5, "act": "relu"},
    )
    with pytest.raises(TaperpruneError, match="name:key=value"):
        parse_net("demo_cnn:width")
    with pytest.raises(TaperpruneError, match="unknown methods"):
        BenchConfig(methods=("magic",))
    with pytest.raises(TaperpruneError, match=r"\(0, 1\)"):
        BenchConfig(budgets=(1.5,))
    with pytest.raises(TaperpruneError, match="unknown views"):
        dataclasses.replace(BenchConfig(), views=("sideways",))


def test_cli_reports_bad_bench_options(tmp_path: Path):
    result = CliRunner().invoke(app, ["--budgets", "half", "--out", str(tmp_path)])
    assert isinstance(result.exception, TaperpruneError)
    assert "--budgets" in str(result.exception)


def test_a_baseline_that_cannot_reach_its_budget_is_skipped_and_named(tmp_path: Path):
    cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path), nets=("demo_cnn:width=8",)))
    bench = Bench(cfg)
    net = bench.pretrained(cfg.nets[0], 0)
    assert bench.run_baseline(net, "per-budget", "uniform_width", 0, 0.011, 4, 0) is None
    assert bench.unreachable == [
        "per-budget/demo_cnn:width=8/uniform_width/seed0/budget=0.011/steps=4"
    ]
    assert not bench.rows and not (tmp_path / "results.csv").exists()


def test_given_weights_are_every_methods_start(quick, tmp_path: Path, monkeypatch):
    out, _ = quick
    given = out / "pretrained" / "demo_cnn" / "seed0" / "model.safetensors"

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("pretrained although weights were given")

    monkeypatch.setattr(bench_mod.Bench, "train", refuse)
    cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path)))
    cfg = dataclasses.replace(cfg, train=cfg.train.updated(weights=str(given)))
    net = Bench(cfg).pretrained("demo_cnn", 0)
    assert bench_mod.load_weights(net.weights).keys() == bench_mod.load_weights(given).keys()
    for key, value in bench_mod.load_weights(given).items():
        assert torch.equal(bench_mod.load_weights(net.weights)[key], value)
    with pytest.raises(TaperpruneError, match="do not fit"):  # another net, same weights
        Bench(dataclasses.replace(cfg, out=str(tmp_path / "w"))).pretrained("demo_cnn:width=8", 0)


def test_nets_from_a_file_run_in_quick_mode(tmp_path: Path):
    """`--nets path/file.py:function[:key=value]`: the builder is imported and benched."""
    f = tmp_path / "mine.py"
    f.write_text(
        "from taperprune.models import demo_cnn\n"
        "def build(num_classes=10, in_channels=1, width=8):\n"
        "    return demo_cnn(num_classes, in_channels, width)\n"
    )
    spec = f"{f}:build:width=4"
    assert parse_net(spec) == (f"{f}:build", {"width": 4})
    with pytest.raises(TaperpruneError, match="file.py:function"):
        parse_net(f"{f}:")
    cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path / "b"), nets=(spec,)))
    cfg = dataclasses.replace(cfg, views=("per-budget",), methods=("taperprune", "uniform_width"))
    rows = Bench(cfg).run()
    assert {r["net"] for r in rows} == {spec}
    assert {r["method"] for r in rows} == {"taperprune", "uniform_width"}
    assert all(r["macs"] <= r["target_macs"] for r in rows)
    assert (tmp_path / "b" / "pretrained" / "mine.py_build_width4" / "seed0").is_dir()


@pytest.mark.parametrize("name", ["mobilenet_small", "vgg_small"])
def test_the_new_built_in_nets(name: str):
    model = build_model(name, num_classes=10, in_channels=3)
    macs = count_macs(model, torch.zeros(1, 3, 32, 32))
    assert macs >= (20_000_000 if name == "vgg_small" else 5_000_000)
    assert any(
        isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in model.modules()
    ) == (name == "mobilenet_small")
