"""Reading a plan and its weights without trusting them: one pydantic schema for plan.json
(`PlanFile`), the ranges and cross-checks the schema cannot say, and the checks of a built
model and its weights against the plan. Every problem is one line naming file and field."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from torch import nn

from .errors import TaperpruneError
from .graph import COUNTED_TYPES, NORM_TYPES, ChannelGraph, _channels
from .models import BuilderArgumentError
from .plan_builder import short_repr

PLAN_SCHEMA = 1

MAX_INPUT_ELEMENTS = 2**24  # values in one example of input_shape (3x2048x2048 is 12.6 M)
MAX_MODEL_ELEMENTS = 2**30  # parameters + buffers of an unpruned model built from a plan
CORRUPTED = "the plan is corrupted; re-export the snapshot"
OTHER_MODEL = "it is a plan for another model; load it with the model it was made for"
BAD_WEIGHTS = "the weights are corrupted or altered; re-export the snapshot"
YOUR_MODEL = "build the model yourself and pass it: taperprune.load(path, model=...)"


class PlanError(TaperpruneError):
    """A plan or snapshot that cannot be loaded: `<file>: <field>: <what> (<what to do>)`."""


def brief(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 240 else text[:237] + "..."


def fail(where: Path, field: str, what: str, fix: str = CORRUPTED) -> PlanError:
    return PlanError(" ".join(f"{where}: {field}: {what} ({fix})".split()))


_NonNeg = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    # strict: no "1" → 1, 1.5 → 1 or True → 1; extra="forbid": no field a plan does not have
    model_config = ConfigDict(strict=True, extra="forbid")


class ModelSpec(_Strict):
    name: Annotated[str, Field(min_length=1)]
    kwargs: dict[str, JsonValue]  # checked against the builder by `models.plan_builder`


class LayerSpec(_Strict):
    kind: Literal["conv", "linear", "norm"]
    width: Annotated[list[_NonNeg], Field(min_length=2, max_length=2)]  # [in, out]
    in_: list[int] = Field(alias="in")  # kept indices; ranges checked in `check_plan`
    out: list[int]


class PlanFile(_Strict):
    """plan.json (or the plan in a .safetensors file's metadata): what `make_plan` writes."""

    schema_: Literal[1] = Field(alias="schema")
    model: ModelSpec
    input_shape: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1, max_length=4)]
    exclude: list[str] = []
    target_macs: _NonNeg | None
    macs: _NonNeg
    params: _NonNeg
    kept_units: list[int]  # ranges checked in `check_plan`
    num_units: Annotated[int, Field(ge=1)]
    layers: dict[str, LayerSpec]


def field_path(*loc: int | str) -> str:
    """("layers", "features.0", "width", 1) → "layers['features.0'].width[1]"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += (f".{part}" if out else part) if part.isidentifier() else f"[{part!r}]"
    return out or "plan"


def check_plan(plan: Any, where: Path) -> None:
    """PlanError naming the first field of `plan` that is not what `make_plan` writes."""
    if not isinstance(plan, dict):
        raise fail(where, "plan", f"is a JSON {type(plan).__name__}, not an object")
    if "schema" not in plan:
        raise fail(where, "schema", "is missing")
    schema = plan["schema"]
    if type(schema) is not int or schema != PLAN_SCHEMA:
        raise fail(
            where,
            "schema",
            f"{short_repr(schema)} is not the plan schema this taperprune reads ({PLAN_SCHEMA})",
            "re-export the snapshot with this taperprune, or load it with the one that wrote it",
        )
    try:
        PlanFile.model_validate(plan)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = re.sub(r" or instance of \w+", "", str(err["msg"])).replace("dictionary", "object")
        what = {"missing": "is missing", "extra_forbidden": "is not a field of a plan"}.get(
            err["type"], f"{short_repr(err.get('input'))} is invalid: {msg[:1].lower()}{msg[1:]}"
        )
        raise fail(where, field_path(*err["loc"]), what) from None
    shape = plan["input_shape"]
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        what = f"{'x'.join(map(str, shape))} is more than {MAX_INPUT_ELEMENTS:,} values"
        raise fail(where, "input_shape", what)
    if not plan["kept_units"]:
        raise fail(where, "kept_units", "is empty; a plan keeps a unit of every group")
    check_indices(where, "kept_units", plan["kept_units"], plan["num_units"], in_order=False)
    for name, layer in plan["layers"].items():
        for side, width in zip(("in", "out"), layer["width"], strict=True):
            check_indices(where, field_path("layers", name, side), layer[side], width)


def check_indices(where: Path, field: str, idx: list[int], n: int, in_order: bool = True) -> None:
    """Each index in [0, n) and none twice (and increasing, where `make_plan` sorts them)."""
    last = -1
    seen: set[int] = set()
    for i in idx:
        if not 0 <= i < n:
            raise fail(where, field, f"{short_repr(i)} is out of range [0, {n})")
        if i in seen or (in_order and i < last):
            raise fail(
                where, field, f"{i} " + ("appears twice" if i in seen else "is out of order")
            )
        seen.add(i)
        last = i


def check_json(
    field: tuple[str | int, ...], value: Any, *, non_negative: bool = False, limit: int = 0
) -> None:
    """BuilderArgumentError unless `value` (at `field`) is JSON: finite numbers, string keys,
    nested 16 deep at most; with no int below 0 (`non_negative`) or above `limit` (if set)
    in absolute value."""
    problem = None
    if len(field) > 16:
        problem = "nests deeper than 16 levels"
    elif isinstance(value, float) and not math.isfinite(value):
        problem = f"{value} is not a finite number"
    elif isinstance(value, int) and not isinstance(value, bool):
        if non_negative and value < 0:
            problem = f"{value} is negative; no built-in or torchvision model takes that"
        elif limit and abs(value) > limit:
            problem = f"{short_repr(value)} is larger than {limit:,}"
    elif isinstance(value, dict) and not all(isinstance(k, str) for k in value):
        problem = "has a key that is not a string"
    elif value is not None and not isinstance(value, bool | float | str | list | dict):
        problem = f"is a {type(value).__name__}; a plan holds JSON values only"
    if problem:
        raise BuilderArgumentError(field, problem)
    if isinstance(value, list | dict):
        for key, v in value.items() if isinstance(value, dict) else enumerate(value):
            check_json((*field, key), v, non_negative=non_negative, limit=limit)


def check_widths(plan: dict[str, Any], model: nn.Module, where: Path) -> None:
    """Name the first layer whose widths differ between the plan and the model."""
    types = COUNTED_TYPES + NORM_TYPES
    have = {name: _channels(m) for name, m in model.named_modules() if isinstance(m, types)}
    for name, entry in plan["layers"].items():
        if (width := have.get(name)) != tuple(entry["width"]):
            has = f"{width[0]} → {width[1]}" if width else "no such layer"
            what = (
                f"layer {name!r} has {entry['width'][0]} → {entry['width'][1]} channels in the "
                f"plan, the model has {has}"
            )
            raise fail(where, field_path("layers", name, "width"), what, OTHER_MODEL)
    for name in set(have) - set(plan["layers"]):
        raise fail(where, "layers", f"the model's layer {name!r} is not listed", OTHER_MODEL)


def check_graph(plan: dict[str, Any], graph: ChannelGraph, where: Path) -> torch.Tensor:
    """The keep mask of the plan, once it is known to fit `graph`."""
    if graph.num_units != plan["num_units"]:
        what = f"{plan['num_units']} prunable units in the plan, {graph.num_units} in the model"
        raise fail(where, "num_units", what, OTHER_MODEL)
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    keep[torch.tensor(plan["kept_units"], dtype=torch.long)] = True
    counts = torch.zeros(len(graph.groups), dtype=torch.long)
    for g in torch.nonzero(counts.index_add_(0, graph.unit_group, keep.long()) == 0).flatten():
        what = f"keeps no unit of the channel group of {graph.groups[int(g)].root!r}"
        raise fail(where, "kept_units", what)
    kept = graph.kept_indices(keep)
    for name, entry in plan["layers"].items():
        for side in ("in", "out"):
            if kept[name][side] != entry[side]:
                what = "differs from the channels that kept_units keeps"
                raise fail(where, field_path("layers", name, side), what)
    return keep


def check_weights(state: dict[str, torch.Tensor], model: nn.Module, weights: Path) -> None:
    """Name the first tensor that is missing, extra, of another dtype or shape, or not finite."""
    expected = model.state_dict()
    for name in [n for n in expected if n not in state] + [n for n in state if n not in expected]:
        what = "is missing" if name in expected else "is not one of the model's"
        raise PlanError(f"{weights}: tensor {name!r} {what} ({OTHER_MODEL})")
    for name, t in state.items():
        want = expected[name]
        if t.dtype != want.dtype:
            got_s, want_s = (str(d).removeprefix("torch.") for d in (t.dtype, want.dtype))
            what = f"is {got_s} where the model has {want_s}"
        elif t.shape != want.shape:
            what = f"has shape {list(t.shape)} where the plan gives {list(want.shape)}"
        elif (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            what = "holds NaN or inf"
        else:
            continue
        raise PlanError(f"{weights}: tensor {name!r} {what} ({BAD_WEIGHTS})")
