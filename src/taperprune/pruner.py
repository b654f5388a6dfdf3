"""`TaperPruner`: channel pruning to a MAC budget inside any training loop.

    pruner = TaperPruner(model, example_input, budgets=[0.5, 0.25])
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()            # also fills the mask gradients
        optimizer.step()
        pruner.step(loss)          # scores, taper, λ solve, snapshot when a budget is reached
        optimizer.zero_grad()
        if pruner.done:
            break
    small = pruner.export(0.25)    # an ordinary, physically smaller nn.Module

`pruner.step` must come after `loss.backward()`; before or after `optimizer.step()`
makes no difference (the masks are not parameters of the optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import schedule as sched
from .blocks import block_units, rounded_budgets
from .budget import NS
from .constraint import group_interactions, minimum_macs, solve_budget
from .errors import TaperpruneError
from .graph import ChannelGraph, build_graph
from .latency_gate import gate_snapshot, latency_settings, load_notes, round_to_notes
from .latency_meter import Meter, RuntimeMeter
from .masks import ChannelMasks
from .resource import budget_cost
from .scores import bn_gamma_of, corrected_scores, update_scores
from .settings import PrunerConfig
from .snapshot_map import Snapshot, SnapshotMap
from .surgery import check_surgery, remove_masked
from .width_floor import GroupFloors


@dataclass(frozen=True)
class StepRecord:
    """One row of the trace."""

    step: int
    phase: str  # "warmup" | "taper" | "done" | "skipped"
    budget: float
    macs: float
    lam: float
    rate: float
    paused: bool
    loss: float
    loss_ema: float
    removed: int
    live_units: int


class TaperPruner:
    """Prunes `model` in place (by masks) down to each of `budgets`, one snapshot each."""

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        budgets: Sequence[float | int | str] | str,
        *,
        config: PrunerConfig | None = None,
        steps: int | None = None,
        tolerance: float | None = None,
        schedule: str | None = None,
        exclude: Sequence[str] = (),
        on_snapshot: Callable[[Snapshot], None] | None = None,
        keep_snapshot_models: bool = True,
        check: bool = True,
        graph: ChannelGraph | None = None,
        latency_meter: Meter | None = None,
        latency_cache: Path | bool | None = True,
    ) -> None:
        """`check=False` skips the trial removals (`check_surgery`) already run on this model;
        `graph` is the model's channel graph when the caller has built it (with `exclude`).
        A `config.round_to` that leaves no group wider than one block raises TaperpruneError.

        Latency budgets ('3.5ms', '0.5latency') measure the latency model on this machine
        with `config.latency_*` (cached in `latency_cache`: True for the default folder), and
        each snapshot's real latency with `latency_meter` (the runtime by default)."""
        self.model = model
        config = config or PrunerConfig()
        # Shortcuts for the schedule settings most users change.
        given: dict[str, Any] = {"steps": steps, "tolerance": tolerance, "kind": schedule}
        shortcut = {k: v for k, v in given.items() if v is not None}
        if shortcut:
            config = replace(config, schedule=replace(config.schedule, **shortcut))
        self.config = config
        self.graph = graph or build_graph(model, example_input, exclude=exclude)
        # Budgets like '1.2Mparams' count parameters: then every "macs" of the pruner (full,
        # now, per snapshot, in the trace) counts parameters, the resource being budgeted.
        settings = latency_settings(config)
        self.unit, self.cost = budget_cost(
            self.graph,
            model,
            budgets,
            example_input=example_input,
            latency=settings,
            meter=latency_meter,
            cache=latency_cache,
        )
        self.meter: Meter | None = None
        self.notes: list[str] = []
        if self.unit == NS:
            self.meter = latency_meter if latency_meter is not None else RuntimeMeter(settings)
            self.notes += round_to_notes(settings, config.round_to) + load_notes(self.cost)
        self.full_macs = self.cost.full_macs
        n_groups = len(self.graph.groups)
        # Groups no wider than one block of `round_to` channels keep their full width;
        # `round_to` is an error only where no group is wider (see blocks.py).
        self.block_units = b = block_units(self.graph, config.round_to)
        cap, ug = config.max_pruning_ratio, self.graph.unit_group
        self.floors = GroupFloors(self.cost, ug, n_groups, config.width_floor, cap)
        self.min_macs = minimum_macs(self.cost, ug, n_groups, b, self.floors.least)
        self.budgets = rounded_budgets(
            budgets, self.full_macs, self.min_macs, config.round_to, self.unit, cap
        )
        # What the solve aims at for each budget: the budget itself, lower where a latency
        # snapshot measured above budget × LATENCY_SLACK (then `notes` says so).
        self.goals: list[float] = [float(b) for b in self.budgets]
        self._retries = 0
        self.interactions = group_interactions(self.cost, self.graph.unit_group, n_groups)
        if check:  # before any training: fail now, not at a snapshot
            check_surgery(model, self.graph)
        self.masks = ChannelMasks(model, self.graph)
        self.scores = torch.zeros(self.graph.num_units, dtype=torch.float64)
        self.on_snapshot = on_snapshot
        self.keep_snapshot_models = keep_snapshot_models
        self.snapshots = SnapshotMap(self.full_macs)  # also by budget as given: [0.5]
        self.exclude = tuple(exclude)
        self.trace: list[StepRecord] = []
        self._steps = 0
        self._score_steps = 0
        self._ref_sum = 0.0
        self._ref_count = 0
        self._bad_steps = 0
        self._next = 0  # index of the next budget to reach
        self._lam = 0.0
        self._macs = float(self.full_macs)  # R(masks), updated by every solve
        self._live = self.graph.num_units
        self._d: torch.Tensor | None = None  # marginal costs for the current masks
        full, static = torch.ones(self.graph.num_units, dtype=torch.bool), config.price == "static"
        self._static_price = self.cost.total_and_marginals(full)[1] if static else None
        self.taper = sched.start(self.config.schedule, self.full_macs, self.budgets[-1])

    # ---------------------------------------------------------------- queries
    @property
    def done(self) -> bool:
        """True once the last budget has been reached (its snapshot taken)."""
        return self._next >= len(self.budgets)

    @property
    def macs(self) -> float:
        """MACs per sample of the masked network now."""
        return self._macs

    @property
    def keep(self) -> torch.Tensor:
        return self.masks.keep

    @property
    def lam(self) -> float:
        """The price of a MAC (loss per MAC) set by the last budget solve."""
        return self._lam

    @property
    def ref_loss(self) -> float:
        return self._ref_sum / self._ref_count if self._ref_count else math.nan

    def layer_macs(self) -> dict[str, int]:
        """Per-layer MACs (parameters, ns of latency tables) of the masked network now."""
        return self.cost.per_layer(self.masks.keep)

    def widths(self, keep: torch.Tensor | None = None) -> dict[str, int]:
        """Output channels left in every conv/linear layer."""
        keep = self.masks.keep if keep is None else keep
        ext = torch.cat([keep, torch.ones(1, dtype=torch.bool)])
        return {
            n: int(ext[lay.out_units].sum())
            for n, lay in self.graph.layers.items()
            if lay.kind != "norm"
        }

    # ---------------------------------------------------------------- the step
    def step(self, loss: torch.Tensor | float) -> StepRecord:
        """Call once per optimizer step, after `loss.backward()`."""
        loss_v = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        grad = self.masks.grad
        if grad is None:
            raise TaperpruneError(
                "pruner.step() found no mask gradients: call loss.backward() on a loss computed "
                "by the pruned model before pruner.step(loss)"
            )
        self._steps += 1
        ok = math.isfinite(loss_v) and bool(torch.isfinite(grad).all())
        if not ok:
            self.masks.zero_grad()
            self._bad_steps += 1
            if self._bad_steps >= self.config.max_bad_steps:
                raise TaperpruneError(
                    f"{self._bad_steps} consecutive steps had a non-finite loss or gradient; "
                    "lower the learning rate or check the data"
                )
            return self._record("skipped", loss_v, 0)
        self._bad_steps = 0
        self._update_scores(grad)
        self.masks.zero_grad()
        if self.done:
            return self._record("done", loss_v, 0)
        if self._score_steps <= self.config.warmup_steps:
            self._ref_sum += loss_v
            self._ref_count += 1
            return self._record("warmup", loss_v, 0)

        self.taper = sched.advance(
            self.config.schedule,
            self.taper,
            full=self.full_macs,
            final=self.budgets[-1],
            loss=loss_v,
            ref_loss=self.ref_loss,
            targets=tuple(float(b) for b in self.budgets),
        )
        # Once the taper reaches a budget the solve aims at its goal: lower than the budget
        # (by one more step) where its latency snapshot measured too slow.
        budget = max(self.taper.budget, float(self.budgets[self._next]))
        if budget <= self.budgets[self._next]:
            budget = self.goals[self._next]
        self.taper = replace(self.taper, budget=budget)
        sol = solve_budget(
            self.cost,
            self._current_scores(),
            self.masks.keep,
            budget,
            self.graph.unit_group,
            self.interactions,
            uniform_price=self.config.price == "uniform",
            price_power=self.config.price_power,
            fixed_price=self._static_price,
            block_units=self.block_units,
            floors=self.floors.at(budget),
            marginals=None if self._d is None else (self._macs, self._d),
        )
        self._d = sol.marginals
        if sol.removed:
            self.masks.set_keep(sol.keep)
            self._lam = sol.lam
            self._macs = sol.macs
            self._live = int(sol.keep.sum())
        record = self._record("taper", loss_v, sol.removed, macs=sol.macs)
        while not self.done and sol.macs <= self.goals[self._next]:
            if not self._take_snapshot(self.budgets[self._next], sol.macs, sol.keep):
                break
            self._next += 1
        return record

    def _update_scores(self, grad: torch.Tensor) -> None:
        self._score_steps += 1
        if self.config.score == "taylor":
            self.scores = update_scores(self.scores, grad, self.config.score_beta)

    def _current_scores(self) -> torch.Tensor:
        if self.config.score == "bn_gamma":
            return bn_gamma_of(self.model, self.graph)
        return corrected_scores(self.scores, self.config.score_beta, self._score_steps)

    def _record(
        self, phase: str, loss: float, removed: int, macs: float | None = None
    ) -> StepRecord:
        rec = StepRecord(
            step=self._steps,
            phase=phase,
            budget=self.taper.budget,
            macs=self._macs if macs is None else macs,
            lam=self._lam,
            rate=self.taper.rate,
            paused=self.taper.paused,
            loss=loss,
            loss_ema=sched.loss_estimate(self.taper, self.config.schedule.loss_beta),
            removed=removed,
            live_units=self._live,
        )
        self.trace.append(rec)
        return rec

    def _take_snapshot(self, target: int, reached: float, keep: torch.Tensor) -> bool:
        """Take the snapshot at `target`; False where its measured latency is too high and
        the pruner aims lower instead."""
        measured = None
        small = None
        if self.keep_snapshot_models or self.meter is not None:
            small = remove_masked(self.model, self.graph, keep)
        if self.meter is not None:
            assert small is not None
            measured, goal, note = gate_snapshot(
                self.meter,
                small,
                self.graph.input_shape,
                target,
                reached,
                self.min_macs,
                self._retries,
                self._steps,
            )
            if note:
                self.notes.append(note)
            if goal is not None:  # too slow: one more step, aiming lower
                self._retries += 1
                self.goals[self._next] = goal
                return False
        snap = Snapshot(
            target=target,
            macs=int(round(reached)),
            step=self._steps,
            keep=keep.clone(),
            model=small if self.keep_snapshot_models else None,
            widths=self.widths(keep),
            measured=measured,
        )
        self.snapshots[target] = snap
        self._retries = 0
        if self.on_snapshot is not None:
            self.on_snapshot(snap)
        return True

    # ---------------------------------------------------------------- export
    def export(self, budget: float | int | str | None = None) -> nn.Module:
        """The physically pruned model: of the snapshot at `budget`, or of the masks now."""
        if budget is None:
            return remove_masked(self.model, self.graph, self.masks.keep)
        try:
            snap = self.snapshots[budget]
        except KeyError as exc:
            raise TaperpruneError(exc.args[0]) from None
        if snap.model is None:
            raise TaperpruneError(
                f"the snapshot at {budget} was restored from a saved state without its weights; "
                "load it from the run directory instead (taperprune.load)"
            )
        return snap.model

    def finalize(self) -> nn.Module:
        """Remove the masks from the model (its forward is its own again); returns the model."""
        self.masks.remove()
        return self.model

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue pruning: tensors and plain numbers only."""
        return {
            "keep": self.masks.keep.clone(),
            "scores": self.scores.clone(),
            "steps": self._steps,
            "score_steps": self._score_steps,
            "ref_sum": self._ref_sum,
            "ref_count": self._ref_count,
            "bad_steps": self._bad_steps,
            "next": self._next,
            "lam": self._lam,
            "taper": asdict(self.taper),
            "budgets": list(self.budgets),
            "goals": list(self.goals),
            "retries": self._retries,
            "snapshots": {
                str(t): {
                    "macs": s.macs,
                    "step": s.step,
                    "keep": s.keep.clone(),
                    **({"measured": s.measured} if s.measured is not None else {}),
                }
                for t, s in self.snapshots.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["budgets"]) != list(self.budgets):
            raise TaperpruneError(
                f"the saved pruner state has budgets {state['budgets']}, this pruner "
                f"{self.budgets}: resume with the same budgets"
            )
        keep = state["keep"]
        if keep.shape != (self.graph.num_units,):
            raise TaperpruneError(
                f"the saved pruner state has {keep.shape[0]} units, this model "
                f"{self.graph.num_units}: it was saved for another model"
            )
        self.masks.set_keep(keep)
        self._macs, self._d = self.cost.total_and_marginals(keep)
        self._live = int(keep.sum())
        self.scores = state["scores"].clone().to(torch.float64)
        self._steps = int(state["steps"])
        self._score_steps = int(state["score_steps"])
        self._ref_sum = float(state["ref_sum"])
        self._ref_count = int(state["ref_count"])
        self._bad_steps = int(state["bad_steps"])
        self._next = int(state["next"])
        self._lam = float(state["lam"])
        self.taper = sched.TaperState(**state["taper"])
        self.goals = [float(g) for g in state.get("goals", self.budgets)]
        self._retries = int(state.get("retries", 0))
        self.snapshots = SnapshotMap(self.full_macs)
        for t, s in state["snapshots"].items():
            k = s["keep"].bool()
            # The weights at snapshot time are not in the state: they live in the run directory.
            measured = int(s["measured"]) if "measured" in s else None
            self.snapshots[int(t)] = Snapshot(
                int(t), int(s["macs"]), int(s["step"]), k, None, self.widths(k), measured
            )
