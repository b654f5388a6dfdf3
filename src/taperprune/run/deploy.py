"""What a run hands over for each model it keeps: model.onnx (checked against PyTorch),
CPU latency, and a snapshot's metrics.json."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from ..export import export_onnx
from ..latency import Latency, onnx_latency, speedups, torch_latency
from .config import RunConfig


def latency_text(measured: list[Latency]) -> str:
    return "".join(f"; {m.runtime} b{m.batch}: {m.median_ms:.2f} ms" for m in measured)


def deploy(
    model: nn.Module,
    directory: Path,
    input_shape: tuple[int, ...],
    cfg: RunConfig,
    console: Console,
) -> tuple[dict[str, Any], list[Latency]]:
    """model.onnx (checked against PyTorch) and the CPU latency of one model."""
    cpu = copy.deepcopy(model).cpu().float().eval()
    info: dict[str, Any] = {}
    onnx_path = directory / "model.onnx"
    if cfg.onnx:
        check = export_onnx(cpu, input_shape, onnx_path)
        assert check is not None
        info["onnx_check"] = check.as_dict()
        if not check.passed:
            console.print(f"[yellow]warning:[/yellow] {directory.name}: {check.describe()}")
    measured = []
    for batch in cfg.latency_batches:
        if "torch" in cfg.latency_runtimes:
            measured.append(torch_latency(cpu, input_shape, batch, runs=cfg.latency_runs))
        if "onnxruntime" in cfg.latency_runtimes and cfg.onnx:
            measured.append(onnx_latency(onnx_path, input_shape, batch, runs=cfg.latency_runs))
    info["latency"] = [m.as_dict() for m in measured]
    return info, measured


def snapshot_metrics(
    result: dict[str, Any],
    *,
    target: int,
    full_macs: int,
    full_params: int,
    base_acc: float,
    base_latency: list[Latency],
    latency: list[Latency],
    deployed: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json of a snapshot: its result, its share of the unpruned model, speed-ups."""
    macs = int(result["macs"])
    return (
        result
        | {
            "macs_fraction": macs / full_macs,
            "mac_reduction": full_macs / macs,
            "budget_error_macs": macs - target,
            "full_macs": full_macs,
            "full_params": full_params,
            "base_acc": base_acc,
            "speedup": speedups(base_latency, latency),
        }
        | deployed
    )
