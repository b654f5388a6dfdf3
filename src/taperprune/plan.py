"""The channel plan of a pruned model (JSON), saving it with its weights, and `load`.

Nothing is pickled and no code is taken from a snapshot: a snapshot is rebuilt from the
built-in or torchvision builder named in its plan (or from the caller's own model), the
kept units (the plan), and the weights. Every field of the plan (`PlanFile`, one schema)
and every tensor is checked before it is used, and a problem is named on one line.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from safetensors import safe_open
from torch import nn

from .errors import ModelError, TaperpruneError
from .files import load_weights, read_json, save_weights, write_json
from .graph import COUNTED_TYPES, NORM_TYPES, ChannelGraph, _channels, build_graph
from .models import (
    MAX_UNCHECKED_INT,
    BuilderArgumentError,
    PlanBuilder,
    UntrustedModelFile,
    is_file_spec,
    plan_builder,
    short_repr,
)
from .surgery import prune_channels

PLAN_SCHEMA = 1


def make_plan(
    graph: ChannelGraph,
    keep: torch.Tensor,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    macs: int,
    params: int,
    target: int | None = None,
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The versioned channel plan of a pruned model."""
    kept = graph.kept_indices(keep)
    return {
        "schema": PLAN_SCHEMA,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "input_shape": list(graph.input_shape),
        "exclude": list(exclude),
        "target_macs": target,
        "macs": macs,
        "params": params,
        "kept_units": torch.nonzero(keep).flatten().tolist(),
        "num_units": graph.num_units,
        "layers": {
            name: {
                "kind": lay.kind,
                "width": [len(lay.in_units), len(lay.out_units)],
                **kept[name],
            }
            for name, lay in graph.layers.items()
        },
    }


def save_snapshot_files(
    directory: Path, model: nn.Module, plan: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """plan.json, model.safetensors and metrics.json of one snapshot."""
    save_weights(directory / "model.safetensors", model)
    write_json(directory / "plan.json", plan)
    write_json(directory / "metrics.json", metrics)


PLAN_METADATA_KEY = "taperprune_plan"


def save_with_plan(path: Path, model: nn.Module, plan: dict[str, Any]) -> None:
    """One self-contained safetensors file: the weights, with the plan in its metadata."""
    save_weights(path, model, metadata={PLAN_METADATA_KEY: json.dumps(plan)})


MAX_INPUT_ELEMENTS = 2**24  # values in one example of input_shape (3x2048x2048 is 12.6 M)
MAX_MODEL_ELEMENTS = 2**30  # parameters + buffers of an unpruned model built from a plan
CORRUPTED = "the plan is corrupted; re-export the snapshot"
OTHER_MODEL = "it is a plan for another model; load it with the model it was made for"
BAD_WEIGHTS = "the weights are corrupted or altered; re-export the snapshot"
YOUR_MODEL = "build the model yourself and pass it: taperprune.load(path, model=...)"


class PlanError(TaperpruneError):
    """A plan or snapshot that cannot be loaded: `<file>: <field>: <what> (<what to do>)`."""


def _brief(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 240 else text[:237] + "..."


def _fail(where: Path, field: str, what: str, fix: str = CORRUPTED) -> PlanError:
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
    in_: list[int] = Field(alias="in")  # kept indices; ranges checked in `_check_plan`
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
    kept_units: list[int]  # ranges checked in `_check_plan`
    num_units: Annotated[int, Field(ge=1)]
    layers: dict[str, LayerSpec]


def _field(*loc: int | str) -> str:
    """("layers", "features.0", "width", 1) → "layers['features.0'].width[1]"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += (f".{part}" if out else part) if part.isidentifier() else f"[{part!r}]"
    return out or "plan"


def _check_plan(plan: Any, where: Path) -> None:
    """PlanError naming the first field of `plan` that is not what `make_plan` writes."""
    if not isinstance(plan, dict):
        raise _fail(where, "plan", f"is a JSON {type(plan).__name__}, not an object")
    if "schema" not in plan:
        raise _fail(where, "schema", "is missing")
    schema = plan["schema"]
    if type(schema) is not int or schema != PLAN_SCHEMA:
        raise _fail(
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
        raise _fail(where, _field(*err["loc"]), what) from None
    shape = plan["input_shape"]
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        what = f"{'x'.join(map(str, shape))} is more than {MAX_INPUT_ELEMENTS:,} values"
        raise _fail(where, "input_shape", what)
    if not plan["kept_units"]:
        raise _fail(where, "kept_units", "is empty; a plan keeps a unit of every group")
    _check_indices(where, "kept_units", plan["kept_units"], plan["num_units"], in_order=False)
    for name, layer in plan["layers"].items():
        for side, width in zip(("in", "out"), layer["width"], strict=True):
            _check_indices(where, _field("layers", name, side), layer[side], width)


def _check_indices(where: Path, field: str, idx: list[int], n: int, in_order: bool = True) -> None:
    """Each index in [0, n) and none twice (and increasing, where `make_plan` sorts them)."""
    last = -1
    seen: set[int] = set()
    for i in idx:
        if not 0 <= i < n:
            raise _fail(where, field, f"{short_repr(i)} is out of range [0, {n})")
        if i in seen or (in_order and i < last):
            raise _fail(
                where, field, f"{i} " + ("appears twice" if i in seen else "is out of order")
            )
        seen.add(i)
        last = i


def _check_json(
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
            _check_json((*field, key), v, non_negative=non_negative, limit=limit)


def _plan_file(path: Path) -> Path:
    return path / "plan.json" if path.is_dir() else path


def read_plan(path: Path) -> dict[str, Any]:
    """The plan of a snapshot directory (plan.json) or of a self-contained .safetensors file,
    every field checked: a PlanError names the file and the first field that is wrong."""
    path, where = Path(path), _plan_file(Path(path))
    try:
        plan = read_json(where) if path.is_dir() else _plan_in_safetensors(path)
    except (ValueError, RecursionError, OSError) as exc:  # > 4300 digits, deep nesting, ...
        raise _fail(where, "plan", f"cannot be read: {_brief(exc)}") from exc
    _check_plan(plan, where)
    return plan


def _plan_in_safetensors(path: Path) -> Any:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise TaperpruneError(f"{path} does not exist") from None
    except Exception as exc:
        raise TaperpruneError(
            f"{path} is corrupted or not a safetensors file: {_brief(exc)}"
        ) from exc
    if PLAN_METADATA_KEY not in meta:
        raise TaperpruneError(
            f"{path} holds weights but no channel plan; load a snapshot directory, or a file "
            "written by `taperprune export --format safetensors`"
        )
    try:
        return json.loads(meta[PLAN_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise TaperpruneError(f"the plan stored in {path} is corrupted: {exc}") from exc


def _model_from_plan(plan: dict[str, Any], path: Path, trust_model_file: bool) -> nn.Module:
    """The unpruned model named in the plan: built-in or torchvision only unless the caller
    trusts a model file, and built on the meta device first where it can be (nothing is
    allocated until it fits the plan's layers)."""
    where, spec = _plan_file(path), plan["model"]
    try:
        for key, value in spec["kwargs"].items():
            _check_json((key,), value, non_negative=not is_file_spec(spec["name"]))
        builder = plan_builder(spec["name"], spec["kwargs"], trust_model_file=trust_model_file)
        meta = None if builder.from_file else _meta_build(builder)
    except UntrustedModelFile as exc:
        raise PlanError(
            f"{where}: model.name: names the Python file {exc.file!r} as the model's builder, "
            "and loading a snapshot runs no code from it (build the model yourself and pass "
            f"it: taperprune.load({str(path)!r}, model=MyNet()); or, if you trust "
            f"{exc.file!r}, pass trust_model_file=True, on the command line --trust-model-file)"
        ) from None
    except BuilderArgumentError as exc:
        raise _fail(where, _field("model", "kwargs", *exc.field), exc.problem) from None
    except ModelError as exc:
        raise _fail(where, "model.name", str(exc), f"{CORRUPTED}; or {YOUR_MODEL}") from None
    except Exception as exc:  # the builder fails on the plan's arguments (on the meta device)
        raise _fail(where, "model.kwargs", f"{spec['name']}(...) fails: {_brief(exc)}") from exc
    if meta is not None:
        _check_widths(plan, meta, where)
        size = sum(t.numel() for t in (*meta.parameters(), *meta.buffers()))
        if size > MAX_MODEL_ELEMENTS:
            what = f"{builder.name} has {size:,} parameters, more than {MAX_MODEL_ELEMENTS:,}"
            raise _fail(where, "model", what, YOUR_MODEL)
    try:
        return builder.build()
    except Exception as exc:  # a builder's error on the plan's arguments
        raise _fail(where, "model.kwargs", f"{builder.name}(...) fails: {_brief(exc)}") from exc


def _meta_build(builder: PlanBuilder) -> nn.Module | None:
    """The model on the meta device, or None where its builder cannot build there (RegNet
    computes on tensors): then its integer arguments must be small."""
    try:
        return builder.build("meta")
    except Exception as exc:
        if not isinstance(exc, NotImplementedError) and "meta" not in str(exc):
            raise
        for key, value in builder.kwargs.items():
            _check_json((key,), value, limit=MAX_UNCHECKED_INT)
        return None


def _check_widths(plan: dict[str, Any], model: nn.Module, where: Path) -> None:
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
            raise _fail(where, _field("layers", name, "width"), what, OTHER_MODEL)
    for name in set(have) - set(plan["layers"]):
        raise _fail(where, "layers", f"the model's layer {name!r} is not listed", OTHER_MODEL)


def _check_graph(plan: dict[str, Any], graph: ChannelGraph, where: Path) -> torch.Tensor:
    """The keep mask of the plan, once it is known to fit `graph`."""
    if graph.num_units != plan["num_units"]:
        what = f"{plan['num_units']} prunable units in the plan, {graph.num_units} in the model"
        raise _fail(where, "num_units", what, OTHER_MODEL)
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    keep[torch.tensor(plan["kept_units"], dtype=torch.long)] = True
    counts = torch.zeros(len(graph.groups), dtype=torch.long)
    for g in torch.nonzero(counts.index_add_(0, graph.unit_group, keep.long()) == 0).flatten():
        what = f"keeps no unit of the channel group of {graph.groups[int(g)].root!r}"
        raise _fail(where, "kept_units", what)
    kept = graph.kept_indices(keep)
    for name, entry in plan["layers"].items():
        for side in ("in", "out"):
            if kept[name][side] != entry[side]:
                what = "differs from the channels that kept_units keeps"
                raise _fail(where, _field("layers", name, side), what)
    return keep


def _check_weights(state: dict[str, torch.Tensor], model: nn.Module, weights: Path) -> None:
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


def load(
    path: str | Path, model: nn.Module | None = None, *, trust_model_file: bool = False
) -> nn.Module:
    """Rebuild a pruned model from a snapshot directory or a self-contained .safetensors file.

    The unpruned architecture comes from `model` (an unpruned instance, e.g. of your own
    class, pruned in place and returned), or else from the built-in or torchvision builder
    named in the plan, its arguments checked first. A plan naming a Python file
    (`file.py:function`) is refused unless `trust_model_file=True`: opening a snapshot runs
    no code from it. Every field of the plan and every tensor (names, dtypes, shapes, finite
    values) is checked; a PlanError names the file and the field.
    """
    path = Path(path)
    plan, where = read_plan(path), _plan_file(path)
    if model is None:
        model = _model_from_plan(plan, path, trust_model_file)
    model = model.cpu().eval()
    _check_widths(plan, model, where)
    exclude = tuple(plan.get("exclude", ()))
    names = [n for n, _ in model.named_modules() if n]
    for pat in exclude:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise _fail(where, "exclude", f"{pat!r} matches no layer of the model", OTHER_MODEL)
    shape = plan["input_shape"]
    try:
        graph = build_graph(model, torch.zeros((1, *shape)), exclude=exclude)
    except TaperpruneError as exc:  # the model cannot be traced at the plan's input shape
        raise _fail(where, "model, input_shape", str(exc), OTHER_MODEL) from exc
    except Exception as exc:  # the model does not run on the plan's input shape
        what = f"the model does not run on {'x'.join(map(str, shape))} inputs: {_brief(exc)}"
        raise _fail(where, "input_shape", what, OTHER_MODEL) from exc
    try:
        prune_channels(model, graph, _check_graph(plan, graph, where))
    except (ValueError, IndexError, RuntimeError) as exc:
        raise _fail(where, "kept_units", f"cannot be applied: {_brief(exc)}") from exc
    weights = path / "model.safetensors" if path.is_dir() else path
    state = load_weights(weights)
    _check_weights(state, model, weights)
    model.load_state_dict(state)
    return model
