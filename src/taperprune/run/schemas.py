"""The schemas of the files a run writes (summary.json, metrics.json, the plan fields a
run reader uses, trace.csv rows): the fields the code reads, typed, JSON types only."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from ..pruner import StepRecord

LABEL = re.compile(r"[0-9]+(\.[0-9]+)?(e[-+][0-9]{2,})?pct")  # what `budget_label` writes


def _label(value: str) -> str:
    if not LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a snapshot label like 25pct or 12.5pct")
    return value


Label = Annotated[str, AfterValidator(_label)]
Count = Annotated[int, Field(ge=0, lt=2**63)]
Macs = Annotated[int, Field(ge=1, lt=2**63)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100)]  # top-1 accuracy
SpeedKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+/b[0-9]{1,9}$")]


class Schema(BaseModel):
    """A file's schema: the fields the code reads, typed (JSON types, no coercion); other
    fields are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")


# Where a run's files hold each budget unit's counts: the unpruned model's in summary.json,
# a snapshot's (what the budget is compared with) in its metrics.json.
FULL_KEY = {"MACs": "full_macs", "params": "full_params", "ns": "full_latency_ns"}
REACHED_KEY = {"MACs": "macs", "params": "params", "ns": "predicted_ns"}


class SummarySnapshot(Schema):
    label: Label
    target: Macs | None = None
    macs: Macs | None = None


class Summary(Schema):
    """summary.json."""

    full_macs: Macs
    full_params: Count
    unit: Literal["MACs", "params", "ns"] = "MACs"  # what each snapshot's target counts
    base_acc: Percent
    seconds: Seconds
    trace_rows: Count | None = None
    snapshots: list[SummarySnapshot]

    @model_validator(mode="after")
    def _unique(self) -> Summary:
        labels = [s.label for s in self.snapshots]
        if len(set(labels)) != len(labels):
            raise ValueError(f"snapshots: labels {labels} repeat")
        return self


class OnnxCheck(Schema):
    passed: bool
    max_abs_diff: float


class Metrics(Schema):
    """metrics.json of a snapshot: what the report, `find_snapshot` and `export` read."""

    target: Macs
    macs: Macs
    params: Count
    step: Count
    acc_at_snapshot: Percent
    acc_finetuned: Percent
    onnx_check: OnnxCheck | None = None
    speedup: dict[SpeedKey, float] = {}
    aligned_widths: Annotated[float, Field(ge=0, le=1)] | None = None
    export_checks: dict[str, Any] = {}


class PlanLayer(Schema):
    kind: str = ""
    width: Annotated[list[Count], Field(min_length=2, max_length=2)]
    out: list[Count]


class PlanFields(Schema):
    """The fields of plan.json that reading a run uses (`plan.read_plan` checks the rest)."""

    input_shape: list[Annotated[int, Field(ge=1, lt=2**31)]]
    layers: dict[str, PlanLayer]


TRACE_COLUMNS = [f.name for f in fields(StepRecord)]
_CELLS: dict[str, Any] = {c: (str if c == "phase" else float, ...) for c in TRACE_COLUMNS}
# A row of trace.csv: the columns of `StepRecord`, numbers except the phase.
TraceRow = create_model("TraceRow", __config__=ConfigDict(extra="forbid"), **_CELLS)
