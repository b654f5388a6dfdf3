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
from benchmarks.compare.baselines import (
    BASELINES,
    KNAPSACK,
    PROGRESSIVE_STEPS,
    UNIFORM,
    BaselineMethod,
    knapsack_oneshot,
    output_layer,
    uniform_width,
)
from benchmarks.compare.config import (
    ALL_METHODS,
    DEFAULT_MAX_PRUNING_RATIO,
    METHODS,
    NEWER_BASELINES,
    ON_DEMAND,
    TAPERPRUNE,
    BenchConfig,
    baseline_of,
    parse_max_ratios,
    quick_config,
)
from benchmarks.compare.harness import Bench
from benchmarks.compare.results import complete_seeds, parse_net
from benchmarks.compare.table import (
    Cell,
    budget_error_table,
    headline,
    markdown,
    overhead_table,
    within_noise,
)
from benchmarks.compare.tp_driven import (
    accumulate_gradients,
    capped_step,
    has_residual,
    prune_oneshot,
    prune_progressive,
    tp_pruner,
    width_floors,
)
from typer.testing import CliRunner

from taperprune.cost import count_macs
from taperprune.errors import BudgetError, TaperpruneError
from taperprune.graph import build_graph
from taperprune.models import build_model

DATA = "synthetic:1x28x28:10"
VOLATILE = {"run_seconds", "latency_ms"}  # timings: everything else must repeat exactly


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        app, ["--quick", "--data", DATA, "--out", str(out), "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    return out, bench_mod.read_rows(out / "results.csv")


def test_quick_bench_covers_every_method_and_view(quick: tuple[Path, list[dict[str, Any]]]):
    out, rows = quick
    per_budget = {r["method"] for r in rows if r["view"] == "per-budget"}
    assert per_budget == set(METHODS) == set(ALL_METHODS) - {"tp_l1_layer", *ON_DEMAND}
    assert {r["view"] for r in rows} == {"per-budget", "curve", "steps"}
    # per-budget (the newer baselines at the last budget only), curve, steps
    assert len(rows) == len(METHODS) * 2 - len(NEWER_BASELINES) + 2 * 2 + 2 * 2
    for method in NEWER_BASELINES:  # at the quick mode's lowest budget: the caps bind there
        assert {r["budget"] for r in rows if r["method"] == method} == {0.125}
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


X = torch.zeros(1, 1, 28, 28)


def _batches(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(n)
    ]


def _conv_widths(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def _assert_floors(model: torch.nn.Module, floors: dict[str, int]) -> None:
    """No layer has fewer channels than its max pruning ratio allows."""
    modules = dict(model.named_modules())
    for name, floor in floors.items():
        m = modules[name]
        width = m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels
        assert width >= floor, (name, width, floor)


def _run_tp(
    method: str, model: torch.nn.Module, target: int, max_ratio: float, *, trained: list[int]
) -> tuple[torch.nn.Module, int]:
    """A Torch-Pruning baseline as the harness drives it, `trained` collecting the
    optimizer steps of its training between steps (here: noise on the weights)."""
    spec = BASELINES[method]
    floors = width_floors(model, max_ratio)
    iso = spec.global_pruning and has_residual(model, X)

    def grads(m: torch.nn.Module) -> None:
        accumulate_gradients(m, _batches(), torch.device("cpu"))

    taylor = grads if spec.importance == "taylor" else None
    if spec.iterative_steps > 1:

        def train(m: torch.nn.Module, n: int) -> None:
            trained.append(n)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.01 * torch.randn_like(p))

        return prune_progressive(
            model, X, target, spec, floors=floors, max_ratio=max_ratio, isomorphic=iso,
            train=train, train_steps=7, gradients=taylor,
        )  # fmt: skip
    if taylor is not None:
        taylor(model)
    small, macs, _ = prune_oneshot(
        model, X, target, spec, floors=floors, max_ratio=max_ratio, isomorphic=iso
    )
    return small, macs


@pytest.mark.parametrize("method", list(BASELINES))
@pytest.mark.parametrize("fraction", [0.5, 0.03])
def test_torch_pruning_baselines_land_at_or_below_the_target_within_their_max_ratio(
    method: str, fraction: float
):
    model = _trained_like()
    full = count_macs(model, X)
    target = int(fraction * full)
    trained: list[int] = []
    small, macs = _run_tp(method, copy.deepcopy(model), target, 0.9, trained=trained)
    assert macs == count_macs(small, X) <= target
    assert macs > 0.9 * target  # bisection: the largest fit, not any fit
    _assert_floors(small, width_floors(model, 0.9))
    assert small(X).shape == (1, 10)
    if BASELINES[method].iterative_steps > 1:  # training between its steps, 7 steps in all
        assert len(trained) == PROGRESSIVE_STEPS - 1 and sum(trained) == 7
    else:
        assert not trained


@pytest.mark.parametrize("max_ratio", [0.8, 0.95])
def test_the_max_ratio_is_a_floor_per_layer(max_ratio: float):
    model = _trained_like()
    floors = width_floors(model, max_ratio)
    assert floors == {
        n: math.ceil(w * (1 - max_ratio) - 1e-9)
        for n, w in zip(("0", "4", "8", "11"), _conv_widths(model), strict=True)
    }
    target = int(0.05 * count_macs(model, X))
    small, macs = _run_tp("tp_l1_global", copy.deepcopy(model), target, max_ratio, trained=[])
    assert macs <= target
    _assert_floors(small, floors)


def test_the_cap_binds_where_torch_pruning_alone_overshoots_it():
    """Torch-Pruning 1.6.1 checks max_pruning_ratio before a step only: one step at ratio
    0.9 thins a layer below it. `capped_step` keeps every layer at its floor."""
    model = _trained_like()
    floors = width_floors(model, 0.9)
    spec = BASELINES["tp_l1_global"]
    plain = copy.deepcopy(model)
    tp_pruner(plain, X, spec, ratio=0.9, max_ratio=0.9, isomorphic=False).step()
    assert any(w < f for w, f in zip(_conv_widths(plain), floors.values(), strict=True))
    capped = copy.deepcopy(model)
    pruner = tp_pruner(capped, X, spec, ratio=0.9, max_ratio=0.9, isomorphic=False)
    capped_step(pruner, capped, floors)
    _assert_floors(capped, floors)
    assert count_macs(capped, X) > count_macs(plain, X)


def test_baselines_refuse_an_unreachable_target():
    model = _trained_like()
    target = int(0.03 * count_macs(model, X))
    with pytest.raises(BudgetError, match="max pruning ratio"):  # 0.8 keeps ≥ 20 % of each
        _run_tp("tp_l1_global", copy.deepcopy(model), target, 0.8, trained=[])
    with pytest.raises(BudgetError, match="target"):
        uniform_width(model, X, 10)
    with pytest.raises(BudgetError, match="target"):
        knapsack_oneshot(model, X, 10, _batches(2), torch.device("cpu"))


def test_residual_nets_are_told_apart_by_the_graph():
    assert not has_residual(_trained_like(), X)
    assert has_residual(build_model("resnet20", num_classes=10, in_channels=1), X)
    x3 = torch.zeros(1, 3, 32, 32)
    assert has_residual(build_model("mobilenet_small", num_classes=10, in_channels=3), x3)
    assert not has_residual(build_model("vgg_small", num_classes=10, in_channels=3), x3)


def test_taylor_reads_gradients_accumulated_over_several_batches():
    model = _trained_like()
    batches = _batches(8)
    accumulate_gradients(model, batches, torch.device("cpu"))
    mean = [p.grad.clone() for p in model.parameters()]
    loss_f = torch.nn.CrossEntropyLoss()
    twin = copy.deepcopy(model)
    for x, y in batches:
        twin.zero_grad()
        loss_f(twin(x), y).backward()
        one = [p.grad.clone() for p in twin.parameters()]
    assert not all(torch.allclose(a, b) for a, b in zip(mean, one, strict=True))
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in batches:
        twin.zero_grad()
        loss_f(twin(x), y).backward()
        for e, p in zip(expected, twin.parameters(), strict=True):
            e += p.grad / len(batches)
    for a, e in zip(mean, expected, strict=True):
        assert torch.allclose(a, e, atol=1e-6)


def test_the_knapsack_lands_within_one_channel_below_the_target():
    from taperprune.cost import build_cost_model, macs_and_marginals
    from taperprune.graph import build_graph

    model = _trained_like()
    cm = build_cost_model(build_graph(model, X))
    one_channel = float(macs_and_marginals(cm, torch.ones(cm.num_units, dtype=torch.bool))[1].max())
    for fraction in (0.5, 0.03):
        target = int(fraction * count_macs(model, X))
        small, macs = knapsack_oneshot(model, X, target, _batches(), torch.device("cpu"))
        assert macs == count_macs(small, X) <= target
        assert target - macs <= one_channel
        assert small(X).shape == (1, 10)
        assert all(p.grad is None for p in model.parameters())  # the given model is untouched
    # The other price (marginal MACs under the current masks) lands at or below it too.
    cheap = knapsack_oneshot(model, X, target, _batches(), torch.device("cpu"), price="macs")[0]
    assert count_macs(cheap, X) <= target


def test_uniform_width_scales_every_layer_alike():
    model = _trained_like()
    target = int(0.25 * count_macs(model, X))
    small, macs = uniform_width(model, X, target)
    assert macs == count_macs(small, X) <= target
    widths, full = _conv_widths(small), _conv_widths(model)
    ratios = [w / f for w, f in zip(widths, full, strict=True)]
    assert max(ratios) - min(ratios) <= 1.0 / min(full)  # one rounding step apart at most
    wider, _ = uniform_width(model, X, int(target * 1.3))
    assert count_macs(wider, X) > macs  # the bisection finds the widest fit, not any fit


@pytest.mark.parametrize("fraction", [0.5, 0.125])
def test_per_layer_l1_is_uniform_width_below_its_cap_so_it_is_off_by_default(fraction: float):
    model = _trained_like()
    target = int(fraction * count_macs(model, X))
    layer, _ = _run_tp("tp_l1_layer", copy.deepcopy(model), target, 0.9, trained=[])
    uniform, _ = uniform_width(model, X, target)
    assert _conv_widths(layer) == _conv_widths(uniform)
    assert "tp_l1_layer" in ALL_METHODS and "tp_l1_layer" not in METHODS
    assert {KNAPSACK, UNIFORM, *BASELINES} - {"tp_l1_layer"} <= set(METHODS)


def test_baseline_settings_are_consistent():
    model = _trained_like()
    assert output_layer(model) is [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert "output" not in width_floors(model, 0.9) and len(width_floors(model, 0.9)) == 4
    with pytest.raises(TaperpruneError, match="do not combine"):
        BaselineMethod("l1", True, sparsity=1e-4, iterative_steps=5)
    assert BASELINES["tp_group_sl"].sparsity == 5e-4  # Torch-Pruning's ResNet-56 recipe
    assert all(BASELINES[m].iterative_steps == PROGRESSIVE_STEPS for m in BASELINES if "_iter" in m)


def test_every_baseline_run_takes_exactly_its_optimizer_steps(quick, tmp_path: Path, monkeypatch):
    """Equal steps, counted in the training loop itself: sparse training, training between
    progressive steps and the fine-tune add up to the steps the view gives."""
    out, _ = quick
    given = out / "pretrained" / "demo_cnn" / "seed0" / "model.safetensors"
    cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path)))
    cfg = dataclasses.replace(cfg, train=cfg.train.updated(weights=str(given)))
    bench = Bench(cfg)
    net = bench.pretrained("demo_cnn", 0)
    taken: list[int] = []
    fit = bench_mod.FitLoop.fit

    def counting(self: Any, model: Any, stream: Any, opt: Any, steps: int, **kw: Any) -> None:
        taken.append(steps)
        fit(self, model, stream, opt, steps, **kw)

    monkeypatch.setattr(bench_mod.FitLoop, "fit", counting)
    for method in ("tp_l1_global_iter", "tp_group_sl", KNAPSACK):
        taken.clear()
        row = bench.run_baseline(net, "per-budget", method, 0, 0.125, 13, 9)
        assert row is not None and row["macs"] <= row["target_macs"]
        assert sum(taken) == row["steps"] == 13, (method, taken)
        if method == "tp_l1_global_iter":  # 9 steps between its 5 pruning steps, then 4
            assert taken == [3, 2, 2, 2, 4]
        if method == "tp_group_sl":  # 9 steps of sparse training, then 4 of fine-tuning
            assert taken == [9, 4]


def test_a_distilled_baseline_distils_in_every_step_it_trains(quick, tmp_path: Path, monkeypatch):
    """`<baseline>_distill`: the same weight as taperprune_distill, the pretrained net as
    teacher, in sparse training and fine-tune alike; the same seed gives the same row."""
    out, _ = quick
    given = out / "pretrained" / "demo_cnn" / "seed0" / "model.safetensors"
    seen: list[tuple[int, float, bool]] = []
    fit = bench_mod.FitLoop.fit

    def spy(self: Any, model: Any, stream: Any, opt: Any, steps: int, **kw: Any) -> None:
        seen.append((steps, self.distill, kw.get("teacher") is not None))
        fit(self, model, stream, opt, steps, **kw)

    monkeypatch.setattr(bench_mod.FitLoop, "fit", spy)
    rows = {}
    for method, sub in (
        ("tp_group_sl", "a"),
        ("tp_group_sl_distill", "b"),
        ("tp_group_sl_distill", "c"),
    ):
        cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path / sub)))
        bench = Bench(dataclasses.replace(cfg, train=cfg.train.updated(weights=str(given))))
        net = bench.pretrained("demo_cnn", 0)
        seen.clear()
        rows[sub] = bench.run_baseline(net, "per-budget", method, 0, 0.125, 13, 9)
        weight = TAPERPRUNE["taperprune_distill"]["distill"] if sub != "a" else 0.0
        assert seen == [(9, weight, sub != "a"), (4, weight, sub != "a")]
        assert bench.teacher is None  # not left behind for the next run
    assert rows["b"] is not None and rows["c"] is not None and rows["a"] is not None
    assert (
        rows["b"]["method"] == "tp_group_sl_distill"
        and "/tp_group_sl_distill/" in rows["b"]["run_id"]
    )
    assert rows["b"]["steps"] == rows["a"]["steps"] == 13
    # The sparse training saw another loss, so its group norms (and structure) differ.
    assert rows["b"]["macs"] <= rows["b"]["target_macs"]
    assert {k: v for k, v in rows["b"].items() if k not in VOLATILE} == {
        k: v for k, v in rows["c"].items() if k not in VOLATILE
    }
    assert baseline_of("uniform_width_distill") == ("uniform_width", True)
    assert baseline_of("uniform_width") == ("uniform_width", False)
    assert "uniform_width_distill" in ON_DEMAND and "uniform_width_distill" not in METHODS


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


def test_the_budget_error_table_takes_each_column_s_worst_case_on_its_own():
    def row(budget: float, target: int, macs: int, one_channel: int) -> dict[str, Any]:
        err = macs - target
        return {"net": "n", "method": "m", "budget": budget, "target_macs": target,
                "macs": macs, "budget_error_macs": err, "budget_error_pct": 100 * err / target,
                "one_channel_macs": one_channel}  # fmt: skip

    # A high budget misses by the most MACs (3 channels' worth, 3 %); a low one by the
    # largest share of its target (26 %, half a channel).
    rows = [row(0.5, 1000, 970, 10), row(0.03125, 100, 74, 52)]
    assert budget_error_table(rows)[2] == "| n | m | yes | -26.00 | -3.00 |"
    assert budget_error_table([*rows, row(0.25, 500, 501, 10)])[2].startswith("| n | m | **no** |")


def test_headline_names_the_best_baseline_and_tallies_the_verdicts():
    def row(method: str, seed: int, budget: float, acc: float, net: str = "n") -> dict[str, Any]:
        return {"view": "per-budget", "net": net, "method": method, "seed": seed,
                "budget": budget, "acc": acc, "macs": 1, "full_macs": 10, "steps": 5}  # fmt: skip

    rows = []
    for s in range(3):
        rows += [row("taperprune", s, 0.5, 91.0 + 0.1 * s), row("taperprune", s, 0.25, 88.0 + s)]
        rows += [row("uniform_width", s, 0.5, 89.0 + 0.1 * s), row("uniform_width", s, 0.25, 88.5)]
        rows += [row("tp_random", s, 0.5, 80.0), row("tp_random", s, 0.25, 80.0)]
        rows += [row("taperprune_round8", s, 0.5, 99.0)]  # a variant of ours, not a baseline
    rows += [row("taperprune", 0, 0.5, 90.0, "m"), row("uniform_width", 0, 0.5, 95.0, "m")]
    rows += [row("tp_l1_global", 0, 0.5, 99.0)]  # one seed: does not hide the 3-seed rows
    for s in range(3):
        rows += [row("taperprune", s, 0.125, 80.0 + 0.1 * s), row("uniform_width", s, 0.125, 85.0)]
        rows += [row("taperprune", s, 0.0625, 70.0)]  # no baseline has run this budget
    text = "\n".join(headline(rows))
    assert "| n | 12.5 % | 80.10 ± 0.10 | uniform_width 85.00 ± 0.00 | -4.90, behind | 3 |" in text
    assert "| n | 50 % | 91.10 ± 0.10 | uniform_width 89.10 ± 0.10 | +2.00, **ahead** | 3 |" in text
    assert "| n | 25 % | 89.00 ± 1.00 | uniform_width 88.50 ± 0.00 | +0.50, level" in text
    assert "| m | 50 % | 90.00 | uniform_width 95.00 | -5.00, one seed, not judged | 1 |" in text
    assert text.endswith(
        "Ahead outside noise at 1 of 3 (net, budget) points, behind outside noise at 1, "
        "level at 1; 1 with one seed not judged; no baseline yet at n 6.25 %."
    )


def test_wall_time_takes_the_median_seed_of_each_run_so_a_paused_run_does_not_count():
    def row(method: str, seed: int, budget: float, seconds: float, run: str) -> dict[str, Any]:
        return {"view": "per-budget", "net": "n", "method": method, "seed": seed,
                "budget": budget, "run_seconds": seconds, "run_id": run}  # fmt: skip

    rows = []
    for s, paused in ((0, 1.0), (1, 1.0), (2, 50.0)):  # seed 2's first run sat out a pause
        rows += [
            row("taperprune", s, b, 30.0, f"per-budget/n/taperprune/seed{s}") for b in (0.5, 0.25)
        ]
        rows += [
            row("uniform_width", s, 0.5, 10.0 * paused, f"per-budget/n/uniform_width/seed{s}/b0.5"),
            row("uniform_width", s, 0.25, 12.0, f"per-budget/n/uniform_width/seed{s}/b0.25"),
        ]
    lines = overhead_table(rows)
    assert "| n | taperprune | 30 |" in lines  # one run for both budgets, counted once
    assert "| n | uniform_width | 22 |" in lines  # 10 + 12: the paused seed is outvoted


def test_complete_seeds_leaves_out_a_seed_that_has_not_run_every_budget_of_the_first():
    def row(net: str, method: str, seed: int, budget: float) -> dict[str, Any]:
        return {"view": "per-budget", "net": net, "method": method, "seed": seed,
                "budget": budget, "step_budget": 0}  # fmt: skip

    methods, budgets = ("taperprune", "uniform_width"), (0.5, 0.25)
    rows = [row("a", m, s, b) for m in methods for s in (0, 1) for b in budgets]
    rows += [row("a", "taperprune", 2, 0.5)]  # seed 2 of a: one of taperprune's two budgets
    rows += [row("a", "ablation", 0, 0.5)]  # run on seed 0 only: leaves the others alone
    rows += [row("b", "taperprune", s, 0.5) for s in (1, 2)]  # b's lowest seed is 1
    kept, notes = complete_seeds(rows)
    seen = {(r["net"], r["method"], r["seed"]) for r in kept}
    assert seen == {
        *(("a", m, s) for m in methods for s in (0, 1)),
        ("a", "ablation", 0),
        ("b", "taperprune", 1),
        ("b", "taperprune", 2),
    }
    assert len(kept) == 11
    assert notes == ["a per-budget taperprune: seed 2 left out (1 to go)"]


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


def test_max_pruning_ratio_is_a_setting_per_net():
    cfg = BenchConfig()
    assert cfg.max_ratio("demo_cnn") == cfg.max_ratio("demo_cnn:width=8") == 0.9
    assert cfg.max_ratio("resnet20") == 0.9 and cfg.max_ratio("vgg_small") == 0.8
    assert cfg.max_ratio("alexnet_bvlc") == DEFAULT_MAX_PRUNING_RATIO == 0.9  # not in the table
    every = BenchConfig(max_pruning_ratio=parse_max_ratios("0.95"))
    assert every.max_ratio("resnet20") == every.max_ratio("demo_cnn:width=8") == 0.95
    some = BenchConfig(max_pruning_ratio=parse_max_ratios("resnet20=0.8,demo_cnn:width=8=0.95"))
    assert some.max_ratio("resnet20") == 0.8 and some.max_ratio("demo_cnn") == 0.9
    assert some.max_ratio("demo_cnn:width=8") == 0.95
    with pytest.raises(TaperpruneError, match=r"\(0, 1\)"):
        BenchConfig(max_pruning_ratio=parse_max_ratios("1.5"))
    with pytest.raises(TaperpruneError, match="max-pruning-ratio"):
        parse_max_ratios("resnet20=most")


def test_the_max_ratio_is_part_of_a_torch_pruning_run_id(quick):
    _, rows = quick
    for r in rows:
        tagged = "/max_ratio=0.9/" in r["run_id"]
        assert tagged == (r["method"] in BASELINES), r["run_id"]


def test_cli_reports_bad_bench_options(tmp_path: Path):
    result = CliRunner().invoke(app, ["--budgets", "half", "--out", str(tmp_path)])
    assert isinstance(result.exception, TaperpruneError)
    assert "--budgets" in str(result.exception)
    result = CliRunner().invoke(app, ["--max-pruning-ratio", "lots", "--out", str(tmp_path)])
    assert isinstance(result.exception, TaperpruneError)
    assert "--max-pruning-ratio" in str(result.exception)


def test_a_baseline_that_cannot_reach_its_budget_is_skipped_and_named(tmp_path: Path):
    cfg = quick_config(BenchConfig(data=DATA, out=str(tmp_path), nets=("demo_cnn:width=8",)))
    bench = Bench(cfg)
    net = bench.pretrained(cfg.nets[0], 0)
    assert bench.run_baseline(net, "per-budget", "uniform_width", 0, 0.011, 4, 0) is None
    assert bench.unreachable == [
        "per-budget/demo_cnn:width=8/uniform_width/seed0/budget=0.011/steps=4"
    ]
    assert not bench.rows and not (tmp_path / "results.csv").exists()


def test_rows_of_the_older_torch_pruning_baselines_are_refused(quick, tmp_path: Path):
    """The 400-increment rows would pool with the new ones under the same method name."""
    _, rows = quick
    old = next(r for r in rows if r["method"] == "tp_l1_global" and r["view"] == "per-budget")
    old = {**old, "run_id": old["run_id"].replace("/max_ratio=0.9", "")}
    bench_mod.write_rows(tmp_path / "results.csv", [old])
    with pytest.raises(TaperpruneError, match="tp_l1_global rows of the harness before"):
        Bench(quick_config(BenchConfig(data=DATA, out=str(tmp_path))))


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


@pytest.mark.parametrize("name", ["demo_cnn", "resnet20", "mobilenet_small", "vgg_small"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_built_in_bench_net_runs_on_fashion_mnist_and_32x32(name: str, shape):
    # The bench's own data (Fashion-MNIST) is 1x28x28: five floor-rounding pools left
    # vgg_small with a 0x0 map there, found only when its pretraining crashed.
    model = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    assert len(build_graph(model, torch.zeros(1, *shape)).groups) > 0


@pytest.mark.parametrize("name", ["mobilenet_small", "vgg_small"])
def test_the_new_built_in_nets(name: str):
    model = build_model(name, num_classes=10, in_channels=3)
    macs = count_macs(model, torch.zeros(1, 3, 32, 32))
    assert macs >= (20_000_000 if name == "vgg_small" else 5_000_000)
    assert any(
        isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in model.modules()
    ) == (name == "mobilenet_small")
