"""Files a run writes and reads: atomic writes, JSON, and weights (safetensors, no pickle)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import TaperpruneError


@functools.cache
def _file_mode() -> int:
    """What the process's umask gives a new file (mkstemp alone would make it 0600, and a
    team's other accounts could not read the run)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_failure(path: Path, exc: BaseException) -> TaperpruneError:
    """One line for a file that could not be written: why, and the free space left."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
        space = f"; {free / 2**20:.0f} MiB free on its file system"
    except OSError:
        space = ""
    return TaperpruneError(
        f"cannot write {path}: {reason}{space}. Free some space or choose another --out; "
        "files written before are whole (writes are atomic)"
    )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that replaces `path` only if the block succeeds.

    So a file is either absent, its old version, or complete — never half-written. It gets
    the permissions the umask gives; a write that fails (a full disk) is one clear error.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failure(path, exc) from exc
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
        try:
            save_file(state, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports a full disk as its own error type
            raise write_failure(path, exc) from exc


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
