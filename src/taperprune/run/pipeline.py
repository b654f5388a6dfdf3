"""The whole `taperprune prune` run as resumable phases: pretrain → base → taper → fine-tunes.

Every `checkpoint_every` optimizer steps, at each phase boundary, on SIGINT/SIGTERM and
before stopping on non-finite losses, the run writes `OUT/checkpoint/` (model, optimizer,
LR schedule, pruner state, trace, snapshots so far, RNG states, data position).
`resume_run(OUT)` continues from it and ends where an uninterrupted run ends.
Under `torchrun` every process runs this; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from torch import nn

from ..budget import NS, amount, format_macs
from ..cost import count_macs, count_params
from ..distill import frozen_teacher
from ..errors import TaperpruneError
from ..files import load_weights, write_atomic
from ..models import build_model
from ..pruner import Snapshot
from . import distributed as ddp
from .checkpoint import has_checkpoint, load_checkpoint
from .config import RunConfig, config_from_mapping, dump_config
from .finish import save_snapshot, write_base, write_summary
from .lock import run_lock
from .loop import FitLoop, evaluate, finetune_structure, make_optimizer
from .prepare import prepare
from .progress import progress
from .rundir import budget_label, check_out_dir, is_run, read_config, write_trace
from .signals import deferred_signals
from .state import RunResult, RunState, SnapshotResult
from .taper import check_ranks_agree, make_pruner
from .trainer import Trainer, restoring


class Run(Trainer):
    """One run's phases: pretrain → base → taper → fine-tune each snapshot → files."""

    # ------------------------------------------------------------ phases
    def execute(self) -> RunResult:
        cfg = self.cfg
        self.prep = prepare(cfg, self.procs)
        self.loop = FitLoop(
            self.prep.device,
            cfg.amp,
            cfg.max_bad_steps,
            self.procs,
            on_step=self._after_step,
            distill=cfg.distill,
            temperature=cfg.distill_temperature,
        )
        if self.procs.main and not self.resumed:
            write_atomic(self.out / "config.yaml", dump_config(cfg))
        with deferred_signals(self._on_signal):
            self._pretrain()
            self._base()
            self.teacher = self._make_teacher()
            self._taper()
            self._finetunes()
        return self._finish()

    def _on_signal(self, signum: int) -> None:
        self.signal = signum
        self.console.print(
            f"\n[yellow]{signal.Signals(signum).name}:[/yellow] finishing this step, "
            "then saving a checkpoint (press Ctrl-C again to stop at once)"
        )

    def _pretrain(self) -> None:
        if self.resume is not None and self.resume.phase != "pretrain":
            return
        self.state.phase = "pretrain"
        resume = self._resuming("pretrain")
        if resume is not None:
            assert resume.model is not None
            with restoring(self.out, "the model weights"):
                self.prep.model.load_state_dict(resume.model)
            self._restore_position(resume)
        steps = 0 if self.cfg.weights else int(self.cfg.pretrain_epochs * len(self.prep.stream))
        self._fit("pretrain", self.prep.model, steps, self.cfg.lr)
        self.state.phase_step = 0

    def _base(self) -> None:
        if self.state.base is not None:
            return
        prep = self.prep
        self.state.base = write_base(
            self.cfg,
            prep,
            evaluate(prep.model, prep.data.test, prep.device),
            self.console,
            write=self.procs.main,
        )
        self.state.phase, self.state.phase_step = "taper", 0
        self.checkpoint()

    def _make_teacher(self) -> nn.Module | None:
        """The unpruned model, frozen, when the run distils: as written to base/ (a resumed
        run reads it back from there)."""
        if self.cfg.distill == 0:
            return None
        model = build_model(self.cfg.model, **self.prep.kwargs)
        with restoring(self.out, "the unpruned model (base/model.safetensors)"):
            model.load_state_dict(load_weights(self.out / "base" / "model.safetensors"))
        return frozen_teacher(model.to(self.prep.device))

    @property
    def taper_steps(self) -> int:
        """Steps within which the taper reaches the last budget."""
        return max(1, int(self.cfg.taper_epochs * len(self.prep.stream)))

    def _taper(self) -> None:
        cfg, prep = self.cfg, self.prep
        resume = self._resuming("taper")
        if resume is not None and resume.model is not None:
            with restoring(self.out, "the model weights"):
                prep.model.load_state_dict(resume.model)
        saved = self.state if self.state.pruner is not None else None
        with restoring(self.out, "the pruner state"):
            self.pruner = pruner = make_pruner(cfg, prep, self.taper_steps, saved)
        if self.resume is not None and self.resume.phase != "taper":
            return
        self.state.phase = "taper"
        self.opt = make_optimizer(cfg, prep.model, cfg.prune_lr)
        start = 0
        if resume is not None:
            self._restore_position(resume)
            if resume.optimizer is not None:
                start = self._restore_loop(resume)
            else:
                self.resume = None
        # The taper stops one step at each requested budget to snapshot it exactly, and a
        # skipped (non-finite) step moves neither the scores nor the budget: each one adds
        # a step to the deadline. At most max_bad_steps − 1 skipped steps come in a row.
        max_steps = cfg.method.warmup_steps + self.taper_steps + len(cfg.budgets) + 1
        skipped = sum(r.phase == "skipped" for r in pruner.trace)
        # A checkpoint of the taper's last step is restored with the pruner already done.
        remaining = 0 if pruner.done else max_steps * cfg.max_bad_steps
        full, per_epoch = pruner.full_macs, len(prep.stream)
        warmup = cfg.method.warmup_steps
        phase = "prune: warm-up" if start < warmup else "prune: taper"
        with progress(self.console, phase, max_steps + skipped, start) as prog:
            for i, rec in self.loop.steps(
                "prune",
                prep.model,
                prep.stream,
                self.opt,
                remaining,
                start=start,
                pruner=pruner,
                teacher=self.teacher,
            ):
                skipped += rec is not None and rec.phase == "skipped"
                if pruner.done or i + 1 >= max_steps + skipped:
                    prog.finish(i + 1)
                    break
                if rec is not None and rec.phase != "skipped":
                    sub = "warm-up" if rec.phase == "warmup" else "taper"
                    prog.retitle(f"prune: {sub}", i + 1)
                if rec is not None and i % 10 == 0:
                    prog.update(
                        i + 1,
                        f"epoch {(i + 1) / per_epoch:.2f}  "
                        f"budget {100 * rec.budget / full:5.1f}%  "
                        f"{pruner.unit} {100 * rec.macs / full:5.1f}%  λ {rec.lam:.2e}  "
                        f"rate {rec.rate:.4f}{' paused' if rec.paused else ''}  "
                        f"loss {rec.loss:.3f}",
                        total=max_steps + skipped,
                    )
        if not pruner.done:
            raise TaperpruneError(
                "the taper did not reach the last budget; this is a bug: please report it"
            )
        for note in pruner.notes:  # latency snapshots that measured too slow at first
            self.console.print(f"[yellow]note:[/yellow] {note}")
        self.opt = None
        self.ranks = check_ranks_agree(self.procs, pruner)
        if self.procs.main:
            write_trace(self.out / "trace.csv", pruner.trace)
        self.state.phase, self.state.phase_step, self.state.finetune = "finetune", 0, {"index": 0}
        self.checkpoint()

    def _finetunes(self) -> None:
        assert self.pruner is not None
        snaps = sorted(self.pruner.snapshots.values(), key=lambda s: -s.target)
        for k, snap in enumerate(snaps):
            if k < len(self.state.results):
                continue  # finished before the interruption
            self._finish_snapshot(k, snap)

    def _finish_snapshot(self, k: int, snap: Snapshot) -> None:
        """Recalibrate BN, evaluate, fine-tune at fixed structure, evaluate again, save."""
        cfg, prep, state = self.cfg, self.prep, self.state
        assert state.base is not None and snap.model is not None
        small = snap.model
        params = cfg.budget_unit == "params"
        latency = cfg.budget_unit == "ns"
        assert self.pruner is not None
        label = budget_label(snap.target, self.pruner.full_macs)  # in the budgets' unit
        state.phase = "finetune"
        t0 = time.perf_counter()
        resume = self._resuming("finetune")
        if resume is not None and resume.finetune.get("index") != k:
            resume = None
        if resume is not None:
            self._restore_position(resume)
            if k > 0 or "acc0" in resume.finetune:  # saved inside the fine-tunes
                self._warn_old_stream(resume)
        acc0: float | None = None
        if resume is not None and "acc0" in resume.finetune:
            state.finetune = dict(resume.finetune)  # `_fit` restores the optimizer
            acc0 = state.finetune["acc0"]
        else:
            self.resume = None
            state.finetune = {"index": k}
            self._start_snapshot(k)

        def remember(acc: float) -> None:
            state.finetune["acc0"] = acc

        acc0, acc1 = finetune_structure(
            small,
            int(cfg.finetune_epochs * len(prep.stream)),
            recalibrate=self._recalibrate,
            evaluate=lambda m: evaluate(m, prep.data.test, prep.device),
            fit=lambda m, steps: self._fit(f"fine-tune {label}", m, steps, cfg.finetune_lr),
            acc0=acc0,
            on_acc0=remember,
        )
        res = SnapshotResult(
            label,
            snap.target,
            count_macs(small, prep.example) if params or latency else snap.macs,
            count_params(small),
            snap.step,
            acc0,
            acc1,
            time.perf_counter() - t0,
            snap.macs if latency else None,
            snap.measured if latency else None,
        )
        self.console.print(
            f"snapshot {label}: {format_macs(res.macs)} MACs"
            + (f", {res.params:,} params" if params else "")
            + (
                f", latency {amount(snap.macs, NS)} modelled, {amount(snap.measured or 0, NS)} "
                f"measured (budget {amount(snap.target, NS)})"
                if latency
                else ""
            )
            + f", top-1 {acc0:.2f}% at the "
            f"snapshot, {acc1:.2f}% after fine-tuning"
        )
        if self.procs.main:
            assert self.pruner is not None
            save_snapshot(
                self.cfg, prep, self.pruner.graph, state.base, res, snap, small, self.console
            )
        state.results.append(res)
        state.finetune = {"index": k + 1}
        state.phase_step = 0
        self.checkpoint()

    def _finish(self) -> RunResult:
        assert self.state.base is not None and self.pruner is not None
        seconds = self.state.seconds + time.perf_counter() - self.t0
        ddp.barrier(self.procs)
        result = write_summary(
            self.cfg, self.state, self.pruner, seconds, self.procs, self.ranks, self.console
        )
        return result


def run_prune(
    cfg: RunConfig, *, console: Console | None = None, overwrite: bool = False
) -> RunResult:
    """The whole pipeline: data, model, (pretrain), taper with snapshots, fine-tune, files."""
    procs = ddp.from_environment("cuda" if cfg.device.startswith("cuda") else "cpu")
    with _claimed(Path(cfg.out), procs, fresh=True, overwrite=overwrite):
        ddp.barrier(procs)
        return _execute(Run(cfg, console or Console(), procs), procs)


@contextlib.contextmanager
def _claimed(out: Path, procs: ddp.Procs, *, fresh: bool, overwrite: bool) -> Iterator[None]:
    """The main process holds OUT's lock for the whole run (one writer per directory); a
    fresh run checks OUT under the lock, and if it fails before writing anything it leaves
    no empty directory behind."""
    if not procs.main:
        yield
        return
    created = False
    try:
        if fresh:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TaperpruneError(
            f"cannot use {out} as the run directory: {exc.strerror or exc}; choose another --out"
        ) from None
    try:
        with run_lock(out):
            if fresh:
                check_out_dir(out, overwrite)
            yield
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _execute(run: Run, procs: ddp.Procs) -> RunResult:
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
    settings = read_config(out / "config.yaml")  # checked as `taperprune report` checks it
    cfg = config_from_mapping({**settings, "out": str(out)}, source=out / "config.yaml")
    procs = ddp.from_environment("cuda" if cfg.device.startswith("cuda") else "cpu")
    with _claimed(out, procs, fresh=False, overwrite=False):
        saved = RunState.from_tree(load_checkpoint(out / "checkpoint"), out / "checkpoint")
        return _execute(Run(cfg, console or Console(), procs, saved), procs)
