"""The typed state of a run: what it has produced, and where a checkpoint says to go on.

A checkpoint (`checkpoint.py`) stores `RunState.to_tree()`; `RunState.from_tree` reads it
back, naming the first field that is missing or of the wrong type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TaperpruneError

PHASES = ("pretrain", "taper", "finetune")


@dataclass
class SnapshotResult:
    label: str
    target: int
    macs: int
    params: int
    step: int
    acc_at_snapshot: float
    acc_finetuned: float
    seconds: float


@dataclass
class RunResult:
    full_macs: int
    full_params: int
    base_acc: float
    snapshots: list[SnapshotResult]
    seconds: float
    out: Path


@dataclass
class BaseResult:
    """The unpruned model, measured once after pretraining."""

    full_macs: int
    full_params: int
    base_acc: float
    deploy: dict[str, Any]  # ONNX check and latency figures
    latency: list[dict[str, Any]]


@dataclass
class Resume:
    """Where a checkpoint says to continue. The phase it names restores from it once."""

    phase: str
    phase_step: int
    stream: dict[str, int]
    rng: dict[str, Any]
    finetune: dict[str, Any] = field(default_factory=dict)  # {"index": k[, "acc0": %]}
    model: dict[str, Any] | None = None  # weights (pretrain and taper phases)
    optimizer: dict[str, Any] | None = None  # present when saved inside a training loop
    scheduler: dict[str, Any] | None = None


@dataclass
class RunState:
    """Everything a run has produced so far; the checkpoint holds all of it."""

    phase: str = "pretrain"
    phase_step: int = 0  # steps done in the current phase
    global_step: int = 0  # optimizer steps of the whole run
    seconds: float = 0.0  # run time before the last resume
    base: BaseResult | None = None
    results: list[SnapshotResult] = field(default_factory=list)
    finetune: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] | None = None  # TaperPruner.state_dict()
    trace: list[dict[str, Any]] = field(default_factory=list)
    snapshot_weights: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_tree(self, live: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's tree: this state plus `live` (stream, rng, model, optimizer…)."""
        tree: dict[str, Any] = {
            "phase": self.phase,
            "phase_step": self.phase_step,
            "global_step": self.global_step,
            "base": None if self.base is None else asdict(self.base),
            "results": [asdict(r) for r in self.results],
            "seconds": self.seconds,
            "finetune": self.finetune,
        }
        if self.pruner is not None:
            tree |= {
                "pruner": self.pruner,
                "trace": self.trace,
                "snapshot_weights": self.snapshot_weights,
            }
        return tree | live

    @classmethod
    def from_tree(cls, tree: Any, where: object) -> tuple[RunState, Resume]:
        """A saved state and where to resume; a malformed checkpoint is named, not traced."""
        try:
            if not isinstance(tree, dict):
                raise TypeError("the state is not a mapping")
            phase = tree["phase"]
            if phase not in PHASES:
                raise ValueError(f"phase {phase!r} is not one of {PHASES}")
            base = tree.get("base")
            state = cls(
                phase=phase,
                phase_step=int(tree["phase_step"]),
                global_step=int(tree["global_step"]),
                seconds=float(tree.get("seconds", 0.0)),
                base=None if base is None else BaseResult(**base),
                results=[SnapshotResult(**r) for r in tree.get("results", [])],
                finetune=dict(tree.get("finetune") or {}),
                pruner=tree.get("pruner"),
                trace=list(tree.get("trace", [])),
                snapshot_weights=dict(tree.get("snapshot_weights", {})),
            )
            resume = Resume(
                phase=phase,
                phase_step=state.phase_step,
                stream=dict(tree["stream"]),
                rng=dict(tree["rng"]),
                finetune=state.finetune,
                model=tree.get("model"),
                optimizer=tree.get("optimizer"),
                scheduler=tree.get("scheduler"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"field {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            raise TaperpruneError(
                f"{where} is not a complete checkpoint ({detail}); it cannot be resumed: start "
                "the run again with --overwrite"
            ) from None
        return state, resume
