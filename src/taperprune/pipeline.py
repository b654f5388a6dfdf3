"""The whole `taperprune prune` run as resumable phases: pretrain → base → taper → fine-tunes.

Every `checkpoint_every` optimizer steps, at each phase boundary, on SIGINT/SIGTERM and
before stopping on non-finite losses, the run writes `OUT/checkpoint/` (model, optimizer,
LR schedule, pruner state, trace, snapshots so far, RNG states, data position).
`resume_run(OUT)` continues from it and ends where an uninterrupted run ends.
Under `torchrun` every process runs this; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from torch import nn

from . import distributed as ddp
from .budget import format_macs
from .checkpoint import has_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .cost import count_macs
from .data import BatchStream, load_data
from .errors import TaperpruneError
from .export import (
    count_params,
    load_weights,
    make_plan,
    save_snapshot,
    save_weights,
    write_atomic,
    write_json,
)
from .formats import export_onnx
from .graph import build_graph
from .latency import Latency, onnx_latency, speedups, torch_latency
from .masks import remove_masked
from .models import build_model, canonical_name
from .pretrained import resolve_weights
from .pruner import PrunerConfig, Snapshot, StepRecord, TaperPruner, check_budgets
from .rundir import budget_label, check_out_dir, is_run, read_yaml
from .schedule import ScheduleConfig
from .train import (
    RunConfig,
    RunResult,
    SnapshotResult,
    autocast,
    config_from_mapping,
    evaluate,
    make_optimizer,
    progress,
    recalibrate_bn,
    resolve_device,
    seed_everything,
)


class RunInterrupted(TaperpruneError):
    """SIGINT/SIGTERM: the run checkpointed and stopped; it can be resumed."""


def _write_trace(path: Path, trace: list[StepRecord]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(StepRecord.__dataclass_fields__))
    writer.writeheader()
    for rec in trace:
        writer.writerow(asdict(rec))
    write_atomic(path, buf.getvalue())


def _latency_text(measured: list[Latency]) -> str:
    return "".join(f"; {m.runtime} b{m.batch}: {m.median_ms:.2f} ms" for m in measured)


def _deploy(
    model: nn.Module,
    directory: Path,
    input_shape: tuple[int, ...],
    cfg: RunConfig,
    console: Console,
) -> tuple[dict[str, Any], list[Latency]]:
    """model.onnx (checked against PyTorch) and the CPU latency of one model."""
    cpu = copy.deepcopy(model).cpu().float().eval()
    info: dict[str, Any] = {}
    onnx_path = directory / "model.onnx"
    if cfg.onnx:
        check = export_onnx(cpu, input_shape, onnx_path)
        assert check is not None
        info["onnx_check"] = check.as_dict()
        if not check.passed:
            console.print(f"[yellow]warning:[/yellow] {directory.name}: {check.describe()}")
    measured = []
    for batch in cfg.latency_batches:
        if "torch" in cfg.latency_runtimes:
            measured.append(torch_latency(cpu, input_shape, batch, runs=cfg.latency_runs))
        if "onnxruntime" in cfg.latency_runtimes and cfg.onnx:
            measured.append(onnx_latency(onnx_path, input_shape, batch, runs=cfg.latency_runs))
    info["latency"] = [m.as_dict() for m in measured]
    return info, measured


def _grads_finite(model: nn.Module) -> bool:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


class _Run:
    """One run's live state; `checkpoint()` writes all of it, `__init__(state=…)` reads it."""

    def __init__(
        self, cfg: RunConfig, console: Console, procs: ddp.Procs, state: dict[str, Any] | None
    ) -> None:
        self.cfg, self.procs, self.saved = cfg, procs, state or {}
        self.console = console if procs.main else Console(quiet=True)
        self.out = Path(cfg.out)
        self.phase: str = self.saved.get("phase", "pretrain")
        self.phase_step = 0
        self.global_step: int = self.saved.get("global_step", 0)
        self.opt: torch.optim.Optimizer | None = None
        self.sched: torch.optim.lr_scheduler.LRScheduler | None = None
        self.pruner: TaperPruner | None = None
        self.base: dict[str, Any] | None = self.saved.get("base")
        self.results = [SnapshotResult(**r) for r in self.saved.get("results", [])]
        self.finetune: dict[str, Any] = {}
        self.signal: int | None = None
        self.ranks: dict[str, float] = {}  # pruning-state spread over processes (DDP)
        self.elapsed0: float = self.saved.get("seconds", 0.0)
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        if not self.procs.main:
            return
        state: dict[str, Any] = {
            "phase": self.phase,
            "phase_step": self.phase_step,
            "global_step": self.global_step,
            "stream": self.stream.state_dict(),
            "rng": rng_state(),
            "base": self.base,
            "results": [asdict(r) for r in self.results],
            "seconds": self.elapsed0 + time.perf_counter() - self.t0,
            "finetune": self.finetune,
        }
        if self.phase in ("pretrain", "taper"):
            state["model"] = self.model.state_dict()
        if self.opt is not None:
            state["optimizer"] = self.opt.state_dict()
        if self.sched is not None:
            state["scheduler"] = self.sched.state_dict()
        if self.pruner is not None:
            done = {r.target for r in self.results}
            state["pruner"] = self.pruner.state_dict()
            state["trace"] = [asdict(r) for r in self.pruner.trace]
            state["snapshot_weights"] = {
                str(t): s.model.state_dict()
                for t, s in self.pruner.snapshots.items()
                if t not in done and s.model is not None
            }
        save_checkpoint(self.out / "checkpoint", state, self.global_step, self.phase)

    def _resuming(self, phase: str) -> bool:
        """True when the saved state is inside `phase` and not yet restored."""
        return self.saved.get("phase") == phase

    def _restore_position(self) -> None:
        """Continue the random streams where the checkpoint left them."""
        set_rng_state(self.saved["rng"])
        self.stream.load_state_dict(self.saved["stream"])

    def _restore_loop(self, opt: torch.optim.Optimizer, sched: Any) -> int:
        opt.load_state_dict(self.saved["optimizer"])
        if sched is not None and "scheduler" in self.saved:
            sched.load_state_dict(self.saved["scheduler"])
        start = int(self.saved["phase_step"])
        self.saved = {"phase": None}  # restored: later phases start fresh
        return start

    # ------------------------------------------------------------ training steps
    def _steps(
        self,
        label: str,
        model: nn.Module,
        total: int,
        start: int,
        pruner: TaperPruner | None = None,
    ) -> Iterator[tuple[int, StepRecord | None]]:
        """Train `model` from step `start` to `total`; yields after each step."""
        cfg, device = self.cfg, self.device
        assert self.opt is not None
        net = ddp.wrap(self.procs, model, device)
        scaler = torch.amp.GradScaler(enabled=cfg.amp == "fp16" and device.type == "cuda")
        loss_f = nn.CrossEntropyLoss()
        bad = 0
        model.train()
        for i, (x, y) in enumerate(self.stream.batches(total - start), start=start):
            with autocast(cfg, device):
                loss = loss_f(net(x.to(device)), y.to(device))
            self.opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            loss_v = ddp.mean(self.procs, loss.detach().float().reshape(1).clone())
            finite = bool(torch.isfinite(loss_v).all()) and (
                scaler.is_enabled() or _grads_finite(model)
            )
            if finite:
                scaler.step(self.opt)
                scaler.update()
            if self.sched is not None:
                self.sched.step()
            rec, too_many_bad = None, None
            if pruner is not None:
                if pruner.masks.grad is not None:  # identical scores on every rank
                    ddp.mean(self.procs, pruner.masks.grad)
                if scaler.is_enabled():  # the scores must not see the loss scale
                    pruner.masks.scale_grad(1.0 / scaler.get_scale())
                try:  # the pruner counts its own bad steps
                    rec = pruner.step(loss_v if finite else torch.tensor(math.nan))
                except TaperpruneError as exc:
                    too_many_bad = exc
            else:
                bad = 0 if finite else bad + 1
                if bad >= cfg.max_bad_steps:
                    too_many_bad = TaperpruneError(
                        f"{bad} consecutive steps had a non-finite loss or gradient"
                    )
            self.phase_step = i + 1
            self.global_step += 1
            if too_many_bad is not None:
                self._stop_on_bad(label, too_many_bad)
            if ddp.any_flag(self.procs, self.signal is not None):
                self.checkpoint()
                raise RunInterrupted(
                    f"interrupted during {label} at step {i + 1}; a checkpoint is saved in "
                    f"{self.out / 'checkpoint'}. Continue with: "
                    f"taperprune prune --resume {self.out}"
                )
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                self.checkpoint()
            yield i, rec

    def _stop_on_bad(self, label: str, exc: TaperpruneError) -> None:
        self.checkpoint()
        raise TaperpruneError(
            f"{label}: {exc}. Nothing non-finite reached the weights or the scores; a checkpoint "
            f"is saved. Lower the learning rate in {self.out / 'config.yaml'} (or check the "
            f"data), then continue with: taperprune prune --resume {self.out}"
        )

    def _fit(self, label: str, model: nn.Module, steps: int, lr: float) -> None:
        """Plain training with a cosine LR for `steps` (resumed mid-way if saved so)."""
        if steps <= 0:
            return
        self.opt = make_optimizer(self.cfg, model, lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=steps)
        start = self._restore_loop(self.opt, self.sched) if self._resuming(self.phase) else 0
        with progress(self.console) as prog:
            task = prog.add_task(label, total=steps, completed=start, info="")
            for i, _ in self._steps(label, model, steps, start):
                if i % 10 == 0 or i == steps - 1:
                    prog.update(task, completed=i + 1)
        self.opt = self.sched = None

    # ------------------------------------------------------------ phases
    def execute(self) -> RunResult:
        cfg, procs = self.cfg, self.procs
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device, procs)
        data = load_data(
            cfg.data,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            workers=cfg.workers,
            image_size=cfg.image_size,
            train_limit=cfg.train_limit,
            test_limit=cfg.test_limit,
            pin_memory=self.device.type == "cuda",
        )
        assert data.train_set is not None
        self.stream = BatchStream(
            data.train_set,
            cfg.batch_size,
            cfg.seed,
            rank=procs.rank,
            world=procs.world,
            workers=cfg.workers,
            pin_memory=data.pin_memory,
        )
        if len(self.stream) == 0:
            raise TaperpruneError(
                f"data set {cfg.data} has fewer examples than one batch ({cfg.batch_size})"
            )
        self.data = data
        self.kwargs = {
            "num_classes": data.num_classes,
            "in_channels": data.input_shape[0],
            **cfg.model_kwargs,
        }
        model = build_model(cfg.model, **self.kwargs)
        if cfg.weights:
            state = load_weights(resolve_weights(cfg.weights, cfg.model))
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise TaperpruneError(
                    f"weights {cfg.weights} do not fit model {cfg.model}: {exc}"
                ) from exc
        model.to(self.device)
        self.model = model
        self.example = torch.zeros((1, *data.input_shape), device=self.device)
        check_budgets(model, self.example, list(cfg.budgets), exclude=cfg.exclude)
        if procs.main and not self.saved:
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
            write_atomic(self.out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

        with self._signals():
            self._pretrain()
            self._base()
            self._taper()
            self._finetunes()
        return self._finish()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM only set a flag: the step finishes, checkpoints, then the run stops."""

        def handle(signum: int, _frame: object) -> None:
            self.signal = signum
            self.console.print(
                f"\n[yellow]{signal.Signals(signum).name}:[/yellow] finishing this step, "
                "then saving a checkpoint (press Ctrl-C again to stop at once)"
            )
            signal.signal(signum, old.get(signum, signal.SIG_DFL))

        old: dict[int, Any] = {}
        for signum in (signal.SIGINT.value, signal.SIGTERM.value):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                old[signum] = signal.signal(signum, handle)
        try:
            yield
        finally:
            for signum, previous in old.items():
                signal.signal(signum, previous)

    def _pretrain(self) -> None:
        if self.saved.get("phase") not in (None, "pretrain"):
            return
        self.phase = "pretrain"
        if self._resuming("pretrain"):
            self.model.load_state_dict(self.saved["model"])
            self._restore_position()
        steps = 0 if self.cfg.weights else int(self.cfg.pretrain_epochs * len(self.stream))
        self._fit("pretrain", self.model, steps, self.cfg.lr)
        self.phase_step = 0

    def _base(self) -> None:
        if self.base is not None:
            return
        cfg, model = self.cfg, self.model
        base_acc = evaluate(model, self.data.test, self.device)
        full_macs = count_macs(model, self.example)
        full_params = count_params(model)
        graph = build_graph(model, self.example, exclude=cfg.exclude)
        deploy: dict[str, Any] = {}
        latency: list[Latency] = []
        if self.procs.main:
            plan = make_plan(
                graph,
                torch.ones(graph.num_units, dtype=torch.bool),
                model_name=canonical_name(cfg.model),
                model_kwargs=self.kwargs,
                macs=full_macs,
                params=full_params,
                exclude=cfg.exclude,
            )
            save_weights(self.out / "base" / "model.safetensors", model)
            write_json(self.out / "base" / "plan.json", plan)
            deploy, latency = _deploy(
                model, self.out / "base", tuple(self.data.input_shape), cfg, self.console
            )
        self.base = {
            "full_macs": full_macs,
            "full_params": full_params,
            "base_acc": base_acc,
            "deploy": deploy,
            "latency": [m.as_dict() for m in latency],
        }
        self.console.print(
            f"unpruned: {format_macs(full_macs)} MACs, {full_params:,} params, "
            f"top-1 {base_acc:.2f}%" + _latency_text(latency)
        )
        self.phase, self.phase_step = "taper", 0
        self.checkpoint()

    @property
    def taper_steps(self) -> int:
        """Steps within which the taper reaches the last budget."""
        return max(1, int(self.cfg.taper_epochs * len(self.stream)))

    def _make_pruner(self) -> TaperPruner:
        cfg = self.cfg
        pcfg = PrunerConfig(
            schedule=ScheduleConfig(
                kind=cfg.schedule,  # type: ignore[arg-type]
                steps=self.taper_steps,
                tolerance=cfg.tolerance,
            ),
            warmup_steps=cfg.warmup_steps,
            score=cfg.score,
            price=cfg.price,
            price_power=cfg.price_power,
            max_bad_steps=cfg.max_bad_steps,
        )
        pruner = TaperPruner(
            self.model,
            self.example,
            list(cfg.budgets),
            config=pcfg,
            exclude=cfg.exclude,
            check=False,  # `execute` ran check_budgets (and the surgery check) already
        )
        if self.saved.get("phase") == "taper":
            self.model.load_state_dict(self.saved["model"])
        if "pruner" in self.saved:
            pruner.load_state_dict(self.saved["pruner"])
            pruner.trace = [StepRecord(**r) for r in self.saved["trace"]]
            weights = self.saved.get("snapshot_weights", {})
            for target, snap in pruner.snapshots.items():
                if str(target) in weights:
                    small = remove_masked(self.model, pruner.graph, snap.keep)
                    small.load_state_dict(weights[str(target)])
                    snap.model = small
        return pruner

    def _taper(self) -> None:
        cfg = self.cfg
        self.pruner = pruner = self._make_pruner()
        if self.saved.get("phase") not in (None, "taper"):
            return
        self.phase = "taper"
        self.opt = make_optimizer(cfg, self.model, cfg.prune_lr)
        start = 0
        if self._resuming("taper"):
            self._restore_position()
            if "optimizer" in self.saved:
                start = self._restore_loop(self.opt, None)
            else:
                self.saved = {"phase": None}
        full = pruner.full_macs
        # The taper stops one step at each requested budget to snapshot it exactly.
        max_steps = cfg.warmup_steps + self.taper_steps + len(cfg.budgets) + 1
        # A checkpoint of the taper's last step is restored with the pruner already done.
        remaining = 0 if pruner.done else max_steps
        with progress(self.console) as prog:
            task = prog.add_task("prune", total=max_steps, completed=start, info="")
            for i, rec in self._steps("prune", self.model, remaining, start, pruner=pruner):
                if rec is not None and (i % 10 == 0 or pruner.done):
                    prog.update(
                        task,
                        completed=i + 1,
                        info=f"epoch {(i + 1) / len(self.stream):.2f}  "
                        f"budget {100 * rec.budget / full:5.1f}%  "
                        f"MACs {100 * rec.macs / full:5.1f}%  λ {rec.lam:.2e}  "
                        f"rate {rec.rate:.4f}{' paused' if rec.paused else ''}  "
                        f"loss {rec.loss:.3f}",
                    )
                if pruner.done:
                    break
        if not pruner.done:
            raise TaperpruneError(
                "the taper did not reach the last budget; this is a bug: please report it"
            )
        self.opt = None
        self._check_ranks_agree(pruner)
        if self.procs.main:
            _write_trace(self.out / "trace.csv", pruner.trace)
        self.phase, self.phase_step, self.finetune = "finetune", 0, {"index": 0}
        self.checkpoint()

    def _check_ranks_agree(self, pruner: TaperPruner) -> None:
        """Every process must hold the same masks, scores and λ (they decide the model)."""
        if not self.procs.active:
            return
        self.ranks = {
            "masks": ddp.spread(self.procs, pruner.keep.double()),
            "scores": ddp.spread(self.procs, pruner.scores),
            "lam": ddp.spread(self.procs, torch.tensor([pruner.lam])),
        }
        if any(v != 0.0 for v in self.ranks.values()):
            raise TaperpruneError(
                f"the {self.procs.world} processes disagree on the pruning state "
                f"(max differences {self.ranks}); this is a bug: please report it"
            )

    def _finetunes(self) -> None:
        assert self.pruner is not None and self.base is not None
        snaps = sorted(self.pruner.snapshots.values(), key=lambda s: -s.target)
        for k, snap in enumerate(snaps):
            if k < len(self.results):
                continue  # finished before the interruption
            self._finish_snapshot(k, snap)

    def _recalibrate(self, model: nn.Module) -> None:
        n = self.cfg.bn_recalibration_batches
        recalibrate_bn(model, self.stream.batches(n), self.device, n)
        ddp.broadcast_buffers(self.procs, model)

    def _finish_snapshot(self, k: int, snap: Snapshot) -> None:
        """Recalibrate BN, evaluate, fine-tune at fixed structure, evaluate again, save."""
        cfg = self.cfg
        assert self.base is not None and self.pruner is not None
        small = snap.model
        assert small is not None
        full_macs = self.base["full_macs"]
        label = budget_label(snap.target, full_macs)
        self.phase = "finetune"
        t0 = time.perf_counter()
        resumed = self.saved.get("phase") == "finetune" and self.saved["finetune"].get("index") == k
        if resumed:
            self._restore_position()
        if resumed and "acc0" in self.saved["finetune"]:
            self.finetune = dict(self.saved["finetune"])  # `_fit` restores the optimizer
        else:
            self.saved = {"phase": None}
            self.finetune = {"index": k}
            self._recalibrate(small)
            self.finetune["acc0"] = evaluate(small, self.data.test, self.device)
        acc0 = self.finetune["acc0"]
        steps = int(cfg.finetune_epochs * len(self.stream))
        self._fit(f"fine-tune {label}", small, steps, cfg.finetune_lr)
        if steps > 0:
            # A short fine-tune moves the weights faster than the running statistics follow.
            self._recalibrate(small)
        acc1 = evaluate(small, self.data.test, self.device) if steps > 0 else acc0
        res = SnapshotResult(
            label,
            snap.target,
            snap.macs,
            count_params(small),
            snap.step,
            acc0,
            acc1,
            time.perf_counter() - t0,
        )
        self.console.print(
            f"snapshot {label}: {format_macs(snap.macs)} MACs, top-1 {acc0:.2f}% at the "
            f"snapshot, {acc1:.2f}% after fine-tuning"
        )
        if self.procs.main:
            self._save_snapshot(res, snap, small)
        self.results.append(res)
        self.finetune = {"index": k + 1}
        self.phase_step = 0
        self.checkpoint()

    def _save_snapshot(self, res: SnapshotResult, snap: Snapshot, small: nn.Module) -> None:
        cfg = self.cfg
        assert self.base is not None and self.pruner is not None
        full_macs = self.base["full_macs"]
        plan = make_plan(
            self.pruner.graph,
            snap.keep,
            model_name=canonical_name(cfg.model),
            model_kwargs=self.kwargs,
            macs=snap.macs,
            params=res.params,
            target=snap.target,
            exclude=cfg.exclude,
        )
        directory = self.out / "snapshots" / res.label
        deploy, latency = _deploy(small, directory, tuple(self.data.input_shape), cfg, self.console)
        base_latency = [Latency(**m) for m in self.base["latency"]]
        metrics = (
            asdict(res)
            | {
                "macs_fraction": snap.macs / full_macs,
                "mac_reduction": full_macs / snap.macs,
                "budget_error_macs": snap.macs - snap.target,
                "full_macs": full_macs,
                "full_params": self.base["full_params"],
                "base_acc": self.base["base_acc"],
                "speedup": speedups(base_latency, latency),
            }
            | deploy
        )
        save_snapshot(directory, small, plan, metrics)
        if latency:
            self.console.print(
                f"  {full_macs / snap.macs:.2f}× fewer MACs" + _latency_text(latency)
            )

    def _finish(self) -> RunResult:
        assert self.base is not None and self.pruner is not None
        seconds = self.elapsed0 + time.perf_counter() - self.t0
        result = RunResult(
            self.base["full_macs"],
            self.base["full_params"],
            self.base["base_acc"],
            self.results,
            seconds,
            self.out,
        )
        ddp.barrier(self.procs)
        if not self.procs.main:
            return result
        write_json(
            self.out / "summary.json",
            {
                "full_macs": result.full_macs,
                "full_params": result.full_params,
                "base_acc": result.base_acc,
                "seconds": seconds,
                "trace_rows": len(self.pruner.trace),
                "optimizer_steps": self.global_step,
                "processes": self.procs.world,
                "ranks_agree": self.ranks,
                "base": self.base["deploy"],
                "snapshots": [asdict(r) for r in self.results],
            },
        )
        shutil.rmtree(self.out / "checkpoint", ignore_errors=True)  # finished: nothing to resume
        if self.cfg.report:
            try:
                from .report import write_report

                self.console.print(f"report: {write_report([self.out])}")
            except Exception as exc:  # the run's files are safe; the report can be redone
                self.console.print(
                    f"[yellow]warning:[/yellow] the report could not be written ({exc}); "
                    f"run `taperprune report {self.out}` to retry"
                )
        return result


def run_prune(
    cfg: RunConfig, *, console: Console | None = None, overwrite: bool = False
) -> RunResult:
    """The whole pipeline: data, model, (pretrain), taper with snapshots, fine-tune, files."""
    procs = ddp.from_environment("cuda" if cfg.device.startswith("cuda") else "cpu")
    if procs.main:
        check_out_dir(Path(cfg.out), overwrite)
    ddp.barrier(procs)
    return _execute(_Run(cfg, console or Console(), procs, None), procs)


def _execute(run: _Run, procs: ddp.Procs) -> RunResult:
    ok = False
    try:
        result = run.execute()
        ok = True
        return result
    finally:
        ddp.finish(procs, ok)


def resume_run(out: str | Path, *, console: Console | None = None) -> RunResult:
    """Continue an interrupted run from OUT/checkpoint with the settings in OUT/config.yaml."""
    out = Path(out)
    if not is_run(out):
        raise TaperpruneError(
            f"{out} is not a taperprune run directory (no config.yaml); nothing to resume"
        )
    if (out / "summary.json").is_file():
        raise TaperpruneError(f"the run in {out} has finished; there is nothing to resume")
    if not has_checkpoint(out / "checkpoint"):
        raise TaperpruneError(
            f"{out} has no checkpoint to resume from (it stopped before its first one); "
            f"start it again with --overwrite"
        )
    settings = read_yaml(out / "config.yaml")
    if not isinstance(settings, dict):
        raise TaperpruneError(f"{out / 'config.yaml'} is not a mapping of settings")
    cfg = config_from_mapping({**settings, "out": str(out)}, source=out / "config.yaml")
    procs = ddp.from_environment("cuda" if cfg.device.startswith("cuda") else "cpu")
    state = load_checkpoint(out / "checkpoint")
    return _execute(_Run(cfg, console or Console(), procs, state), procs)
