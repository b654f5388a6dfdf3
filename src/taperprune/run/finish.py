"""The files a run leaves: base/ (the unpruned model), snapshots/<label>/, summary.json and
the report; and the lines it prints about them."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..budget import format_macs
from ..cost import count_macs, count_params
from ..files import save_weights, write_json
from ..graph import ChannelGraph
from ..latency import Latency
from ..models import canonical_name
from ..plan import make_plan, save_snapshot_files
from ..pruner import Snapshot, TaperPruner
from . import distributed as ddp
from .config import RunConfig
from .deploy import deploy, latency_text, slowdown_reason, snapshot_metrics
from .prepare import Prepared
from .state import BaseResult, RunResult, RunState, SnapshotResult


def _plan(
    cfg: RunConfig, prep: Prepared, graph: ChannelGraph, keep: torch.Tensor, **fields: Any
) -> dict[str, Any]:
    return make_plan(
        graph,
        keep,
        model_name=canonical_name(cfg.model),
        model_kwargs=prep.kwargs,
        exclude=cfg.exclude,
        **fields,
    )


def write_base(
    cfg: RunConfig, prep: Prepared, base_acc: float, console: Console, *, write: bool
) -> BaseResult:
    """Measure the unpruned model; with `write`, save base/ (plan, weights, ONNX)."""
    model = prep.model
    full_macs = count_macs(model, prep.example)
    full_params = count_params(model)
    deployed: dict[str, Any] = {}
    latency: list[Latency] = []
    if write:
        base = Path(cfg.out) / "base"
        keep = torch.ones(prep.graph.num_units, dtype=torch.bool)
        plan = _plan(cfg, prep, prep.graph, keep, macs=full_macs, params=full_params)
        save_weights(base / "model.safetensors", model)
        write_json(base / "plan.json", plan)
        deployed, latency = deploy(model, base, tuple(prep.data.input_shape), cfg, console)
    console.print(
        f"unpruned: {format_macs(full_macs)} MACs, {full_params:,} params, "
        f"top-1 {base_acc:.2f}%" + latency_text(latency)
    )
    return BaseResult(full_macs, full_params, base_acc, deployed, [m.as_dict() for m in latency])


def save_snapshot(
    cfg: RunConfig,
    prep: Prepared,
    graph: ChannelGraph,
    base: BaseResult,
    res: SnapshotResult,
    snap: Snapshot,
    small: nn.Module,
    console: Console,
) -> None:
    """snapshots/<label>/: plan, weights, metrics, ONNX and latency of one snapshot."""
    target = snap.target if cfg.budget_unit == "MACs" else None  # plan.json: a MAC target
    plan = _plan(cfg, prep, graph, snap.keep, macs=res.macs, params=res.params, target=target)
    directory = Path(cfg.out) / "snapshots" / res.label
    deployed, latency = deploy(small, directory, tuple(prep.data.input_shape), cfg, console)
    metrics = snapshot_metrics(
        asdict(res),
        target=snap.target,
        unit=cfg.budget_unit,
        full_macs=base.full_macs,
        full_params=base.full_params,
        base_acc=base.base_acc,
        base_latency=[Latency(**m) for m in base.latency],
        latency=latency,
        deployed=deployed,
        widths=snap.widths,
    )
    save_snapshot_files(directory, small, plan, metrics)
    if latency:
        speed = metrics["speedup"]
        console.print(
            f"  {base.full_macs / res.macs:.2f}× fewer MACs" + latency_text(latency, speed)
        )
        if any(x < 1 for x in speed.values()):
            why = slowdown_reason(metrics["aligned_widths"])
            console.print(f"  [red]slower[/red] than unpruned in places: likely {why}")


def _latency_summary(cfg: RunConfig, pruner: TaperPruner) -> dict[str, Any]:
    """What a latency-budget run adds to summary.json: the modelled unpruned latency, where
    it was measured, and every snapshot that measured too slow at first (`pruner.notes`)."""
    m = cfg.method
    return {
        "full_latency_ns": pruner.full_macs,
        "latency_model": {
            "runtime": m.latency_runtime,
            "batch": m.latency_batch,
            "threads": m.latency_threads or torch.get_num_threads(),
        },
        "latency_notes": list(pruner.notes),
    }


def write_summary(
    cfg: RunConfig,
    state: RunState,
    pruner: TaperPruner,
    seconds: float,
    procs: ddp.Procs,
    ranks: dict[str, float],
    console: Console,
) -> RunResult:
    """summary.json and the report (main process); the checkpoint goes: nothing to resume."""
    base = state.base
    assert base is not None
    out = Path(cfg.out)
    result = RunResult(
        base.full_macs,
        base.full_params,
        base.base_acc,
        state.results,
        seconds,
        out,
        cfg.budget_unit,
        pruner.full_macs if cfg.budget_unit == "ns" else 0,
    )
    if not procs.main:
        return result
    write_json(
        out / "summary.json",
        {
            "full_macs": result.full_macs,
            "full_params": result.full_params,
            "unit": result.unit,
            **(_latency_summary(cfg, pruner) if result.unit == "ns" else {}),
            "base_acc": result.base_acc,
            "seconds": seconds,
            "trace_rows": len(pruner.trace),
            "optimizer_steps": state.global_step,
            "processes": procs.world,
            "ranks_agree": ranks,
            "base": base.deploy,
            "snapshots": [asdict(r) for r in state.results],
        },
    )
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    if cfg.report:
        try:
            from .report import write_report

            console.print(f"report: {write_report([out])}")
        except Exception as exc:  # the run's files are safe; the report can be redone
            console.print(
                f"[yellow]warning:[/yellow] the report could not be written ({exc}); "
                f"run `taperprune report {out}` to retry"
            )
    return result
