"""Resumable state on disk without pickle: tensors in safetensors, everything else in JSON.

    checkpoint/latest.json           {"dir": "step-000000420", ...}; replaced atomically
    checkpoint/step-000000420/state.json, tensors.safetensors

A new checkpoint is written into a fresh directory and only then named in latest.json,
so a crash at any moment leaves the previous checkpoint whole. Reading one back trusts
nothing: latest.json may only name a sibling `step-…` directory, no path may pass through
a symbolic link, and a malformed file is one line naming it.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from ..errors import TaperpruneError
from ..files import atomic_path, read_json, write_json
from .rundir import RUN_FILES, check_links, file_error, inside, is_run, validate

LATEST = "latest.json"
FORMAT = 1
STEP_DIR = re.compile(r"step-[0-9]{9,}(\.[0-9]+)?")  # what `save_checkpoint` names one
REDO = "the run cannot be resumed from it: start it again with --overwrite"


def _step_dir(name: str) -> str:
    if not STEP_DIR.fullmatch(name):
        raise ValueError(f"{name!r} is not a checkpoint directory name like step-000000420")
    return name


class Pointer(BaseModel):
    """latest.json: which checkpoint directory is the last complete one."""

    model_config = ConfigDict(strict=True, extra="allow")

    dir: Annotated[str, AfterValidator(_step_dir)]
    step: Annotated[int, Field(ge=0)] | None = None


class Saved(BaseModel):
    """state.json of a checkpoint: the state tree, tensors replaced by references."""

    model_config = ConfigDict(strict=True, extra="allow")

    format: Literal[1]
    state: dict[str, Any]


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able tree; tensors and arrays replaced by references into `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, state: dict[str, Any], step: int, phase: str = "") -> Path:
    """Write `state` as checkpoint number `step`, then point latest.json at it."""
    inside(directory.parent, directory.name)  # never into a linked directory
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    name, n = f"step-{step:09d}", 0
    while (directory / name).exists():  # never touch the directory latest.json names
        n += 1
        name = f"step-{step:09d}.{n}"
    target = directory / name
    target.mkdir(parents=True)
    with atomic_path(target / "tensors.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(target / "state.json") as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "state": tree}))
    write_json(directory / LATEST, {"dir": name, "step": step, "phase": phase, "format": FORMAT})
    for old in directory.glob("step-*"):  # only now is the old checkpoint redundant
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def has_checkpoint(directory: Path) -> bool:
    return (directory / LATEST).is_file()


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError, RecursionError) as exc:  # a directory, huge integers, nesting
        raise file_error(path, "file", f"cannot be read as JSON: {exc}", REDO) from None


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """The state saved by the last complete `save_checkpoint`; errors name the bad file."""
    latest = directory / LATEST
    if not latest.is_file():
        raise TaperpruneError(
            f"{directory} holds no checkpoint ({LATEST} is missing); the run cannot be resumed"
        )
    # A resumed run writes into the run directory: none of its files may be a link either.
    root = directory.parent
    check_links(root, RUN_FILES if is_run(root) else [directory.name])
    pointer = validate(Pointer, _read(latest), latest, REDO)
    where = inside(directory, pointer.dir, file=latest, field="dir")
    state_path = where / "state.json"
    meta = validate(Saved, _read(state_path), state_path, REDO)
    tensors_path = where / "tensors.safetensors"
    try:
        tensors = load_file(str(tensors_path))
    except FileNotFoundError:
        raise TaperpruneError(f"{tensors_path} is missing") from None
    except Exception as exc:
        raise TaperpruneError(f"{tensors_path} is corrupted or truncated: {exc}") from exc
    try:
        return _decode(meta.state, tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise file_error(
            state_path, "state", f"a reference that tensors.safetensors cannot fill ({exc!r})", REDO
        ) from None
