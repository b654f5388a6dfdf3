"""The taper phase's pieces: the pruner a run uses (restored from a checkpoint when there
is one), and the check that every DDP process holds the same pruning state."""

from __future__ import annotations

import torch

from ..errors import TaperpruneError
from ..pruner import StepRecord, TaperPruner
from ..surgery import remove_masked
from . import distributed as ddp
from .config import RunConfig
from .prepare import Prepared
from .state import RunState


def make_pruner(
    cfg: RunConfig, prep: Prepared, taper_steps: int, saved: RunState | None
) -> TaperPruner:
    """The run's TaperPruner on the prepared model and graph; `saved` restores its state,
    its trace and the weights of the snapshots not yet fine-tuned."""
    pruner = TaperPruner(
        prep.model,
        prep.example,
        list(cfg.budgets),
        config=cfg.pruner_config(taper_steps),
        exclude=cfg.exclude,
        check=False,  # `prepare` ran check_budgets (and the surgery check) already
        graph=prep.graph,
    )
    if saved is None or saved.pruner is None:
        return pruner
    pruner.load_state_dict(saved.pruner)
    pruner.trace = [StepRecord(**r) for r in saved.trace]
    for target, snap in pruner.snapshots.items():
        if str(target) in saved.snapshot_weights:
            small = remove_masked(prep.model, pruner.graph, snap.keep)
            small.load_state_dict(saved.snapshot_weights[str(target)])
            snap.model = small
    return pruner


def check_ranks_agree(procs: ddp.Procs, pruner: TaperPruner) -> dict[str, float]:
    """Every process must hold the same masks, scores and λ (they decide the model)."""
    if not procs.active:
        return {}
    spread = {
        "masks": ddp.spread(procs, pruner.keep.double()),
        "scores": ddp.spread(procs, pruner.scores),
        "lam": ddp.spread(procs, torch.tensor([pruner.lam])),
    }
    if any(v != 0.0 for v in spread.values()):
        raise TaperpruneError(
            f"the {procs.world} processes disagree on the pruning state "
            f"(max differences {spread}); this is a bug: please report it"
        )
    return spread
