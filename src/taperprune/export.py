"""What a run keeps: channel plans (JSON), weights (safetensors), atomic files, safe loading.

Nothing is pickled. A snapshot is rebuilt from the model builder named in its plan,
the kept units (the plan), and the weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import TaperpruneError
from .graph import ChannelGraph, build_graph, prune_channels
from .models import build_model

PLAN_SCHEMA = 1


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that replaces `path` only if the block succeeds.

    So a file is either absent, its old version, or complete — never half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_structured(
    path: Path, parse: Callable[[str], Any], errors: tuple[type[Exception], ...], kind: str
) -> Any:
    """Parse a text file; a missing or unparsable one is named in the error."""
    bad: tuple[type[Exception], ...] = (*errors, UnicodeDecodeError)
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise TaperpruneError(f"{path} is missing") from None
    except bad as exc:
        raise TaperpruneError(
            f"{path} is corrupted or truncated ({exc}); it is not valid {kind}"
        ) from exc


def read_json(path: Path) -> Any:
    return read_structured(path, json.loads, (json.JSONDecodeError,), "JSON")


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """The model's state dict as safetensors, written atomically."""
    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


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


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_snapshot(
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
