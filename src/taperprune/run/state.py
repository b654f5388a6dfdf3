"""The typed state of a run: what it has produced, and where a checkpoint says to go on.

A checkpoint (`checkpoint.py`) stores `RunState.to_tree()`; `RunState.from_tree` reads it
back against a schema (`Tree`), naming in one line the first field that is missing, of
the wrong type, or that the phase it was saved in needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from ..errors import TaperpruneError
from ..pruner import StepRecord
from ..schedule import TaperState
from .rundir import validate
from .schemas import Label

PHASES = ("pretrain", "taper", "finetune")
REDO = "it cannot be resumed: start the run again with --overwrite"


@dataclass
class SnapshotResult:
    label: str
    target: int  # the budget, in the run's unit (MACs, or params)
    macs: int
    params: int
    step: int
    acc_at_snapshot: float
    acc_finetuned: float
    seconds: float
    predicted_ns: int | None = None  # latency budgets: the snapshot's modelled latency
    measured_ns: int | None = None  # ... and its latency measured when it was taken


@dataclass
class RunResult:
    full_macs: int
    full_params: int
    base_acc: float
    snapshots: list[SnapshotResult]
    seconds: float
    out: Path
    unit: str = "MACs"  # what each snapshot's `target` counts: MACs, params or ns
    full_latency_ns: int = 0  # latency budgets: the unpruned model's modelled latency

    @property
    def full(self) -> int:
        """The unpruned model's count in the budgets' unit."""
        if self.unit == "ns":
            return self.full_latency_ns
        return self.full_params if self.unit == "params" else self.full_macs


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


# ---------------------------------------------------------------- the checkpoint's schema
def _tensor(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"a {type(value).__name__} where a tensor belongs")
    return value


def _array(value: Any) -> Any:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"a {type(value).__name__} where an array belongs")
    return value


Tensor = Annotated[Any, AfterValidator(_tensor)]
Array = Annotated[Any, AfterValidator(_array)]
Count = Annotated[int, Field(ge=0)]
Weights = dict[str, Tensor]
STRICT = ConfigDict(strict=True, extra="forbid")


class Node(BaseModel):
    model_config = STRICT


def _record(cls: type) -> type[BaseModel]:
    """The schema of a dataclass of plain fields (a trace row, the taper's state)."""
    fields: dict[str, Any] = {k: (t, ...) for k, t in get_type_hints(cls).items()}
    return create_model(cls.__name__, __config__=STRICT, **fields)


Step, Taper = _record(StepRecord), _record(TaperState)


class Base(Node):
    full_macs: Annotated[int, Field(ge=1)]
    full_params: Count
    base_acc: float
    deploy: dict[str, Any]
    latency: list[dict[str, Any]]


class Result(Node):
    label: Label
    target: Annotated[int, Field(ge=1)]
    macs: Annotated[int, Field(ge=1)]
    params: Count
    step: Count
    acc_at_snapshot: float
    acc_finetuned: float
    seconds: float
    predicted_ns: int | None = None  # latency budgets: the snapshot's modelled latency
    measured_ns: int | None = None  # ... and its latency measured when it was taken


class PrunerSnapshot(Node):
    macs: Count
    step: Count
    keep: Tensor
    measured: Count | None = None  # latency budgets: measured ns


class Pruner(Node):
    """What `TaperPruner.load_state_dict` reads."""

    keep: Tensor
    scores: Tensor
    steps: Count
    score_steps: Count
    ref_sum: float
    ref_count: Count
    bad_steps: Count
    next: Count
    lam: float
    taper: Taper  # type: ignore[valid-type]
    budgets: list[int]
    goals: list[float] | None = None  # latency budgets: what the solve aims at per budget
    retries: Count = 0
    snapshots: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], PrunerSnapshot]

    @model_validator(mode="after")
    def _masks(self) -> Pruner:
        for what, keep in [("keep", self.keep)] + [
            (f"snapshots.{t}.keep", s.keep) for t, s in self.snapshots.items()
        ]:
            if keep.dtype != torch.bool or keep.dim() != 1:
                raise ValueError(f"{what} is not a vector of booleans")
        if self.scores.shape != self.keep.shape:
            raise ValueError("scores and keep differ in shape")
        return self


class Stream(Node):
    epoch: Count
    index: Count


class Rng(Node):
    """What `checkpoint.set_rng_state` reads."""

    torch: Tensor
    numpy: tuple[str, Array, int, int, float]
    python: tuple[int, tuple[int, ...], float | None]
    cuda: list[Tensor] | None = None


class Finetune(Node):
    index: Count | None = None
    acc0: float | None = None


class Optimizer(Node):
    model_config = ConfigDict(strict=True, extra="allow")
    state: dict[Any, Any]
    param_groups: list[dict[str, Any]]


class Tree(Node):
    """A checkpoint's state (`RunState.to_tree`): what resuming reads."""

    model_config = ConfigDict(strict=True, extra="ignore")

    phase: Literal["pretrain", "taper", "finetune"]
    phase_step: Count
    global_step: Count
    seconds: Annotated[float, Field(ge=0)] = 0.0
    base: Base | None = None
    results: list[Result] = []
    finetune: Finetune = Finetune()
    pruner: Pruner | None = None
    trace: list[Step] = []  # type: ignore[valid-type]
    snapshot_weights: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], Weights] = {}
    stream: Stream
    rng: Rng
    model: Weights | None = None
    optimizer: Optimizer | None = None
    scheduler: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _phase_needs(self) -> Tree:
        needs = {"pretrain": ["model"], "taper": ["model", "base"], "finetune": ["base", "pruner"]}
        for name in needs[self.phase]:
            if getattr(self, name) is None:
                raise ValueError(f"{name} is missing, which the {self.phase} phase needs")
        return self


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
        validate(Tree, tree, where, REDO)
        try:
            phase = tree["phase"]
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
        except (KeyError, TypeError, ValueError) as exc:  # the schema lets nothing through
            detail = f"field {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            raise TaperpruneError(f"{where}: state: {detail} ({REDO})") from None
        return state, resume
