"""`TaperPruneCallback`: `TaperPruner` inside a PyTorch Lightning `Trainer.fit`.

    from taperprune.lightning import TaperPruneCallback

    prune = TaperPruneCallback([0.5, 0.25], torch.zeros(1, 3, 32, 32), steps=500)
    trainer = L.Trainer(max_steps=2000, callbacks=[prune])
    trainer.fit(lit_module, datamodule)
    small = prune.export(0.25)      # physically smaller nn.Module (snapshot at 25 %)

Works with `lightning` (`lightning.pytorch`) or, when that is not installed, with the older
`pytorch_lightning` package. Only this module imports Lightning; `import taperprune` does not.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import TaperpruneError
from .pruner import Snapshot, StepRecord, TaperPruner

if TYPE_CHECKING:
    from lightning.pytorch import Callback, LightningModule, Trainer
else:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError as exc:
            raise ImportError(
                "taperprune.lightning needs PyTorch Lightning: pip install lightning"
            ) from exc


class TaperPruneCallback(Callback):
    """Prunes the LightningModule (or its `submodule`) to each budget while `fit` trains it."""

    def __init__(
        self,
        budgets: Sequence[float | int | str] | str,
        example_input: torch.Tensor,
        *,
        submodule: str | None = None,
        stop_when_done: bool = False,
        log: bool = True,
        **pruner_kwargs: Any,
    ) -> None:
        """`submodule`: attribute path of the network to prune (e.g. "net" or "backbone.body");
        the LightningModule itself when None (its forward must take `example_input`).
        `stop_when_done`: end `fit` once the last budget's snapshot is taken.
        `log`: log `taperprune/macs` and `taperprune/budget` (fractions of the full MACs).
        Other keywords go to `TaperPruner` (steps, tolerance, schedule, exclude, config, …)."""
        super().__init__()
        self.budgets = budgets
        self.example_input = example_input
        self.submodule = submodule
        self.stop_when_done = stop_when_done
        self.log = log
        self.pruner_kwargs = pruner_kwargs
        self.pruner: TaperPruner | None = None
        self.last_record: StepRecord | None = None
        self._loss: torch.Tensor | None = None
        self._pending_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- results
    @property
    def snapshots(self) -> dict[int, Snapshot]:
        """The snapshots taken so far, by budget in MACs (empty before `fit`)."""
        return {} if self.pruner is None else self.pruner.snapshots

    def export(self, budget: float | int | str | None = None) -> nn.Module:
        """The physically pruned model: of the snapshot at `budget`, or of the masks now."""
        return self._require_pruner().export(budget)

    def target(self, pl_module: LightningModule) -> nn.Module:
        """The network this callback prunes inside `pl_module`."""
        if self.submodule is None:
            return pl_module
        try:
            module = operator.attrgetter(self.submodule)(pl_module)
        except AttributeError as exc:
            raise TaperpruneError(
                f"the LightningModule has no attribute {self.submodule!r} to prune"
            ) from exc
        if not isinstance(module, nn.Module):
            raise TaperpruneError(f"{self.submodule!r} is a {type(module).__name__}, not a module")
        return module

    def _require_pruner(self) -> TaperPruner:
        if self.pruner is None:
            raise TaperpruneError("the pruner is built when fit starts: call trainer.fit first")
        return self.pruner

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build the pruner once the strategy has moved the model to its device."""
        # Not in `setup`: the masks are created beside the weights, so the model must already
        # be on its device. A second `fit` with this callback continues with the same pruner.
        model = self.target(pl_module)
        if self.pruner is not None and self.pruner.model is model:
            return
        param = next(model.parameters(), None)
        example = self.example_input
        if param is not None:
            example = example.to(param.device)
        self.pruner = TaperPruner(model, example, self.budgets, **self.pruner_kwargs)
        if self._pending_state is not None:
            self.pruner.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor
    ) -> None:
        """Add up the loss of every backward pass that feeds the next optimizer step."""
        # Lightning passes the loss already divided by accumulate_grad_batches (and, under
        # fp16 AMP, multiplied by the loss scale), so the sum matches the mask gradient.
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """One pruner step per optimizer step, with the mask gradients of all its backwards."""
        # Why this hook: it runs once per optimizer step, after the last backward of a
        # gradient-accumulation window, so the mask gradient holds ∂L/∂m of the whole
        # accumulated batch. on_after_backward and on_train_batch_end run once per
        # micro-batch: with accumulate_grad_batches > 1 they would step the pruner on a
        # fraction of the batch and change the masks in the middle of an accumulated step.
        pruner = self._require_pruner()
        loss, self._loss = self._loss, None
        if pruner.masks.grad is None and (loss is None or not pl_module.automatic_optimization):
            # A skipped step (training_step returned None), or with manual optimization another
            # optimizer's step whose backward did not run through this network.
            return
        if loss is None:
            raise TaperpruneError(
                "no loss reached backward before this optimizer step; with manual optimization "
                "call self.manual_backward(loss), not loss.backward()"
            )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            # fp16 AMP: Lightning unscales the optimizer's gradients before this hook, but the
            # masks are not in the optimizer; the scores must not see the loss scale.
            scale = float(scaler.get_scale())
            pruner.masks.scale_grad(1.0 / scale)
            loss = loss / scale
        grad = pruner.masks.grad
        if trainer.world_size > 1 and grad is not None:
            # DDP does not average the masks' gradients (they are no parameters): every process
            # must see the same scores and loss, so that all of them remove the same channels.
            grad.copy_(trainer.strategy.reduce(grad.clone(), reduce_op="mean"))
            loss = trainer.strategy.reduce(loss, reduce_op="mean")
        self.last_record = rec = pruner.step(loss)
        if self.log and math.isfinite(rec.macs):
            full = float(pruner.full_macs)
            pl_module.log("taperprune/macs", rec.macs / full, on_step=True, on_epoch=False)
            pl_module.log("taperprune/budget", rec.budget / full, on_step=True, on_epoch=False)
        if self.stop_when_done and pruner.done:
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Warn when training ended before the last budget was reached."""
        pruner = self.pruner
        if pruner is not None and not pruner.done:
            warnings.warn(
                f"training ended before the last budget ({pruner.budgets[-1]:,} MACs) was "
                f"reached: the masked model has {pruner.macs:,.0f} MACs and "
                f"{len(pruner.snapshots)} of {len(pruner.budgets)} snapshots were taken; "
                "train longer (max_steps) or pass a smaller `steps`",
                stacklevel=2,
            )

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The pruning state (masks, scores, taper) saved in Lightning checkpoints."""
        return {} if self.pruner is None else self.pruner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pruning state now, or when the pruner is built at fit start."""
        # Lightning restores callbacks before on_fit_start for most strategies, after it for
        # some (e.g. FSDP): apply the state whichever comes first.
        if not state_dict:
            return
        if self.pruner is None:
            self._pending_state = state_dict
        else:
            self.pruner.load_state_dict(state_dict)


__all__ = ["TaperPruneCallback"]
