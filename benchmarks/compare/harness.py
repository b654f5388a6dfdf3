"""The comparison harness behind `python -m benchmarks.compare`.

Every method starts from the same pretrained weights (one pretraining per net and seed),
targets the same MAC budgets and gets the same optimizer steps, and each (view, net,
method, seed, budget) becomes one row of `results.csv` (the views are in `views.py`).
Baselines train through the pipeline's own `FitLoop` and get the same fine-tune protocol
(`finetune_structure`) as taperprune's snapshots.

A run whose rows are already in `results.csv` is skipped, so an interrupted bench resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from taperprune.calibrate import recalibrate_bn
from taperprune.cost import build_cost_model, count_macs, count_params, macs_and_marginals
from taperprune.distill import frozen_teacher
from taperprune.errors import BudgetError, TaperpruneError
from taperprune.files import load_weights, save_weights, write_json
from taperprune.graph import build_graph
from taperprune.latency import torch_latency
from taperprune.models import build_model
from taperprune.plan import load
from taperprune.run.data import BatchStream, DataBundle, load_data
from taperprune.run.distributed import resolve_device
from taperprune.run.loop import (
    FitLoop,
    cosine,
    evaluate,
    finetune_structure,
    make_optimizer,
    seed_everything,
)
from taperprune.run.pipeline import run_prune
from taperprune.run.pretrained import resolve_weights
from taperprune.run.progress import progress

from .baselines import BASELINES
from .config import DISTILL_WEIGHT, TAPERPRUNE, VIEWS, BenchConfig, baseline_of
from .results import (
    net_dir,
    parse_net,
    read_rows,
    run_dir,
    write_rows,
)
from .tp_driven import build_structure
from .views import VIEW_RUNS, count_runs


def _legacy(run_id: str) -> bool:
    """A Torch-Pruning run id without the max_ratio tag: the older harness's."""
    return "/max_ratio=" not in run_id


@dataclass
class Net:
    spec: str
    name: str
    kwargs: dict[str, Any]
    weights: Path
    base_acc: float
    full_macs: int
    one_channel: int  # the largest MAC cost of one unit at full width


class Bench:
    """One bench: data, pretrained nets, and the runs of every view."""

    def __init__(self, cfg: BenchConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.out = Path(cfg.out)
        self.csv = self.out / "results.csv"
        self.rows = read_rows(self.csv)
        legacy = sorted(
            {r["method"] for r in self.rows if r["method"] in BASELINES and _legacy(r["run_id"])}
        )
        if legacy:  # their cells would silently pool with the new rows of the same name
            raise TaperpruneError(
                f"{self.csv} holds {', '.join(legacy)} rows of the harness before "
                "docs/BASELINES.md (400 ratio increments, no max_pruning_ratio); bench into "
                "a new --out (--weights can reuse the pretrained weights)"
            )
        self.done_ids = {r["run_id"] for r in self.rows}
        self.unreachable: list[str] = []  # baseline runs that could not reach their budget
        self.device = resolve_device(cfg.train.device)
        t = cfg.train
        self.loop = FitLoop(self.device, t.amp, t.max_bad_steps)  # the pipeline's loop
        self.data: DataBundle = load_data(
            cfg.data,
            batch_size=t.batch_size,
            seed=0,
            workers=t.workers,
            image_size=t.image_size,
            train_limit=t.train_limit,
            test_limit=t.test_limit,
        )
        self.example = torch.zeros((1, *self.data.input_shape))
        self.per_epoch = len(self.stream(0))  # batches per epoch, the same for every seed
        self.finetune_steps = int(t.finetune_epochs * self.per_epoch)  # per snapshot
        self.trained = 0  # optimizer steps taken by `train` (a baseline run checks its total)
        self.teacher: nn.Module | None = None  # set while a distilled baseline trains
        self.distill_loop = dataclasses.replace(self.loop, distill=DISTILL_WEIGHT)

    # -------------------------------------------------------------- helpers
    def stream(self, seed: int) -> BatchStream:
        assert self.data.train_set is not None
        return BatchStream(self.data.train_set, self.cfg.train.batch_size, seed)

    def train(
        self,
        model: nn.Module,
        stream: BatchStream,
        steps: int,
        lr: float,
        *,
        use_cosine: bool = True,
        after_backward: Callable[[nn.Module], None] | None = None,
        weight_decay: float | None = None,
    ) -> None:
        """`steps` steps of the run's optimizer through the pipeline's own loop
        (`weight_decay` replaces the run's own, e.g. 0 under a sparsity regulariser)."""
        if steps <= 0:
            return
        cfg = self.cfg.train
        if weight_decay is not None:
            cfg = cfg.updated(weight_decay=weight_decay)
        opt = make_optimizer(cfg, model, lr)
        sched = cosine(opt, steps) if use_cosine else None
        loop = self.loop if self.teacher is None else self.distill_loop
        loop.fit(
            model,
            stream,
            opt,
            steps,
            sched=sched,
            after_backward=after_backward,
            teacher=self.teacher,
        )
        self.trained += steps

    def epochs(self, steps: int) -> float:
        """An epoch count that `int(epochs × len(stream))` turns back into `steps`."""
        return (steps + 0.5) / self.per_epoch

    def _add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.done_ids.update(r["run_id"] for r in rows)
        write_rows(self.csv, self.rows)

    def _latency(self, model: nn.Module) -> float:
        lat = torch_latency(
            model.cpu(),
            tuple(self.data.input_shape),
            self.cfg.latency_batch,
            runs=self.cfg.latency_runs,
        )
        return lat.median_ms

    def _row(
        self,
        net: Net,
        view: str,
        method: str,
        seed: int,
        budget: float,
        model: nn.Module,
        **values: Any,
    ) -> dict[str, Any]:
        target = int(budget * net.full_macs)
        macs = count_macs(model.cpu(), self.example)
        return {
            "view": view,
            "net": net.spec,
            "method": method,
            "seed": seed,
            "budget": budget,
            "target_macs": target,
            "macs": macs,
            "budget_error_macs": macs - target,
            "budget_error_pct": 100.0 * (macs - target) / target,
            "one_channel_macs": net.one_channel,
            "full_macs": net.full_macs,
            "params": count_params(model),
            "base_acc": net.base_acc,
            "latency_ms": self._latency(model),
            "step_budget": 0,  # the steps view's nominal budget; 0 elsewhere
            **values,
        }

    # -------------------------------------------------------------- pretraining
    def pretrained(self, spec: str, seed: int) -> Net:
        """The net's pretrained weights for `seed` (trained once, then read from disk)."""
        name, kwargs = parse_net(spec)
        kwargs = {
            "num_classes": self.data.num_classes,
            "in_channels": self.data.input_shape[0],
            **kwargs,
        }
        directory = self.out / "pretrained" / net_dir(spec) / f"seed{seed}"
        weights = directory / "model.safetensors"
        seed_everything(seed)
        model = build_model(name, **kwargs).to(self.device)
        if weights.exists():
            model.load_state_dict(load_weights(weights))
        elif self.cfg.train.weights:  # the user's starting point (file or torchvision name)
            given = resolve_weights(self.cfg.train.weights, name)
            try:
                model.load_state_dict(load_weights(given))
            except RuntimeError as exc:
                raise TaperpruneError(f"weights {given} do not fit net {spec}: {exc}") from exc
            save_weights(weights, model)
        else:
            stream = self.stream(seed)
            steps = int(self.cfg.train.pretrain_epochs * len(stream))
            self.console.print(f"pretraining {spec} (seed {seed}) for {steps} steps")
            self.train(model, stream, steps, self.cfg.train.lr)
            save_weights(weights, model)
        base_acc = evaluate(model, self.data.test, self.device)
        write_json(directory / "base.json", {"base_acc": base_acc})
        model = model.cpu().eval()
        cm = build_cost_model(build_graph(model, self.example))
        _, marginals = macs_and_marginals(cm, torch.ones(cm.num_units, dtype=torch.bool))
        return Net(
            spec,
            name,
            kwargs,
            weights,
            base_acc,
            count_macs(model, self.example),
            int(math.ceil(float(marginals.max()))),
        )

    # -------------------------------------------------------------- taperprune
    def run_taperprune(
        self,
        net: Net,
        view: str,
        method: str,
        seed: int,
        budgets: Sequence[float],
        step_budget: int = 0,
        **overrides: Any,
    ) -> list[dict[str, Any]]:
        """One taperprune run over `budgets`; one row per budget (steps: up to that snapshot)."""
        run_id = f"{view}/{net.spec}/{method}/seed{seed}" + "".join(
            f"/{k}={v}" for k, v in sorted(overrides.items())
        )
        if run_id in self.done_ids:
            return [r for r in self.rows if r["run_id"] == run_id]
        out = run_dir(self.out, run_id)
        cfg = self.cfg.train.updated(
            model=net.name,
            model_kwargs={
                k: v for k, v in net.kwargs.items() if k not in ("num_classes", "in_channels")
            },
            data=self.cfg.data,
            budgets=tuple(str(b) for b in budgets),
            out=str(out),
            seed=seed,
            weights=str(net.weights),
            onnx=False,
            latency_batches=(),
            report=False,
            checkpoint_every=0,
            **TAPERPRUNE[method],
            **overrides,
        )
        quiet = Console(quiet=True)
        result = run_prune(cfg, console=quiet, overwrite=True)
        ft_steps = int(cfg.finetune_epochs * self.per_epoch)  # the steps view changes it
        rows = []
        for budget, snap in zip(budgets, result.snapshots, strict=True):
            # The net's own builder (a --nets file is the user's explicit choice to run it).
            small = load(out / "snapshots" / snap.label, model=build_model(net.name, **net.kwargs))
            rows.append(
                self._row(
                    net,
                    view,
                    method,
                    seed,
                    budget,
                    small,
                    steps=snap.step + ft_steps,
                    acc_before_finetune=snap.acc_at_snapshot,
                    acc=snap.acc_finetuned,
                    run_seconds=result.seconds,
                    run_id=run_id,
                    step_budget=step_budget,
                )
            )
        self._add(rows)
        return rows

    # -------------------------------------------------------------- baselines
    def run_baseline(
        self,
        net: Net,
        view: str,
        method: str,
        seed: int,
        budget: float,
        steps: int,
        pre_steps: int,
        step_budget: int = 0,
    ) -> dict[str, Any] | None:
        """Prune a copy of the pretrained net to `budget` and fine-tune: `steps` in all.

        `pre_steps` (≤ steps) of them come before the final structure: sparse training for
        network slimming and DepGraph, training between the pruning steps of a progressive
        schedule; the other methods prune at step 0 and fine-tune all `steps`. Every run
        takes exactly `steps` optimizer steps (checked; the row records the count).
        """
        max_ratio = self.cfg.max_ratio(net.spec)
        base, distilled = baseline_of(method)
        tag = f"/max_ratio={max_ratio:g}" if base in BASELINES else ""
        run_id = f"{view}/{net.spec}/{method}/seed{seed}{tag}/budget={budget}/steps={steps}"
        if run_id in self.done_ids:
            return next(r for r in self.rows if r["run_id"] == run_id)
        t0 = time.perf_counter()
        t = self.cfg.train
        seed_everything(seed)
        stream = self.stream(seed)
        model = build_model(net.name, **net.kwargs)
        model.load_state_dict(load_weights(net.weights))
        model.to(self.device)
        target = int(budget * net.full_macs)
        self.trained = 0
        self.teacher = frozen_teacher(model) if distilled else None
        try:
            model = build_structure(
                base,
                model,
                self.example.to(self.device),
                target,
                stream.batches,
                min(pre_steps, steps),
                max_ratio,
                self.device,
                lambda m, n, **kw: self.train(m, stream, n, t.prune_lr, use_cosine=False, **kw),
            )
            n = t.bn_recalibration_batches
            acc0, acc1 = finetune_structure(
                model,
                steps - self.trained,
                recalibrate=lambda m: recalibrate_bn(m, stream.batches(n), self.device, n),
                evaluate=lambda m: evaluate(m, self.data.test, self.device),
                fit=lambda m, s: self.train(m, stream, s, t.finetune_lr),
            )
        except BudgetError as exc:  # e.g. uniform width cannot thin a tiny net that far
            self.console.print(f"[yellow]skipped[/yellow] {run_id}: {exc}")
            self.unreachable.append(run_id)
            return None
        finally:
            self.teacher = None
        if self.trained != steps:
            raise TaperpruneError(
                f"{run_id} took {self.trained} optimizer steps, not {steps}: a harness bug"
            )
        row = self._row(
            net,
            view,
            method,
            seed,
            budget,
            model,
            steps=self.trained,
            acc_before_finetune=acc0,
            acc=acc1,
            run_seconds=time.perf_counter() - t0,
            run_id=run_id,
            step_budget=step_budget,
        )
        self._add([row])
        return row

    def run(self) -> list[dict[str, Any]]:
        """Every view for every net and seed; returns all rows (also in results.csv)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with progress(self.console, "bench", count_runs(self.cfg)) as prog:

            def tick() -> None:
                prog.update(prog.done + 1)

            for spec in self.cfg.nets:
                for seed in self.cfg.seeds:
                    prog.update(prog.done, f"{spec} seed {seed}")
                    net = self.pretrained(spec, seed)
                    for view in VIEWS:
                        if view in self.cfg.views:
                            VIEW_RUNS[view](self, net, seed, tick)
        return self.rows
