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
from .schemas import REACHED_KEY


def latency_text(measured: list[Latency], speedup: dict[str, float] | None = None) -> str:
    """'; torch b1: 0.53 ms (1.38×); onnxruntime b32: 5.98 ms (0.60×, slower)' (rich markup)."""
    out = ""
    for m in measured:
        out += f"; {m.runtime} b{m.batch}: {m.median_ms:.2f} ms"
        x = (speedup or {}).get(f"{m.runtime}/b{m.batch}")
        if x is not None:
            out += f" ([red]{x:.2f}×, slower[/red])" if x < 1 else f" ({x:.2f}×)"
    return out


ALIGN = 8  # the channel multiple SIMD kernels favour (--round-to 8)


def aligned_share(widths: dict[str, int]) -> float | None:
    """Share of a snapshot's pruned layer widths that are multiples of ALIGN."""
    if not widths:
        return None
    return sum(w % ALIGN == 0 for w in widths.values()) / len(widths)


def slowdown_reason(aligned: float | None) -> str:
    """Why a pruned model may run slower than the unpruned one (shown beside a slowdown)."""
    if aligned is not None and aligned < 1:
        share = "none" if aligned == 0 else f"only {aligned:.0%}"
        return (
            f"because {share} of the pruned widths are multiples of {ALIGN}, which the "
            f"runtime's kernels favour: try --round-to {ALIGN}"
        )
    return "because the runtime's fixed per-layer costs outweigh the MACs saved at this size"


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
    unit: str = "MACs",
    full_params: int,
    base_acc: float,
    base_latency: list[Latency],
    latency: list[Latency],
    deployed: dict[str, Any],
    widths: dict[str, int] | None = None,
) -> dict[str, Any]:
    """metrics.json of a snapshot: its result, its share of the unpruned model, speed-ups."""
    macs = int(result["macs"])
    aligned = aligned_share(widths or {})
    return (
        result
        | {
            "macs_fraction": macs / full_macs,
            "mac_reduction": full_macs / macs,
            "unit": unit,
            # reached − budget, in the budgets' unit (MACs, params, modelled ns): ≤ 0
            "budget_error": int(result[REACHED_KEY[unit]]) - target,
            "full_macs": full_macs,
            "full_params": full_params,
            "base_acc": base_acc,
            "speedup": speedups(base_latency, latency),
            "aligned_widths": aligned,
        }
        | deployed
    )
