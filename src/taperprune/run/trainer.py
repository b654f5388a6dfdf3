"""The training machinery of a run: typed state, checkpoints, the per-step hook and fits
that resume mid-way. The phases that use it are in `pipeline.py`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..calibrate import recalibrate_bn
from ..errors import RunInterrupted, TaperpruneError
from ..pruner import TaperPruner
from . import distributed as ddp
from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .config import RunConfig
from .loop import FitLoop, cosine, make_optimizer, seed_everything
from .prepare import Prepared
from .progress import progress
from .state import Resume, RunState


@contextlib.contextmanager
def restoring(out: Path, what: str) -> Iterator[None]:
    """Restoring `what` from OUT's checkpoint: a tensor of the wrong shape, a missing key or
    the like is one line naming the checkpoint, not a traceback from torch."""
    try:
        yield
    except TaperpruneError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else type(exc).__name__
        raise TaperpruneError(
            f"{out / 'checkpoint'}: {what} does not fit this run ({first}); the checkpoint is "
            "damaged or from another run: start again with --overwrite"
        ) from None


# Snapshot k reads epochs from SNAPSHOT_EPOCHS · (k + 1) on: beyond any taper, and more
# than any one fine-tune reads.
SNAPSHOT_EPOCHS = 1 << 20


class Trainer:
    """A run's training machinery: its typed state, checkpoints, the step hook (counts,
    interrupts, bad steps) and resumable fits. `Run` adds the phases."""

    def __init__(
        self,
        cfg: RunConfig,
        console: Console,
        procs: ddp.Procs,
        saved: tuple[RunState, Resume] | None = None,
    ) -> None:
        self.cfg, self.procs, self.out = cfg, procs, Path(cfg.out)
        self.console = console if procs.main else Console(quiet=True)
        self.state = saved[0] if saved is not None else RunState()
        self.resume: Resume | None = saved[1] if saved is not None else None
        self.resumed = saved is not None
        self.opt: torch.optim.Optimizer | None = None
        self.teacher: nn.Module | None = None  # the unpruned model, where the run distils
        self.sched: torch.optim.lr_scheduler.LRScheduler | None = None
        self.pruner: TaperPruner | None = None
        self.signal: int | None = None
        self.ranks: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.prep: Prepared  # set by `execute`
        self.loop: FitLoop

    # ------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        if not self.procs.main:
            return
        state = self.state
        live: dict[str, Any] = {"stream": self.prep.stream.state_dict(), "rng": rng_state()}
        live["seconds"] = state.seconds + time.perf_counter() - self.t0
        if state.phase in ("pretrain", "taper"):
            live["model"] = self.prep.model.state_dict()
        if self.opt is not None:
            live["optimizer"] = self.opt.state_dict()
        if self.sched is not None:
            live["scheduler"] = self.sched.state_dict()
        if self.pruner is not None:
            done = {r.target for r in state.results}
            state.pruner = self.pruner.state_dict()
            state.trace = [asdict(r) for r in self.pruner.trace]
            state.snapshot_weights = {
                str(t): s.model.state_dict()
                for t, s in self.pruner.snapshots.items()
                if t not in done and s.model is not None
            }
        tree = state.to_tree(live)
        save_checkpoint(self.out / "checkpoint", tree, state.global_step, state.phase)

    def _resuming(self, phase: str) -> Resume | None:
        """The checkpoint's resume point when it is inside `phase` and not yet restored."""
        return self.resume if self.resume is not None and self.resume.phase == phase else None

    def _restore_position(self, resume: Resume) -> None:
        """Continue the random streams where the checkpoint left them."""
        with restoring(self.out, "the random state and data position"):
            set_rng_state(resume.rng)
            self.prep.stream.load_state_dict(resume.stream)

    def _start_snapshot(self, k: int) -> None:
        """Snapshot k's recalibration and fine-tune read their own stretch of the batch
        stream and their own random seed (keyed by k, its place among the budgets): its
        result does not depend on how long the taper ran after it."""
        self.prep.stream.load_state_dict({"epoch": SNAPSHOT_EPOCHS * (k + 1), "index": 0})
        seed_everything(self.cfg.seed * 1_000_003 + k + 1)

    def _warn_old_stream(self, resume: Resume) -> None:
        """A checkpoint saved inside the fine-tunes by a version before each snapshot read
        its own stretch of the stream: what it fine-tuned so far used the taper's stream,
        so the run matches an uninterrupted run of neither version. Say so."""
        if int(resume.stream.get("epoch", 0)) < SNAPSHOT_EPOCHS:
            self.console.print(
                f"[yellow]warning[/yellow]: {self.out / 'checkpoint'} was saved during the "
                "fine-tunes by a taperprune from before each snapshot read its own data; what "
                "it fine-tuned so far used the old data order, so this run's results differ "
                "from an uninterrupted one (start again with --overwrite for an exact run)"
            )

    def _restore_loop(self, resume: Resume) -> int:
        """The optimizer (and LR schedule) as saved; later phases start fresh."""
        assert self.opt is not None and resume.optimizer is not None
        with restoring(self.out, "the optimizer state"):
            self.opt.load_state_dict(resume.optimizer)
            if self.sched is not None and resume.scheduler is not None:
                self.sched.load_state_dict(resume.scheduler)
        self.resume = None
        return resume.phase_step

    # ------------------------------------------------------------ training steps
    def _after_step(self, label: str, i: int, stop: TaperpruneError | None) -> None:
        self.state.phase_step = i + 1
        self.state.global_step += 1
        if stop is not None:
            self.checkpoint()
            raise TaperpruneError(
                f"{label}: {stop}. Nothing non-finite reached the weights or the scores; a "
                f"checkpoint is saved. Lower the learning rate in {self.out / 'config.yaml'} "
                f"(or check the data), then continue with: taperprune prune --resume {self.out}"
            )
        if ddp.any_flag(self.procs, self.signal is not None):
            self.checkpoint()
            raise RunInterrupted(
                f"interrupted during {label} at step {i + 1}; a checkpoint is saved in "
                f"{self.out / 'checkpoint'}. Continue with: "
                f"taperprune prune --resume {self.out}"
            )
        if self.cfg.checkpoint_every and self.state.global_step % self.cfg.checkpoint_every == 0:
            self.checkpoint()

    def _fit(self, label: str, model: nn.Module, steps: int, lr: float) -> None:
        """Plain training with a cosine LR for `steps` (resumed mid-way if saved so)."""
        if steps <= 0:
            return
        self.opt = opt = make_optimizer(self.cfg, model, lr)
        self.sched = cosine(opt, steps)
        resume = self._resuming(self.state.phase)
        start = self._restore_loop(resume) if resume is not None else 0
        with progress(self.console, label, steps, start) as prog:
            teacher = None if self.state.phase == "pretrain" else self.teacher
            for i, _ in self.loop.steps(
                label,
                model,
                self.prep.stream,
                opt,
                steps,
                start=start,
                sched=self.sched,
                teacher=teacher,
            ):
                if i % 10 == 0 or i == steps - 1:
                    prog.update(i + 1, f"lr {opt.param_groups[0]['lr']:.4f}")
        self.opt = self.sched = None

    def _recalibrate(self, model: nn.Module) -> None:
        n = self.cfg.bn_recalibration_batches
        recalibrate_bn(model, self.prep.stream.batches(n), self.prep.device, n)
        ddp.broadcast_buffers(self.procs, model)
