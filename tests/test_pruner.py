"""TaperPruner end to end on a tiny CNN and synthetic data: exact budgets, snapshots, state."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _pruning_helpers import TemplateData
from taperprune.cost import count_macs, macs_and_marginals
from taperprune.errors import BudgetError, TaperpruneError
from taperprune.masks import _MaskedForward
from taperprune.models import demo_cnn
from taperprune.pruner import PrunerConfig, Snapshot, TaperPruner
from taperprune.resource import check_budgets
from taperprune.schedule import ScheduleConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 12, 12)
EXAMPLE = torch.zeros(1, *SHAPE)
BUDGETS = [0.5, 0.25]
WARMUP = 5
STEPS = 30


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return demo_cnn(num_classes=10, in_channels=1, width=4)


def pretrained(seed: int = 0, steps: int = 20) -> nn.Module:
    """A few SGD steps so the reference loss means something."""
    model = make_model(seed)
    data = TemplateData(SHAPE, seed=100 + seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in data.batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


PROBE = TemplateData(SHAPE, seed=999).batch(16)[0]


@dataclass
class Run:
    pruner: TaperPruner
    model: nn.Module
    keeps_before: list[torch.Tensor] = field(default_factory=list)  # keep before step i+1
    equivalence: dict[int, float] = field(default_factory=dict)  # target -> max |Δ output|
    steps: int = 0


def run_pruning(
    *,
    budgets: list[float] = BUDGETS,
    schedule: ScheduleConfig | None = None,
    warmup: int = WARMUP,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    max_steps: int = 200,
    model: nn.Module | None = None,
    **cfg_kw: object,
) -> Run:
    model = pretrained(seed) if model is None else model
    schedule = schedule or ScheduleConfig(steps=STEPS)
    config = PrunerConfig(schedule=schedule, warmup_steps=warmup, **cfg_kw)  # type: ignore[arg-type]
    holder: dict[str, Run] = {}

    def on_snapshot(snap: Snapshot) -> None:
        # Right now, the physically pruned copy must compute what the masked model does.
        live = holder["run"].pruner.model
        assert snap.model is not None
        was = live.training
        live.eval()
        snap.model.eval()
        with torch.no_grad():
            diff = (live(PROBE) - snap.model(PROBE)).abs().max().item()
        live.train(was)
        holder["run"].equivalence[snap.target] = diff

    pruner = TaperPruner(model, EXAMPLE, budgets, config=config, on_snapshot=on_snapshot)
    run = holder["run"] = Run(pruner, model)
    data = TemplateData(SHAPE, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(max_steps):
        x, y = data.batch(32)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.keeps_before.append(pruner.keep.clone())
        pruner.step(loss)
        run.steps += 1
        if pruner.done:
            break
    return run


def has_masks(model: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in model.modules())


@pytest.fixture(scope="module")
def adaptive_run() -> Run:
    return run_pruning()


# ---------------------------------------------------------------- end to end
def test_budgets_reached_in_order(adaptive_run):
    p = adaptive_run.pruner
    assert p.done
    assert list(p.snapshots) == p.budgets
    assert p.budgets == [round(0.5 * p.full_macs), round(0.25 * p.full_macs)]
    steps = [s.step for s in p.snapshots.values()]
    assert steps == sorted(steps) and steps[0] < steps[1]
    # The adaptive taper meets its deadline: the final budget within the taper steps.
    assert adaptive_run.steps <= WARMUP + STEPS + len(BUDGETS) - 1
    assert p.trace[-1].step == adaptive_run.steps


def test_snapshots_are_exact(adaptive_run):
    p = adaptive_run.pruner
    for target, snap in p.snapshots.items():
        assert snap.target == target
        assert snap.model is not None
        assert count_macs(snap.model, EXAMPLE) == snap.macs
        assert snap.macs <= target
        assert snap.macs == macs_and_marginals(p.cost, snap.keep)[0]
        assert snap.widths == p.widths(snap.keep)
        convs = {n: m for n, m in snap.model.named_modules() if isinstance(m, nn.Conv2d)}
        for name, conv in convs.items():
            assert snap.widths[name] == conv.out_channels
        # Within one unit: some unit removed at the snapshot step, put back, breaks the target.
        before = adaptive_run.keeps_before[snap.step - 1]
        gone = torch.nonzero(before & ~snap.keep).flatten().tolist()
        assert gone, "a snapshot is taken at the step that removed units"
        back = []
        for u in gone:
            k = snap.keep.clone()
            k[u] = True
            back.append(macs_and_marginals(p.cost, k)[0])
        assert max(back) > target
        assert target - snap.macs < max(back) - snap.macs


def test_snapshot_model_equals_masked_model(adaptive_run):
    eq = adaptive_run.equivalence
    assert set(eq) == set(adaptive_run.pruner.budgets)
    assert max(eq.values()) < 1e-4, eq


def test_taper_steps_never_exceed_budget(adaptive_run):
    trace = adaptive_run.pruner.trace
    taper = [r for r in trace if r.phase == "taper"]
    assert taper
    assert all(r.macs <= r.budget for r in taper)
    assert [r.phase for r in trace[:WARMUP]] == ["warmup"] * WARMUP
    macs = [r.macs for r in trace]
    assert all(b <= a for a, b in zip(macs, macs[1:], strict=False))
    assert all(r.live_units >= 4 for r in trace)  # ≥ 1 unit per group
    lams = [r.lam for r in taper]
    assert all(math.isfinite(v) and v >= 0 for v in lams)


def test_masks_never_revive(adaptive_run):
    keeps = adaptive_run.keeps_before + [adaptive_run.pruner.keep]
    for a, b in zip(keeps, keeps[1:], strict=False):
        assert not (b & ~a).any()


def test_same_seed_same_channel_plan(adaptive_run):
    again = run_pruning()
    p, q = adaptive_run.pruner, again.pruner
    assert list(p.snapshots) == list(q.snapshots)
    for t in p.snapshots:
        assert torch.equal(p.snapshots[t].keep, q.snapshots[t].keep)
        assert p.snapshots[t].step == q.snapshots[t].step
    assert torch.equal(p.scores, q.scores)


def test_export(adaptive_run):
    p = adaptive_run.pruner
    for budget, target in zip(BUDGETS, p.budgets, strict=True):
        small = p.export(budget)
        assert small is p.snapshots[target].model
        assert not has_masks(small)
        assert count_macs(small, EXAMPLE) == p.snapshots[target].macs
        assert p.export(str(budget)) is small
        assert p.export(target) is small  # absolute MACs
    with pytest.raises(TaperpruneError, match="no snapshot"):
        p.export(0.3)
    now = p.export()  # the masks as they are now
    assert not has_masks(now)
    assert count_macs(now, EXAMPLE) == int(p.macs)
    assert has_masks(p.model)


def test_export_before_reaching_budget_raises():
    model = make_model()
    p = TaperPruner(model, EXAMPLE, BUDGETS)
    with pytest.raises(TaperpruneError, match="no snapshot"):
        p.export(0.5)
    assert not has_masks(p.export())  # nothing removed yet: a copy of the full model
    assert count_macs(p.export(), EXAMPLE) == p.full_macs


@pytest.mark.parametrize(
    ("schedule", "extra"),
    [
        (ScheduleConfig(kind="oneshot", steps=4), {}),
        (ScheduleConfig(kind="exponential", steps=10), {}),
        (ScheduleConfig(kind="linear", steps=10), {"score": "bn_gamma"}),
        (ScheduleConfig(kind="linear", steps=10), {"price": "uniform"}),
        (ScheduleConfig(kind="linear", steps=10), {"price": "static"}),
    ],
    ids=["oneshot", "exponential", "bn_gamma", "uniform_price", "static_price"],
)
def test_other_schedules_and_ablations_reach_budgets_exactly(schedule, extra):
    run = run_pruning(schedule=schedule, warmup=3, **extra)
    p = run.pruner
    assert p.done and list(p.snapshots) == p.budgets
    assert run.steps <= 3 + schedule.steps + len(BUDGETS) - 1
    for target, snap in p.snapshots.items():
        assert snap.macs <= target
        assert count_macs(snap.model, EXAMPLE) == snap.macs
    assert all(r.macs <= r.budget for r in p.trace if r.phase == "taper")
    assert max(run.equivalence.values()) < 1e-4
    if schedule.kind == "oneshot":
        # Straight to each budget: one taper step each.
        assert [s.step for s in p.snapshots.values()] == [4, 6]


# ---------------------------------------------------------------- state round trip
def test_state_dict_round_trip():
    k_steps, m_steps = 12, 15
    config = PrunerConfig(schedule=ScheduleConfig(steps=STEPS), warmup_steps=WARMUP)
    data = TemplateData(SHAPE, seed=7).batches(k_steps + m_steps)

    def train(model, opt, pruner, batches):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step(loss)

    model_a = pretrained()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05, momentum=0.9)
    pa = TaperPruner(model_a, EXAMPLE, BUDGETS, config=config)
    train(model_a, opt_a, pa, data[:k_steps])
    assert pa.trace[-1].phase == "taper" and pa.trace[-1].macs < pa.full_macs

    buf = io.BytesIO()
    torch.save(
        {"pruner": pa.state_dict(), "model": model_a.state_dict(), "opt": opt_a.state_dict()}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # tensors and plain numbers only

    train(model_a, opt_a, pa, data[k_steps:])

    model_b = make_model(seed=123)  # different init: everything comes from the state
    model_b.load_state_dict(saved["model"])
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9)
    opt_b.load_state_dict(saved["opt"])
    pb = TaperPruner(model_b, EXAMPLE, BUDGETS, config=config)
    pb.load_state_dict(saved["pruner"])
    assert torch.equal(pb.keep, saved["pruner"]["keep"])
    train(model_b, opt_b, pb, data[k_steps:])

    assert torch.equal(pa.keep, pb.keep)
    assert torch.equal(pa.scores, pb.scores)
    assert pa.taper == pb.taper
    assert pa.macs == pb.macs and pa.lam == pb.lam and pa.done == pb.done
    assert pa.trace[k_steps:] == pb.trace
    assert list(pa.snapshots) == list(pb.snapshots)
    for t in pa.snapshots:
        assert torch.equal(pa.snapshots[t].keep, pb.snapshots[t].keep)
        assert pa.snapshots[t].step == pb.snapshots[t].step
    for (na, a), (nb, b) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert na == nb and torch.equal(a, b), na
    # Snapshots taken after the restart carry their physical model; older ones do not.
    for t, snap in pb.snapshots.items():
        assert (snap.model is None) == (str(t) in saved["pruner"]["snapshots"])


def test_restored_snapshot_cannot_be_exported(adaptive_run):
    p = adaptive_run.pruner
    q = TaperPruner(make_model(), EXAMPLE, BUDGETS)
    q.load_state_dict(copy.deepcopy(p.state_dict()))
    assert q.done
    assert list(q.snapshots) == list(p.snapshots)
    for t, s in q.snapshots.items():
        assert s.model is None and torch.equal(s.keep, p.snapshots[t].keep)
        assert s.widths == p.snapshots[t].widths
    with pytest.raises(TaperpruneError, match="restored"):
        q.export(0.5)


def test_load_state_dict_rejects_other_budgets_or_model():
    p = TaperPruner(make_model(), EXAMPLE, BUDGETS)
    q = TaperPruner(make_model(), EXAMPLE, [0.5])
    with pytest.raises(TaperpruneError, match="budgets"):
        q.load_state_dict(p.state_dict())
    torch.manual_seed(0)
    wide = TaperPruner(demo_cnn(num_classes=10, in_channels=1, width=5), EXAMPLE, [0.5])
    state = wide.state_dict()
    state["budgets"] = list(q.budgets)
    with pytest.raises(TaperpruneError, match="units"):
        q.load_state_dict(state)


# ---------------------------------------------------------------- invariances
def linear_snapshot_steps(full: int, final: int, targets: list[int], steps: int) -> list[int]:
    """Taper step at which a linear schedule first reaches each target."""
    out = []
    for target in targets:
        t = next(
            t for t in range(1, steps + 1) if full - (full - final) * t / steps <= target + 1e-6
        )
        out.append(t)
    return out


def test_network_lr_does_not_set_the_pruning_speed():
    # Six linear steps: each step lowers the budget by more than any unit's marginal cost,
    # so a snapshot cannot come a step early by a lucky coarse removal.
    schedule = ScheduleConfig(kind="linear", steps=6)
    runs = [
        run_pruning(schedule=schedule, lr=lr, momentum=0.0, warmup=WARMUP) for lr in (0.02, 0.2)
    ]
    p = runs[0].pruner
    _, d = macs_and_marginals(p.cost, torch.ones(p.graph.num_units, dtype=torch.bool))
    assert float(d.max()) < (p.full_macs - p.budgets[-1]) / schedule.steps
    want = [WARMUP + t for t in linear_snapshot_steps(p.full_macs, p.budgets[-1], p.budgets, 6)]
    for run in runs:
        assert run.pruner.done
        assert not any(r.phase == "skipped" for r in run.pruner.trace)
        assert [s.step for s in run.pruner.snapshots.values()] == want
    # The runs did differ: the network learned at different speeds.
    assert not torch.equal(runs[0].pruner.scores, runs[1].pruner.scores)


def _scaled_pair(optimizer: bool) -> tuple[list[TaperPruner], list[list[torch.Tensor]]]:
    """The same net twice, conv '4' ×10 in the second (BN '5' follows it)."""
    base = pretrained()
    scaled = copy.deepcopy(base)
    with torch.no_grad():
        scaled[4].weight.mul_(10.0)
    config = PrunerConfig(
        schedule=ScheduleConfig(kind="linear", steps=4), warmup_steps=3, score_beta=0.9
    )
    models = [base, scaled]
    pruners = [TaperPruner(m, EXAMPLE, [0.5], config=config) for m in models]
    opts: list[torch.optim.Optimizer | None] = [None, None]
    if optimizer:
        # Scale-invariant layer: ×10 weight gets ÷10 gradient, so ×100 LR keeps the
        # trajectories equal (up to BN's eps).
        opts[0] = torch.optim.SGD(base.parameters(), lr=0.02)
        other = [p for n, p in scaled.named_parameters() if n != "4.weight"]
        opts[1] = torch.optim.SGD(
            [{"params": other}, {"params": [scaled[4].weight], "lr": 2.0}], lr=0.02
        )
    grads: list[list[torch.Tensor]] = [[], []]
    data = TemplateData(SHAPE, seed=3).batches(8)
    for x, y in data:
        for i, (model, pruner) in enumerate(zip(models, pruners, strict=True)):
            model.train()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            grads[i].append(pruner.masks.grad.detach().clone())
            if opts[i] is not None:
                opts[i].step()
                opts[i].zero_grad()
            else:
                model.zero_grad()
            pruner.step(loss)
    return pruners, grads


@pytest.mark.parametrize("optimizer", [False, True], ids=["frozen", "sgd"])
def test_scores_invariant_to_weight_scale_before_bn(optimizer):
    (pa, pb), (ga, gb) = _scaled_pair(optimizer)
    # Exact up to BN's eps (var + eps vs 100·var + eps: ~1e-5 relative), so the absolute
    # tolerance is relative to the largest entry, not to each (possibly tiny) entry.
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    assert torch.allclose(pa.scores, pb.scores, rtol=1e-4, atol=1e-4 * float(pa.scores.max()))
    assert torch.equal(pa.keep, pb.keep)
    assert not pa.keep.all()  # the taper did remove channels
    assert [r.macs for r in pa.trace] == [r.macs for r in pb.trace]
    assert pa.snapshots.keys() == pb.snapshots.keys()


# ---------------------------------------------------------------- bad input
def test_step_without_backward_raises():
    model = make_model()
    p = TaperPruner(model, EXAMPLE, BUDGETS)
    x, y = TemplateData(SHAPE).batch(4)
    loss = F.cross_entropy(model(x), y)
    with pytest.raises(TaperpruneError, match="backward"):
        p.step(loss)
    loss.backward()
    p.step(loss)
    with pytest.raises(TaperpruneError, match="backward"):
        p.step(loss)  # the gradient was consumed by the previous step


def test_non_finite_steps_are_skipped_then_fatal():
    model = make_model()
    config = PrunerConfig(warmup_steps=2, max_bad_steps=3)
    p = TaperPruner(model, EXAMPLE, BUDGETS, config=config)
    data = TemplateData(SHAPE)

    def step(loss_value: float | None = None, grad_scale: float = 1.0):
        x, y = data.batch(8)
        loss = F.cross_entropy(model(x), y)
        (loss * grad_scale).backward()
        model.zero_grad()
        return p.step(loss if loss_value is None else loss_value)

    assert step().phase == "warmup"
    scores = p.scores.clone()
    assert step(math.nan).phase == "skipped"
    assert step(math.inf).phase == "skipped"
    assert torch.equal(p.scores, scores)  # nothing learned from bad steps
    assert p.masks.grad is None
    assert step().phase == "warmup"  # a good step resets the count
    assert step(-math.inf).phase == "skipped"
    assert step(grad_scale=math.nan).phase == "skipped"  # finite loss, NaN gradient
    taper_before = p.taper
    with pytest.raises(TaperpruneError, match="non-finite"):
        step(math.nan)
    assert p.taper == taper_before


def test_bad_steps_do_not_advance_the_taper():
    model = make_model()
    config = PrunerConfig(warmup_steps=1, max_bad_steps=50)
    p = TaperPruner(model, EXAMPLE, BUDGETS, config=config)
    data = TemplateData(SHAPE)
    for value in [None, None, math.nan, math.nan]:
        x, y = data.batch(8)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        p.step(loss if value is None else value)
    assert p.taper.step == 1
    assert [r.phase for r in p.trace] == ["warmup", "taper", "skipped", "skipped"]


@pytest.mark.parametrize(
    ("budgets", "match"),
    [
        ([0.25, 0.5], "strictly decreasing"),
        ([0.5, 0.5], "strictly decreasing"),
        ([1.5], "fraction"),
        ([0.0], "> 0"),
        (["half"], "not a number"),
        ([], "at least one"),
        ([1e-4], "least this model can reach"),
        (["10G"], "not below"),
    ],
)
def test_budgets_validated_at_construction(budgets, match):
    model = make_model()
    with pytest.raises(BudgetError, match=match):
        TaperPruner(model, EXAMPLE, budgets)
    with pytest.raises(BudgetError, match=match):
        check_budgets(model, EXAMPLE, budgets)
    assert not has_masks(model)  # nothing installed by a failed construction


def test_check_budgets_matches_pruner():
    model = make_model()
    got = check_budgets(model, EXAMPLE, "0.5,0.25")
    assert got == TaperPruner(model, EXAMPLE, BUDGETS).budgets


@pytest.mark.parametrize(
    "kw",
    [
        dict(warmup_steps=0),
        dict(score_beta=1.0),
        dict(score_beta=-0.1),
        dict(score="magnitude"),
        dict(price="flops"),
    ],
)
def test_pruner_config_validation(kw):
    with pytest.raises(ValueError):
        PrunerConfig(**kw)


def test_minimum_budget_is_reachable():
    """A budget at the stated minimum is accepted and reached with one unit per group."""
    model = pretrained()
    probe = TaperPruner(copy.deepcopy(model), EXAMPLE, [0.5])
    minimum = int(math.ceil(probe.min_macs))
    run = run_pruning(
        budgets=[minimum],
        schedule=ScheduleConfig(kind="linear", steps=5),
        warmup=2,
        model=model,
    )
    p = run.pruner
    assert p.done and p.snapshots[minimum].macs <= minimum
    widths = p.snapshots[minimum].widths
    assert widths == {"0": 1, "4": 1, "8": 1, "11": 1, "16": 10}  # the classifier stays


def test_schedule_shortcuts_override_the_config():
    from taperprune.models import demo_cnn

    base = PrunerConfig(warmup_steps=7)
    pruner = TaperPruner(
        demo_cnn(width=4),
        torch.zeros(1, 1, 28, 28),
        [0.5],
        config=base,
        steps=11,
        tolerance=0.2,
        schedule="linear",
    )
    sched_cfg = pruner.config.schedule
    assert (sched_cfg.steps, sched_cfg.tolerance, sched_cfg.kind.value) == (11, 0.2, "linear")
    assert pruner.config.warmup_steps == 7
    with pytest.raises(ValueError):
        TaperPruner(demo_cnn(width=4), torch.zeros(1, 1, 28, 28), [0.5], schedule="zigzag")
