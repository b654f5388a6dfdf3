"""The on-disk cache of latency models: its folder and the key of an entry (the model's
layers and units, input shape, runtime, batch, threads, CPU model, library versions)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .graph import ChannelGraph
from .latency_meter import LatencySettings

if TYPE_CHECKING:
    from .latency_table import LayerSpec

FORMAT = 1  # of the cache files


def cpu_model() -> str:
    """This machine's CPU model name (a cache key part)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(parts: dict[str, Any]) -> str:
    """A file name for the cache entry of `parts` (any JSON-able dict)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """TAPERPRUNE_CACHE, else $XDG_CACHE_HOME/taperprune, else ~/.cache/taperprune."""
    env = os.environ.get("TAPERPRUNE_CACHE")
    if env:
        return Path(env) / "latency"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "taperprune" / "latency"


def _versions(runtime: str) -> dict[str, str]:
    out = {"torch": str(torch.__version__)}
    if runtime == "onnxruntime":
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out


def key_parts(
    specs: dict[str, LayerSpec],
    graph: ChannelGraph,
    settings: LatencySettings,
    cpu: str | None = None,
) -> dict[str, Any]:
    """What a cached latency model depends on: the model's layers and units, the input
    shape, runtime, batch, threads, CPU model and library versions."""
    return {
        "format": FORMAT,
        "layers": {n: asdict(s) for n, s in specs.items()},
        "units": hashlib.sha256(
            b"".join(
                torch.cat([lay.in_units, lay.out_units]).numpy().tobytes()
                for lay in graph.layers.values()
            )
        ).hexdigest(),
        "input_shape": list(graph.input_shape),
        "runtime": settings.runtime,
        "batch": settings.batch,
        "threads": settings.resolved_threads(),
        "cpu": cpu if cpu is not None else cpu_model(),
        "versions": _versions(settings.runtime),
    }


# Uniform shares of every group's units; 0 is the least a group keeps (one unit, 8
# channels from 16 up): without it the fit extrapolates to the smallest networks.
