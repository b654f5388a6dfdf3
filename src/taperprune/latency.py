"""Measured inference latency: warm-up, then median and p90 of timed runs, threads pinned."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .errors import TaperpruneError

Runtime = Literal["torch", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Latency:
    """One measurement: `runs` timed forward passes of one batch size (fewer than asked
    where they passed MAX_SECONDS)."""

    runtime: str
    batch: int
    threads: int
    median_ms: float
    p90_ms: float
    runs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# A measurement stops after this many seconds of timed runs (at least MIN_RUNS of them):
# a large model at batch 32 would otherwise spend minutes of a run on its latency.
MAX_SECONDS = 5.0
MIN_RUNS = 3
# ...and goes on past `runs` until this many seconds are timed: 20 runs of a 0.15-ms model
# are 3 ms of timing, and on a shared 2-core VM their median moved by up to 2× between
# repeats (onnxruntime, batch 1); half a second of runs moved it by 4 % (docs/BENCHMARKS.md).
MIN_SECONDS = 0.5


def _time(
    call: Callable[[], object],
    warmup: int,
    runs: int,
    max_seconds: float = MAX_SECONDS,
    min_seconds: float = 0.0,
) -> tuple[float, float, int]:
    """(median ms, p90 ms, runs timed): at least `runs` runs and `min_seconds` of them,
    stopping at `max_seconds` (after MIN_RUNS at least)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    max_ms, min_ms = max_seconds * 1e3, min(min_seconds, max_seconds) * 1e3
    while (len(times) < runs or sum(times) < min_ms) and (
        len(times) < MIN_RUNS or sum(times) < max_ms
    ):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    p90 = float(np.percentile(times, 90)) if len(times) > 1 else times[0]
    return statistics.median(times), p90, len(times)


def _check_args(batch: int, runs: int, threads: int) -> None:
    if batch < 1 or runs < 1 or threads < 1:
        raise TaperpruneError(
            f"latency needs batch, runs and threads ≥ 1 (got batch={batch}, runs={runs}, "
            f"threads={threads})"
        )


def default_threads() -> int:
    """The thread count torch would use here (printed with every measurement)."""
    return torch.get_num_threads()


def torch_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int,
    *,
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 20,
    device: torch.device | str = "cpu",
    max_seconds: float = MAX_SECONDS,
    min_seconds: float = MIN_SECONDS,
) -> Latency:
    """Eager PyTorch latency of `model` in eval mode under `torch.inference_mode`."""
    threads = threads or default_threads()
    _check_args(batch, runs, threads)
    device = torch.device(device)
    was = model.training
    model.eval()
    x = torch.randn((batch, *input_shape), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call() -> None:
        model(x)
        sync()

    try:
        with _torch_threads(threads), torch.inference_mode():
            median, p90, timed = _time(call, warmup, runs, max_seconds, min_seconds)
    finally:
        model.train(was)
    return Latency("torch", batch, threads, median, p90, timed)


def onnx_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TaperpruneError(f"onnxruntime cannot load {path}: {exc}") from exc


def onnx_latency(
    path: Path,
    input_shape: tuple[int, ...],
    batch: int,
    *,
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 20,
    max_seconds: float = MAX_SECONDS,
    min_seconds: float = MIN_SECONDS,
) -> Latency:
    """onnxruntime (CPU) latency of the ONNX file at `path`."""
    threads = threads or default_threads()
    _check_args(batch, runs, threads)
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    median, p90, timed = _time(
        lambda: session.run(None, {name: x}), warmup, runs, max_seconds, min_seconds
    )
    return Latency("onnxruntime", batch, threads, median, p90, timed)


def speedups(base: list[Latency], pruned: list[Latency]) -> dict[str, float]:
    """'runtime/batch' -> median latency of the base over that of the pruned model."""
    by_key = {(b.runtime, b.batch): b.median_ms for b in base}
    return {
        f"{p.runtime}/b{p.batch}": by_key[(p.runtime, p.batch)] / p.median_ms
        for p in pruned
        if (p.runtime, p.batch) in by_key and p.median_ms > 0
    }
