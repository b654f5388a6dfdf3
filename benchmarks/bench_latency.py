"""CPU latency of pruned models against the MAC reduction (issue 5's latency table).

Random weights (latency does not depend on their values). Each model is pruned to 50 % and
25 % of its MACs by the λ solve taperprune runs every step, with each channel's L1 weight
norm as its score, then timed eagerly in PyTorch and in onnxruntime at batch 1 and 32.

    .venv/bin/python benchmarks/bench_latency.py [--models demo_cnn,vgg16,resnet50]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from taperprune.constraint import group_interactions, solve_budget
from taperprune.cost import build_cost_model, count_macs
from taperprune.export import export_onnx
from taperprune.graph import ChannelGraph, build_graph
from taperprune.latency import default_threads, onnx_latency, torch_latency
from taperprune.models import build_model, default_input_shape
from taperprune.surgery import remove_masked


def l1_scores(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    """Per unit: the L1 norm of the root layer's output filters in that unit."""
    modules = dict(model.named_modules())
    scores = torch.zeros(graph.num_units, dtype=torch.float64)
    for g in graph.groups:
        w = modules[g.root].weight.detach().abs().flatten(1).sum(1).double()
        scores.index_add_(0, g.channel_units, w)
    return scores


def prune_to(model: nn.Module, x: torch.Tensor, fraction: float) -> nn.Module:
    graph = build_graph(model, x)
    cm = build_cost_model(graph)
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    full = count_macs(model, x)
    inter = group_interactions(cm, graph.unit_group, len(graph.groups))
    sol = solve_budget(cm, l1_scores(model, graph), keep, fraction * full, graph.unit_group, inter)
    return remove_masked(model, graph, sol.keep)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="demo_cnn,vgg16,resnet50")
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    threads = default_threads()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"threads {threads}; median of {args.runs} runs after 3 warm-up runs")
    print(
        "| model | MACs | MAC reduction | runtime | batch | median ms | p90 ms | speed-up "
        "| speed-up ÷ MAC reduction |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        shape = default_input_shape(name)
        base = build_model(name, num_classes=10 if name == "demo_cnn" else 1000).eval()
        x = torch.zeros((1, *shape))
        full = count_macs(base, x)
        models = [(1.0, base)] + [
            (float(f), prune_to(base, x, float(f)).eval()) for f in args.fractions.split(",")
        ]
        ref: dict[tuple[str, int], float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (fraction, model) in enumerate(models):
                macs = count_macs(model, x)
                onnx = Path(tmp) / f"{i}.onnx"
                export_onnx(model, shape, onnx, check=False)
                for runtime in ("torch", "onnxruntime"):
                    for b in batches:
                        runs = args.runs if b == 1 else max(3, args.runs // 2)
                        lat = (
                            torch_latency(model, shape, b, threads=threads, warmup=3, runs=runs)
                            if runtime == "torch"
                            else onnx_latency(onnx, shape, b, threads=threads, warmup=3, runs=runs)
                        )
                        base_ms = ref.setdefault((runtime, b), lat.median_ms)
                        red = full / macs
                        speed = base_ms / lat.median_ms
                        print(
                            f"| {name} @{fraction:g} | {macs / 1e6:,.1f}M | {red:.2f}× | {runtime} "
                            f"| {b} | {lat.median_ms:.2f} | {lat.p90_ms:.2f} | {speed:.2f}× "
                            f"| {speed / red:.2f} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
