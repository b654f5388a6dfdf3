"""The taper: adaptive controller on synthetic loss traces, fixed schedules, one-shot."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taperprune.schedule import (
    ScheduleConfig,
    ScheduleKind,
    TaperState,
    advance,
    even_rate,
    loss_estimate,
    start,
)

FULL = 1_000_000.0
FINAL = 125_000.0
REF = 1.0


def run(
    cfg: ScheduleConfig,
    losses: Iterable[float],
    *,
    full: float = FULL,
    final: float = FINAL,
    ref: float = REF,
    targets: tuple[float, ...] = (),
) -> list[TaperState]:
    """Feed a loss trace to `advance`; the states after each step (index 0 = start)."""
    states = [start(cfg, full, final)]
    for loss in losses:
        states.append(
            advance(
                cfg, states[-1], full=full, final=final, loss=loss, ref_loss=ref, targets=targets
            )
        )
    return states


def adaptive(**kw: float) -> ScheduleConfig:
    base = dict(kind="adaptive", steps=200, tolerance=0.05, loss_beta=0.0)
    base.update(kw)
    return ScheduleConfig(**base)  # type: ignore[arg-type]


def test_even_rate_reaches_final_in_steps():
    r = even_rate(FULL, FINAL, 200)
    assert FULL * (1 - r) ** 200 == pytest.approx(FINAL, rel=1e-12)
    st0 = start(adaptive(), FULL, FINAL)
    assert st0.budget == FULL and st0.rate == r and st0.step == 0 and not st0.paused


def test_loss_at_reference_grows_rate_to_ceiling():
    cfg = adaptive()
    r_even = even_rate(FULL, FINAL, cfg.steps)
    states = run(cfg, [REF] * 60)
    rates = [s.rate for s in states]
    assert all(b >= a for a, b in zip(rates, rates[1:], strict=False))
    for k in range(1, 10):
        assert rates[k] == pytest.approx(r_even * cfg.grow**k)
    assert rates[-1] == pytest.approx(cfg.max_speed * r_even)
    assert max(rates) <= cfg.max_speed * r_even * (1 + 1e-12)
    assert not any(s.paused for s in states)
    # The budget falls by the controller's rate (faster than the deadline needs).
    for a, b in zip(states, states[1:], strict=False):
        if b.budget > FINAL:
            assert b.budget == pytest.approx(a.budget * (1 - b.rate))


def test_loss_at_reference_finishes_early():
    cfg = adaptive()
    states = run(cfg, [REF] * cfg.steps)
    first = next(i for i, s in enumerate(states) if s.budget <= FINAL)
    assert first < cfg.steps / 2  # up to 3x the even pace
    assert all(s.budget == FINAL for s in states[first:])


def test_loss_above_tolerance_shrinks_rate_to_floor():
    cfg = adaptive()
    r_even = even_rate(FULL, FINAL, cfg.steps)
    floor = cfg.min_speed * r_even
    loss = REF * (1 + 1.5 * cfg.tolerance)  # above tolerance, below the pause limit
    states = run(cfg, [loss] * 80)
    rates = [s.rate for s in states]
    assert all(b <= a for a, b in zip(rates, rates[1:], strict=False))
    assert rates[1] == pytest.approx(r_even * cfg.shrink)
    assert min(rates) == pytest.approx(floor)
    assert min(rates) >= floor * (1 - 1e-12)
    assert not any(s.paused for s in states)
    assert states[-1].excess == pytest.approx(1.5 * cfg.tolerance)


def test_loss_past_pause_limit_pauses():
    cfg = adaptive()
    states = run(cfg, [REF] * 5 + [REF * (1 + 3 * cfg.tolerance)] * 20)
    assert not states[5].paused
    assert all(s.paused for s in states[6:])
    # While paused the controller's own rate is frozen ...
    assert all(s.rate == states[6].rate for s in states[6:])
    # ... and the budget only moves at the pace the deadline requires.
    for a, b in zip(states[6:], states[7:], strict=False):
        left = cfg.steps - b.step + 1
        required = 1 - (FINAL / a.budget) ** (1 / left)
        assert b.budget == pytest.approx(a.budget * (1 - required))
        assert b.budget < a.budget


def test_recovery_after_long_pause_resumes_at_floor():
    cfg = adaptive(steps=5000)
    r_even = even_rate(FULL, FINAL, cfg.steps)
    floor = cfg.min_speed * r_even
    bad = REF * (1 + 10 * cfg.tolerance)
    states = run(cfg, [REF] * 10 + [bad] * 2000 + [REF] * 30)
    assert states[2010].paused
    resumed = states[2011]
    assert not resumed.paused
    assert resumed.rate == pytest.approx(floor)
    assert resumed.rate > 1e-3 * r_even  # not decayed towards zero (e.g. 1e-41)
    # It grows again from the floor.
    assert states[2040].rate == pytest.approx(floor * cfg.grow**29)


def test_long_shrink_never_decays_below_floor():
    cfg = adaptive(steps=5000)
    floor = cfg.min_speed * even_rate(FULL, FINAL, cfg.steps)
    states = run(cfg, [REF * (1 + 1.5 * cfg.tolerance)] * 3000 + [REF])
    assert min(s.rate for s in states) == pytest.approx(floor)
    assert states[-1].rate == pytest.approx(floor * cfg.grow)


def test_moderate_excess_during_pause_keeps_pause_until_below_tolerance():
    cfg = adaptive()
    mid = REF * (1 + 1.5 * cfg.tolerance)  # above tolerance but below the pause limit
    states = run(cfg, [REF * 2] + [mid] * 10 + [REF])
    assert all(s.paused for s in states[1:12])
    assert not states[12].paused


@pytest.mark.parametrize("steps", [1, 2, 7, 100, 1000])
@pytest.mark.parametrize("final_frac", [0.5, 0.03])
def test_deadline_guarantee_with_terrible_loss(steps, final_frac):
    cfg = adaptive(steps=steps)
    final = FULL * final_frac
    states = run(cfg, [1e6] * (steps + 5), final=final)
    budgets = [s.budget for s in states]
    assert all(b < a for a, b in zip(budgets[: steps + 1], budgets[1 : steps + 1], strict=False))
    assert all(b > final for b in budgets[:steps])
    assert budgets[steps] == final  # exactly, not final + rounding
    assert all(b >= final for b in budgets)
    assert all(b == final for b in budgets[steps:])
    assert states[steps].paused or steps == 1


def test_deadline_guarantee_default_loss_ema():
    cfg = ScheduleConfig(steps=300)  # default: loss EMA with β = 0.9
    states = run(cfg, [REF] * 20 + [50.0] * 400)
    assert states[300].budget == FINAL
    assert states[299].budget > FINAL


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60),
    st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=80),
    st.floats(0.01, 0.9),
)
def test_any_loss_trace_reaches_final_within_steps(steps, losses, final_frac):
    cfg = adaptive(steps=steps, loss_beta=0.5)
    final = FULL * final_frac
    trace = (losses * (steps // len(losses) + 2))[: steps + 3]
    states = run(cfg, trace, final=final)
    budgets = [s.budget for s in states]
    assert all(b <= a for a, b in zip(budgets, budgets[1:], strict=False))
    assert all(b >= final for b in budgets)
    assert budgets[steps] == final


def test_linear_schedule_formula():
    cfg = ScheduleConfig(kind="linear", steps=40)
    states = run(cfg, [1e6] * 50)  # the loss does not matter
    for t, s in enumerate(states[1:], start=1):
        want = FULL - (FULL - FINAL) * min(1.0, t / 40)
        assert s.budget == pytest.approx(want, rel=1e-12)
        assert s.step == t
    assert states[39].budget > FINAL
    assert states[40].budget == FINAL


def test_exponential_schedule_formula():
    cfg = ScheduleConfig(kind="exponential", steps=40)
    states = run(cfg, [REF] * 50)
    for t, s in enumerate(states[1:], start=1):
        want = FULL * (FINAL / FULL) ** min(1.0, t / 40)
        assert s.budget == pytest.approx(want, rel=1e-12)
    assert states[39].budget > FINAL
    assert states[40].budget == FINAL


def test_cubic_schedule_is_agp_slow_at_the_end():
    cfg = ScheduleConfig(kind="cubic", steps=40)
    states = run(cfg, [REF] * 50)
    for t, s in enumerate(states[1:], start=1):
        want = FINAL + (FULL - FINAL) * max(0.0, 1 - t / 40) ** 3
        assert s.budget == pytest.approx(want, rel=1e-12)
    assert states[40].budget == FINAL
    # the last tenth of the steps removes less than the first tenth
    assert states[36].budget - states[40].budget < states[0].budget - states[4].budget


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["linear", "exponential", "cubic", "adaptive"]),
    st.integers(1, 30),
    st.integers(1000, 10**10),
    st.floats(1e-4, 0.999),
)
def test_every_schedule_lands_exactly_on_final(kind, steps, full, frac):
    """At the deadline the budget is `final` itself, not `final` plus a rounding error."""
    final = float(max(1, int(full * frac)))
    cfg = ScheduleConfig(kind=kind, steps=steps, loss_beta=0.0)
    states = run(cfg, [1e3] * (steps + 1), full=float(full), final=final)
    assert states[steps].budget == final
    assert all(s.budget > final for s in states[:steps])


def test_fixed_schedules_ignore_the_loss():
    for kind in ("linear", "exponential", "cubic", "oneshot"):
        cfg = ScheduleConfig(kind=kind, steps=30)
        a = [s.budget for s in run(cfg, [REF] * 35)]
        b = [s.budget for s in run(cfg, [1e9] * 35)]
        assert a == b


def test_oneshot_jumps_to_each_target_in_turn():
    targets = (FULL / 2, FULL / 4, FINAL)
    cfg = ScheduleConfig(kind="oneshot", steps=9)
    states = run(cfg, [REF] * 12, targets=targets)
    budgets = [s.budget for s in states[1:]]
    assert budgets == [targets[0]] * 3 + [targets[1]] * 3 + [targets[2]] * 6


def test_oneshot_single_budget_goes_straight_to_final():
    cfg = ScheduleConfig(kind="oneshot", steps=100)
    states = run(cfg, [REF] * 3)
    assert [s.budget for s in states[1:]] == [FINAL] * 3


def test_loss_estimate_bias_correction():
    cfg = ScheduleConfig(loss_beta=0.9)
    s0 = start(cfg, FULL, FINAL)
    assert math.isnan(loss_estimate(s0, 0.9))
    s1 = advance(cfg, s0, full=FULL, final=FINAL, loss=2.0, ref_loss=2.0)
    assert loss_estimate(s1, 0.9) == pytest.approx(2.0)
    s2 = advance(cfg, s1, full=FULL, final=FINAL, loss=4.0, ref_loss=2.0)
    want = (0.9 * 0.1 * 2.0 + 0.1 * 4.0) / (1 - 0.9**2)
    assert loss_estimate(s2, 0.9) == pytest.approx(want)
    assert s2.loss_steps == 2 and s2.step == 2


def test_kind_accepts_strings():
    assert ScheduleConfig(kind="linear").kind is ScheduleKind.LINEAR
    assert ScheduleConfig(kind=ScheduleKind.ONESHOT).kind is ScheduleKind.ONESHOT


@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="bogus"),
        dict(steps=0),
        dict(steps=-5),
        dict(tolerance=0.0),
        dict(tolerance=-0.1),
        dict(min_speed=0.0),
        dict(min_speed=1.5),
        dict(max_speed=0.5),
        dict(shrink=1.0),
        dict(shrink=0.0),
        dict(grow=1.0),
        dict(grow=0.9),
        dict(loss_beta=1.0),
        dict(loss_beta=-0.1),
        dict(reference="best"),
        dict(reference_beta=1.0),
        dict(loss_beta=0.99, reference_beta=0.9),  # the reference must be the slower one
    ],
)
def test_config_validation(kw):
    with pytest.raises(ValueError):
        ScheduleConfig(**kw)


def test_trailing_reference_follows_a_loss_that_settles_higher():
    """A loss that steps up 20 % and stays: the warm-up reference pauses the taper for
    good, the trailing one catches up with it and lets the controller speed up again."""
    losses = [REF] * 10 + [1.2 * REF] * 600
    warm = run(adaptive(steps=2000), losses)
    trail = run(adaptive(steps=2000, reference="trailing"), losses)
    assert all(s.paused for s in warm[12:])
    assert trail[12].paused  # the rise is seen at once ...
    assert not trail[-1].paused  # ... and absorbed: the loss is where training holds it
    assert trail[-1].ref == pytest.approx(1.2 * REF, rel=0.01)
    assert trail[-1].rate > trail[200].rate  # speeding up again
    assert trail[-1].budget < warm[-1].budget


def test_trailing_reference_slows_for_a_rising_loss_and_speeds_up_when_it_recovers():
    """The controller follows the training: a loss climbing faster than the reference
    trails it slows the taper (rate falls), a loss coming back speeds it up."""
    cfg = adaptive(steps=3000, reference="trailing")
    climb = [REF * (1 + 0.004 * i) for i in range(100)]
    recover = [climb[-1] * (1 - 0.002 * i) for i in range(100)]
    states = run(cfg, [REF] * 20 + climb + recover)
    assert any(s.paused or s.rate < states[20].rate for s in states[60:120])  # slowed down
    assert not states[-1].paused and states[-1].rate > states[120].rate  # sped up again


def test_trailing_reference_starts_from_the_warmup_loss():
    cfg = adaptive(reference="trailing")
    one = run(cfg, [REF * 1.5], ref=REF)[1]
    assert one.ref == pytest.approx(cfg.reference_beta * REF + (1 - cfg.reference_beta) * 1.5)
    assert one.ref_steps == 1
