"""What a run keeps: channel plans (JSON), weights (safetensors), atomic files, safe loading.

Nothing is pickled. A snapshot is rebuilt from the model builder named in its plan,
the kept units (the plan), and the weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import TaperpruneError
from .graph import ChannelGraph, build_graph, prune_channels
from .models import build_model

PLAN_SCHEMA = 1


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that it is either absent, the old version, or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TaperpruneError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaperpruneError(
            f"{path} is corrupted or truncated ({exc}); it is not valid JSON"
        ) from exc


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's state dict as safetensors, written atomically."""
    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise TaperpruneError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TaperpruneError(f"cannot read weights from {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TaperpruneError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def make_plan(
    graph: ChannelGraph,
    keep: torch.Tensor,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    macs: int,
    params: int,
    target: int | None = None,
) -> dict[str, Any]:
    """The versioned channel plan of a pruned model."""
    return {
        "schema": PLAN_SCHEMA,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "input_shape": list(graph.input_shape),
        "target_macs": target,
        "macs": macs,
        "params": params,
        "kept_units": torch.nonzero(keep).flatten().tolist(),
        "num_units": graph.num_units,
        "layers": graph.kept_indices(keep),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_snapshot(
    directory: Path, model: nn.Module, plan: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """plan.json, model.safetensors and metrics.json of one snapshot."""
    save_weights(directory / "model.safetensors", model)
    write_json(directory / "plan.json", plan)
    write_json(directory / "metrics.json", metrics)


def load(path: str | Path) -> nn.Module:
    """Rebuild a pruned model from a snapshot directory (plan.json + model.safetensors)."""
    directory = Path(path)
    plan = read_json(directory / "plan.json")
    schema = plan.get("schema") if isinstance(plan, dict) else None
    if schema != PLAN_SCHEMA:
        raise TaperpruneError(
            f"{directory / 'plan.json'} has plan schema {schema}; this taperprune reads schema "
            f"{PLAN_SCHEMA}"
        )
    model = build_model(plan["model"]["name"], **plan["model"]["kwargs"])
    example = torch.zeros((1, *plan["input_shape"]))
    graph = build_graph(model, example)
    if graph.num_units != plan["num_units"]:
        raise TaperpruneError(
            f"the plan in {directory} was made for a model with {plan['num_units']} prunable "
            f"units; {plan['model']['name']} has {graph.num_units}: it is a plan for another model"
        )
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    keep[torch.tensor(plan["kept_units"], dtype=torch.long)] = True
    prune_channels(model, graph, keep)
    state = load_weights(directory / "model.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TaperpruneError(
            f"the weights in {directory / 'model.safetensors'} do not fit the plan: {exc}"
        ) from exc
    return model
