"""The channel plan of a pruned model (JSON), saving it with its weights, and `load`.

Nothing is pickled. A snapshot is rebuilt from the model builder named in its plan,
the kept units (the plan), and the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .errors import TaperpruneError
from .files import load_weights, read_json, save_weights, write_json
from .graph import ChannelGraph, build_graph
from .models import build_model
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


def read_plan(path: Path) -> dict[str, Any]:
    """The plan of a snapshot directory (plan.json) or of a self-contained .safetensors file."""
    if path.is_dir():
        plan = read_json(path / "plan.json")
        where = path / "plan.json"
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except FileNotFoundError:
            raise TaperpruneError(f"{path} does not exist") from None
        except Exception as exc:
            raise TaperpruneError(f"{path} is corrupted or not a safetensors file: {exc}") from exc
        if PLAN_METADATA_KEY not in meta:
            raise TaperpruneError(
                f"{path} holds weights but no channel plan; load a snapshot directory, or a file "
                "written by `taperprune export --format safetensors`"
            )
        try:
            plan = json.loads(meta[PLAN_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise TaperpruneError(f"the plan stored in {path} is corrupted: {exc}") from exc
        where = path
    schema = plan.get("schema") if isinstance(plan, dict) else None
    if schema != PLAN_SCHEMA:
        raise TaperpruneError(
            f"{where} has plan schema {schema}; this taperprune reads schema {PLAN_SCHEMA}"
        )
    return plan


def _check_plan_fits(plan: dict[str, Any], graph: ChannelGraph, where: Path) -> None:
    """Name the first layer whose widths differ between the plan and the model."""
    for name, entry in plan["layers"].items():
        lay = graph.layers.get(name)
        width = [len(lay.in_units), len(lay.out_units)] if lay is not None else None
        if width != entry["width"]:
            has = f"{width[0]} → {width[1]}" if width else "no such layer"
            raise TaperpruneError(
                f"the plan in {where} does not fit the model: layer {name!r} has "
                f"{entry['width'][0]} → {entry['width'][1]} channels in the plan, the model has "
                f"{has}; it is a plan for another model"
            )
    if graph.num_units != plan["num_units"]:
        raise TaperpruneError(
            f"the plan in {where} was made for a model with {plan['num_units']} prunable "
            f"units; this model has {graph.num_units}: it is a plan for another model"
        )


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a pruned model from a snapshot directory or a self-contained .safetensors file.

    The unpruned architecture comes from the builder named in the plan, or from `model`
    (an unpruned instance, e.g. of your own class), which is pruned in place and returned.
    """
    path = Path(path)
    plan = read_plan(path)
    if model is None:
        model = build_model(plan["model"]["name"], **plan["model"]["kwargs"])
    example = torch.zeros((1, *plan["input_shape"]))
    graph = build_graph(model.cpu().eval(), example, exclude=tuple(plan.get("exclude", ())))
    _check_plan_fits(plan, graph, path)
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    keep[torch.tensor(plan["kept_units"], dtype=torch.long)] = True
    prune_channels(model, graph, keep)
    weights = path / "model.safetensors" if path.is_dir() else path
    state = load_weights(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TaperpruneError(f"the weights in {weights} do not fit the plan: {exc}") from exc
    return model
