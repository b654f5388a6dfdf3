"""Latency budgets with a fake timer: a deterministic table gives the exact predicted
latency of any pruned network, a budget in ms is met in the model at every step, each
snapshot is measured and accepted only within budget × 1.05, the cache is reused and its
key changes with each of its parts; bad latency input fails in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _pruning_helpers import SmallResNet, depthwise_net
from taperprune.budget import NS, budget_resource, parse_budget
from taperprune.cost import hooked_macs
from taperprune.errors import BudgetError, TaperpruneError
from taperprune.graph import build_graph
from taperprune.latency_cache import cache_key, key_parts
from taperprune.latency_gate import LATENCY_SLACK, judged_latency
from taperprune.latency_meter import LatencySettings
from taperprune.latency_model import LayerTable, monotone
from taperprune.latency_table import build_latency_model, fit_calibration, layer_specs
from taperprune.models import demo_cnn
from taperprune.pruner import TaperPruner
from taperprune.settings import PrunerConfig
from taperprune.surgery import remove_masked

pytestmark = pytest.mark.usefixtures("one_thread")

BASE_MS, PER_ACT_MS, PER_MAC_MS, PER_CALL_MS = 0.05, 2e-6, 1e-6, 0.002


class FakeMeter:
    """Deterministic 'timings': a layer costs PER_CALL + PER_MAC·MACs (bilinear in its
    widths, so the table interpolates it exactly); a network the sum of its layers plus
    BASE + PER_ACT · the output elements of its counted layers."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale  # measured / modelled: > 1 makes every network slower than modelled
        self.layer_calls = 0
        self.net_calls = 0

    def layer_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        self.layer_calls += 1
        return self._layers(module, input_shape)

    def _layers(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        found = hooked_macs(module, torch.zeros((1, *input_shape)))
        return sum(PER_CALL_MS + PER_MAC_MS * macs for _, _, macs in found.values())

    def net_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        self.net_calls += 1
        found = hooked_macs(module, torch.zeros((1, *input_shape)))
        acts = sum(torch.Size(shape).numel() for _, shape, _ in found.values())
        return self.scale * (self._layers(module, input_shape) + BASE_MS + PER_ACT_MS * acts)


def _setup(net: nn.Module, shape: tuple[int, ...]):
    x = torch.randn(2, *shape)
    graph = build_graph(net, x)
    meter = FakeMeter()
    lm = build_latency_model(net, x, graph, LatencySettings("torch"), meter=meter, cache=False)
    return x, graph, meter, lm


NETS = {
    "demo_cnn": (lambda: demo_cnn(in_channels=1, num_classes=10), (1, 28, 28)),
    "resnet": (lambda: SmallResNet(width=6), (1, 12, 12)),
    "depthwise": (lambda: depthwise_net(width=6), (1, 12, 12)),
}


@pytest.mark.parametrize("name", list(NETS))
def test_exact_prediction_for_a_deterministic_timer(name: str) -> None:
    build, shape = NETS[name]
    torch.manual_seed(0)
    net = build().eval()
    x, graph, meter, lm = _setup(net, shape)
    assert lm.base_ms == pytest.approx(BASE_MS, rel=1e-6)
    assert lm.per_act_ms == pytest.approx(PER_ACT_MS, rel=1e-6)
    assert lm.scale == pytest.approx(1.0, rel=1e-9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        keep = torch.rand(graph.num_units, generator=gen) < 0.6
        for g in range(len(graph.groups)):  # every group keeps one unit
            keep[graph.units_of_group(g)[0]] = True
        small = remove_masked(net, graph, keep, verify=False)
        measured = meter.net_ms(small, shape) * 1e6
        assert lm.total(keep) == pytest.approx(measured, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_marginal_is_the_saving_of_a_unit_of_a_linear_table(seed: int) -> None:
    if "demo" not in _CACHED:
        build, shape = NETS["demo_cnn"]
        _CACHED["demo"] = _setup(build(), shape)
    _, graph, _, lm = _CACHED["demo"]
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(graph.num_units, generator=gen) < 0.7
    for g in range(len(graph.groups)):
        keep[graph.units_of_group(g)[0]] = True
    total, d = lm.total_and_marginals(keep)
    u = int(torch.nonzero(keep).flatten()[seed % int(keep.sum())])
    less = keep.clone()
    less[u] = False
    # demo_cnn's layers have no unit on both sides: the fake table is bilinear, so exact.
    assert total - lm.total(less) == pytest.approx(float(d[u]), rel=1e-9, abs=1e-3)
    assert float(d[~keep].abs().sum()) == 0.0


_CACHED: dict[str, tuple] = {}


def _pruner(budgets: list[str], *, cache: Path | bool = False, **cfg: object) -> TaperPruner:
    torch.manual_seed(0)
    net = demo_cnn(in_channels=1, num_classes=10)
    x = torch.randn(8, 1, 28, 28)
    config = PrunerConfig(**{"warmup_steps": 2, "latency_runtime": "torch", **cfg})  # type: ignore[arg-type]
    config = replace(config, schedule=replace(config.schedule, steps=40))
    return TaperPruner(
        net, x, budgets, config=config, latency_meter=FakeMeter(), latency_cache=cache
    )


def _drive(pruner: TaperPruner, steps: int = 400) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(pruner.model.parameters(), lr=0.01)
    for _ in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        loss = nn.functional.cross_entropy(pruner.model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        rec = pruner.step(loss)
        if rec.phase == "taper":
            assert pruner.cost.total(pruner.keep) == pytest.approx(rec.macs)
            assert rec.macs <= rec.budget + 1e-6  # the budget holds at every step
        if pruner.done:
            return


def test_a_budget_in_ms_is_met_in_the_model_and_measured() -> None:
    pruner = _pruner(["0.6latency", "0.3latency"])
    assert pruner.unit == NS
    full = pruner.full_macs
    _drive(pruner)
    assert pruner.done
    for target, snap in pruner.snapshots.items():
        assert snap.macs <= target  # modelled ns from below
        assert snap.measured is not None and snap.measured <= target * 1.05
        # the fake meter is exact: measured = modelled (up to rounding to ns)
        assert abs(snap.measured - snap.macs) <= 1
    assert sorted(pruner.snapshots) == sorted([round(0.6 * full), round(0.3 * full)], reverse=False)
    assert pruner.notes == []


def test_absolute_ms_budget() -> None:
    pruner = _pruner(["0.5latency"])
    text = f"{pruner.full_macs / 2e6:.4f}"
    assert _pruner([f"{text}ms"]).budgets == [round(float(text) * 1e6)]
    assert _pruner([f"{float(text) * 1e3:.1f}us"]).budgets == [round(float(text) * 1e6)]


def test_slower_than_modelled_prunes_on_and_says_so() -> None:
    pruner = _pruner(["0.5latency"])
    assert isinstance(pruner.meter, FakeMeter)
    pruner.meter.scale = 1.08  # from now on every network runs 8 % slower than modelled
    _drive(pruner)
    snap = pruner.snapshots[pruner.budgets[0]]
    assert snap.measured is not None and snap.measured <= pruner.budgets[0] * 1.05
    assert snap.measured == pytest.approx(1.08 * snap.macs, abs=2)
    assert pruner.notes and "pruning on" in pruner.notes[0]


def test_one_slow_timing_is_confirmed_before_pruning_on() -> None:
    pruner = _pruner(["0.5latency"])
    meter = pruner.meter
    assert isinstance(meter, FakeMeter)
    exact = meter.net_ms
    calls: list[float] = []

    def first_slow(module: nn.Module, shape: tuple[int, ...]) -> float:
        ms = exact(module, shape) * (1.2 if not calls else 0.8)  # a busy moment, then quiet
        calls.append(ms)
        return ms

    meter.net_ms = first_slow  # type: ignore[method-assign]
    _drive(pruner)
    snap = pruner.snapshots[pruner.budgets[0]]
    assert len(calls) == 2  # the slow timing was timed again, and the snapshot kept
    assert snap.measured == pytest.approx(1e6 * sum(calls) / 2, abs=1)
    assert snap.measured <= pruner.budgets[0] * LATENCY_SLACK
    assert pruner.notes == [] and pruner.goals == [float(b) for b in pruner.budgets]


def test_slow_twice_prunes_on_from_the_mean_of_the_two_timings() -> None:
    pruner = _pruner(["0.5latency"])
    meter = pruner.meter
    assert isinstance(meter, FakeMeter)
    exact = meter.net_ms
    timings: list[tuple[float, float]] = []  # (modelled ms, measured ms) per timing

    def slow(module: nn.Module, shape: tuple[int, ...]) -> float:
        ms = exact(module, shape) * (1.3 if len(timings) % 2 == 0 else 1.1)
        timings.append((exact(module, shape), ms))
        return ms

    meter.net_ms = slow  # type: ignore[method-assign]
    _drive(pruner)
    target = pruner.budgets[0]
    assert len(timings) >= 2 and "pruning on" in pruner.notes[0]
    (modelled, a), (_, b) = timings[0], timings[1]
    mean_ns = round(1e6 * (a + b) / 2)  # judged on the mean: 1.2 × modelled
    reached = 1e6 * modelled
    assert pruner.goals[0] == pytest.approx(min(reached - 1, reached * target / mean_ns), abs=2)


def test_judged_latency_times_again_only_above_the_slack() -> None:
    timings = iter([100.0, 120.0, 200.0, 140.0])
    assert judged_latency(lambda: next(timings), 100.0) == (100, 1)  # within: one timing
    assert judged_latency(lambda: next(timings), 100.0) == (160, 2)  # over: mean of two
    assert judged_latency(lambda: next(timings), 200.0) == (140, 1)


def test_latency_state_resumes_with_goals() -> None:
    pruner = _pruner(["0.5latency"])
    pruner.meter.scale = 1.08  # type: ignore[union-attr]
    _drive(pruner)
    assert pruner.goals[0] < pruner.budgets[0]
    state = pruner.state_dict()
    other = _pruner(["0.5latency"])
    other.load_state_dict(state)
    assert other.goals == pruner.goals
    target = pruner.budgets[0]
    assert other.snapshots[target].measured == pruner.snapshots[target].measured


def test_round_to_with_a_latency_budget() -> None:
    pruner = _pruner(["0.4latency"], round_to=8)
    _drive(pruner)
    assert pruner.done
    for w in pruner.snapshots[pruner.budgets[0]].widths.values():
        assert w % 8 == 0 or w in (10,)  # the classifier keeps its 10 outputs


def test_cache_is_reused_and_keyed_by_every_part(tmp_path: Path) -> None:
    net = demo_cnn(in_channels=1, num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    graph = build_graph(net, x)
    meter = FakeMeter()
    s = LatencySettings("torch", 1, 1)
    first = build_latency_model(net, x, graph, s, meter=meter, cache=tmp_path)
    calls = meter.layer_calls + meter.net_calls
    again = build_latency_model(net, x, graph, s, meter=meter, cache=tmp_path)
    assert meter.layer_calls + meter.net_calls == calls  # nothing measured again
    assert again.full_macs == first.full_macs
    assert len(list(tmp_path.glob("*.json"))) == 1
    specs = layer_specs(net, x[:1], [n for n, lay in graph.layers.items() if lay.kind != "norm"])
    base = key_parts(specs, graph, s, cpu="cpu A")
    keys = {cache_key(base)}
    variants = [
        key_parts(specs, graph, replace(s, runtime="onnxruntime"), cpu="cpu A"),
        key_parts(specs, graph, replace(s, batch=32), cpu="cpu A"),
        key_parts(specs, graph, replace(s, threads=2), cpu="cpu A"),
        key_parts(specs, graph, s, cpu="cpu B"),
        key_parts(specs, build_graph(net, torch.randn(2, 1, 32, 32)), s, cpu="cpu A"),
    ]
    other = demo_cnn(in_channels=1, num_classes=10, width=16)  # another model
    og = build_graph(other, x)
    names = [n for n, lay in og.layers.items() if lay.kind != "norm"]
    variants.append(key_parts(layer_specs(other, x[:1], names), og, s, cpu="cpu A"))
    for v in variants:
        keys.add(cache_key(v))
    assert len(keys) == 1 + len(variants)
    # A damaged entry is measured again, not trusted.
    path = next(tmp_path.glob("*.json"))
    path.write_text(json.dumps({"format": 1, "tables": {}}))
    build_latency_model(net, x, graph, s, meter=meter, cache=tmp_path)
    assert meter.layer_calls + meter.net_calls > calls


def test_monotone_tables_and_calibration_fit() -> None:
    t = monotone(LayerTable((1, 4), (1, 8), ((1.0, 0.9), (0.8, 2.0))))
    v = torch.tensor(t.ms)
    assert bool((v[1:] > v[:-1]).all()) and bool((v[:, 1:] > v[:, :-1]).all())
    # measured = 1.2 · tables + 0.5 + 0.01 · activations, recovered exactly
    pts = [(1.2 * t + 0.5 + 0.01 * a, t, a) for t, a in ((8, 100), (6, 70), (4, 60), (1, 20))]
    assert fit_calibration(pts) == pytest.approx((0.5, 0.01, 1.2))
    # isolated layers that pay per-activation layout conversions: a negative slope
    pts = [(1.2 * t + 0.5 - 0.01 * a, t, a) for t, a in ((8, 100), (6, 70), (4, 60), (1, 20))]
    assert fit_calibration(pts) == pytest.approx((0.5, -0.01, 1.2))
    # a fit that predicts a non-positive latency somewhere falls back to a simpler one
    pts = [(1.0, 8, 100), (0.9, 6, 70), (0.1, 4, 60), (0.5, 1, 20)]
    base, per_act, scale = fit_calibration(pts)
    assert all(scale * t + base + per_act * a > 0 for _, t, a in pts) and scale > 0


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (["3.5ms", "0.25"], "mix"),
        (["0.5params", "1ms"], "mix"),
        (["1.5latency"], "fraction"),
        (["-2ms"], "> 0"),
        (["100000ms"], "not below"),
    ],
)
def test_bad_latency_budgets_are_one_line(values: list[str], match: str) -> None:
    with pytest.raises(BudgetError, match=match) as err:
        budget_resource(values)
        for v in values:
            parse_budget(v, 5_000_000, NS)
    assert "\n" not in str(err.value)


def test_latency_budget_below_the_minimum_names_it() -> None:
    with pytest.raises(BudgetError, match="below the least") as err:
        _pruner(["0.0001latency"])
    assert " ms" in str(err.value) and "\n" not in str(err.value)


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_runtime"):
        PrunerConfig(latency_runtime="tensorrt")
    with pytest.raises(TaperpruneError, match="unknown latency runtime"):
        LatencySettings("tensorrt")


def test_onnxruntime_budgets_without_round_to_8_say_why() -> None:
    assert "round_to=8" in " ".join(_pruner(["0.5latency"], latency_runtime="onnxruntime").notes)
    assert _pruner(["0.5latency"], latency_runtime="onnxruntime", round_to=8).notes == []


def test_far_slower_than_modelled_prunes_to_the_minimum_and_says_so() -> None:
    pruner = _pruner(["0.8latency"])
    pruner.meter.net_ms = lambda module, shape: 1000.0  # type: ignore[union-attr,method-assign]
    _drive(pruner)  # no network meets the budget
    assert pruner.done
    snap = pruner.snapshots[pruner.budgets[0]]
    assert snap.macs == pytest.approx(pruner.min_macs, abs=1.0)  # pruned as far as it goes
    assert "at the minimum" in pruner.notes[-1]


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_the_real_meter_times_a_layer_and_a_network_in_each_runtime(runtime: str) -> None:
    from taperprune.latency_meter import RuntimeMeter

    settings = LatencySettings(runtime, batch=2, threads=1)
    meter = RuntimeMeter(settings, runs=3, max_seconds=0.2, layer_min_seconds=0.01)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    assert meter.layer_ms(conv, (4, 8, 8)) >= 0.0  # onnxruntime: less an empty call's time
    net = demo_cnn(num_classes=3, width=2)
    assert meter.net_ms(net, (1, 12, 12)) > 0.0
    assert net.training  # the caller's model is timed on a copy, left as it was


def test_a_network_is_timed_in_windows_and_the_median_window_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taperprune import latency_meter
    from taperprune.latency import MIN_SECONDS, Latency

    windows = iter([5.0, 1.0, 3.0])
    asked: list[dict] = []

    def fake_torch_latency(target: nn.Module, shape: tuple, batch: int, **kw: float) -> Latency:
        asked.append(kw)
        return Latency("torch", batch, 1, next(windows), 0.0, 1)

    monkeypatch.setattr(latency_meter, "torch_latency", fake_torch_latency)
    meter = latency_meter.RuntimeMeter(LatencySettings("torch", batch=1, threads=1))
    assert meter.net_rounds == 3
    assert meter.net_ms(nn.Linear(2, 2), (2,)) == 3.0  # the median window, not the mean
    assert len(asked) == 3 and all(kw["min_seconds"] == MIN_SECONDS for kw in asked)
