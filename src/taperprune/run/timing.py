"""`taperprune bench-latency`: which models to time (a name, a run, a snapshot, an .onnx
file) and their latency on each runtime, with speed-ups against the unpruned model."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cost import count_macs
from ..errors import TaperpruneError
from ..export import export_onnx
from ..latency import onnx_latency, onnx_session, torch_latency
from ..models import build_model, default_input_shape, parse_input_shape
from ..plan import load as load_snapshot
from ..plan import read_plan
from .rundir import is_run, read_run


@dataclass(frozen=True)
class TimedRow:
    name: str
    macs: int  # 0 when unknown (an .onnx file)
    runtime: str
    batch: int
    median_ms: float
    p90_ms: float
    speedup: float  # against the first model timed on this runtime and batch
    mac_reduction: float


def models_to_time(
    target: str, input: str | None, num_classes: int, *, trust_model_file: bool = False
) -> tuple[list[tuple[str, Any]], tuple[int, ...]]:
    """(name, model or ONNX path) to time, the unpruned reference first where there is one,
    and the input shape: --input, else the one the target was made for. Snapshots are
    opened with `load`, which runs a model file named in a plan only with
    `trust_model_file` (--trust-model-file)."""

    def load(path: Path) -> torch.nn.Module:
        return load_snapshot(path, trust_model_file=trust_model_file)

    given = parse_input_shape(input) if input else None
    path = Path(target)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise TaperpruneError(f"ONNX file {path} does not exist")
        dims = onnx_session(path, 1).get_inputs()[0].shape[1:]
        if given is None and not all(isinstance(d, int) for d in dims):
            raise TaperpruneError(f"{path} has a dynamic input size; give --input CxHxW")
        return [(path.name, path)], given or tuple(dims)
    if is_run(path):
        run = read_run(path)
        items = [("unpruned", load(path / "base"))]
        items += [(s.label, load(s.directory)) for s in run.snapshots]
        return items, given or tuple(run.base_plan["input_shape"])
    if (path / "plan.json").is_file():
        base = path.parent.parent / "base"
        beside = (base / "plan.json").is_file() and not base.is_symlink()
        ref = [("unpruned", load(base))] if beside and is_run(path.parent.parent) else []
        shape = given or tuple(read_plan(path)["input_shape"])
        return ref + [(path.name, load(path))], shape
    if path.exists():
        raise TaperpruneError(f"{path} is not a run, a snapshot (plan.json) or an .onnx file")
    shape = given or default_input_shape(target)
    return [(target, build_model(target, num_classes=num_classes, in_channels=shape[0]))], shape


def time_models(
    items: Sequence[tuple[str, Any]],
    shape: tuple[int, ...],
    runtimes: Sequence[str],
    batches: Sequence[int],
    threads: int,
    warmup: int,
    runs: int,
) -> Iterator[TimedRow]:
    """Each model on each runtime and batch; the first model of a (runtime, batch) is the
    reference of the speed-ups."""
    reference: dict[tuple[str, int], tuple[float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, item) in enumerate(items):
            macs = 0 if isinstance(item, Path) else count_macs(item, torch.zeros((1, *shape)))
            onnx_path = item if isinstance(item, Path) else Path(tmp) / f"{i}.onnx"
            if "onnxruntime" in runtimes and not isinstance(item, Path):
                export_onnx(item, shape, onnx_path, check=False)
            for rt in runtimes:
                if rt == "torch" and isinstance(item, Path):
                    continue
                for b in batches:
                    # bench-latency times every run asked for (a run's own timing is capped).
                    how = dict(threads=threads, warmup=warmup, runs=runs, max_seconds=math.inf)
                    m = (
                        torch_latency(item, shape, b, **how)  # type: ignore[arg-type]
                        if rt == "torch"
                        else onnx_latency(onnx_path, shape, b, **how)  # type: ignore[arg-type]
                    )
                    ref_ms, ref_macs = reference.setdefault((rt, b), (m.median_ms, macs))
                    yield TimedRow(
                        name,
                        macs,
                        rt,
                        b,
                        m.median_ms,
                        m.p90_ms,
                        ref_ms / m.median_ms,
                        ref_macs / macs if macs else 0.0,
                    )
