"""The channel plan of a pruned model (JSON), saving it with its weights, and `load`.

Nothing is pickled and no code is taken from a snapshot: a snapshot is rebuilt from the
built-in or torchvision builder named in its plan (or from the caller's own model), the
kept units (the plan), and the weights. Every field of the plan (`PlanFile`, one schema)
and every tensor is checked before it is used, and a problem is named on one line.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .errors import ModelError, TaperpruneError
from .files import load_weights, read_json, save_weights, write_json
from .graph import ChannelGraph, build_graph
from .models import BuilderArgumentError, UntrustedModelFile, is_file_spec
from .plan_builder import MAX_UNCHECKED_INT, PlanBuilder, plan_builder
from .plan_check import (
    CORRUPTED,
    MAX_MODEL_ELEMENTS,
    OTHER_MODEL,
    PLAN_SCHEMA,
    YOUR_MODEL,
    PlanError,
    brief,
    check_graph,
    check_json,
    check_plan,
    check_weights,
    check_widths,
    fail,
    field_path,
)
from .surgery import prune_channels

__all__ = ["PLAN_SCHEMA", "PlanError", "load", "make_plan", "read_plan", "save_with_plan"]


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


def _plan_file(path: Path) -> Path:
    return path / "plan.json" if path.is_dir() else path


def read_plan(path: Path) -> dict[str, Any]:
    """The plan of a snapshot directory (plan.json) or of a self-contained .safetensors file,
    every field checked: a PlanError names the file and the first field that is wrong."""
    path, where = Path(path), _plan_file(Path(path))
    try:
        plan = read_json(where) if path.is_dir() else _plan_in_safetensors(path)
    except (ValueError, RecursionError, OSError) as exc:  # > 4300 digits, deep nesting, ...
        raise fail(where, "plan", f"cannot be read: {brief(exc)}") from exc
    check_plan(plan, where)
    return plan


def _plan_in_safetensors(path: Path) -> Any:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise TaperpruneError(f"{path} does not exist") from None
    except Exception as exc:
        raise TaperpruneError(
            f"{path} is corrupted or not a safetensors file: {brief(exc)}"
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
            check_json((key,), value, non_negative=not is_file_spec(spec["name"]))
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
        raise fail(where, field_path("model", "kwargs", *exc.field), exc.problem) from None
    except ModelError as exc:
        raise fail(where, "model.name", str(exc), f"{CORRUPTED}; or {YOUR_MODEL}") from None
    except Exception as exc:  # the builder fails on the plan's arguments (on the meta device)
        raise fail(where, "model.kwargs", f"{spec['name']}(...) fails: {brief(exc)}") from exc
    if meta is not None:
        check_widths(plan, meta, where)
        size = sum(t.numel() for t in (*meta.parameters(), *meta.buffers()))
        if size > MAX_MODEL_ELEMENTS:
            what = f"{builder.name} has {size:,} parameters, more than {MAX_MODEL_ELEMENTS:,}"
            raise fail(where, "model", what, YOUR_MODEL)
    try:
        return builder.build()
    except Exception as exc:  # a builder's error on the plan's arguments
        raise fail(where, "model.kwargs", f"{builder.name}(...) fails: {brief(exc)}") from exc


def _meta_build(builder: PlanBuilder) -> nn.Module | None:
    """The model on the meta device, or None where its builder cannot build there (RegNet
    computes on tensors): then its integer arguments must be small."""
    try:
        return builder.build("meta")
    except Exception as exc:
        if not isinstance(exc, NotImplementedError) and "meta" not in str(exc):
            raise
        for key, value in builder.kwargs.items():
            check_json((key,), value, limit=MAX_UNCHECKED_INT)
        return None


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
    check_widths(plan, model, where)
    exclude = tuple(plan.get("exclude", ()))
    names = [n for n, _ in model.named_modules() if n]
    for pat in exclude:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise fail(where, "exclude", f"{pat!r} matches no layer of the model", OTHER_MODEL)
    shape = plan["input_shape"]
    try:
        graph = build_graph(model, torch.zeros((1, *shape)), exclude=exclude)
    except TaperpruneError as exc:  # the model cannot be traced at the plan's input shape
        raise fail(where, "model, input_shape", str(exc), OTHER_MODEL) from exc
    except Exception as exc:  # the model does not run on the plan's input shape
        what = f"the model does not run on {'x'.join(map(str, shape))} inputs: {brief(exc)}"
        raise fail(where, "input_shape", what, OTHER_MODEL) from exc
    try:
        prune_channels(model, graph, check_graph(plan, graph, where))
    except (ValueError, IndexError, RuntimeError) as exc:
        raise fail(where, "kept_units", f"cannot be applied: {brief(exc)}") from exc
    weights = path / "model.safetensors" if path.is_dir() else path
    state = load_weights(weights)
    check_weights(state, model, weights)
    model.load_state_dict(state)
    return model
