"""Cost of the pruner itself: pruner.step vs a training step, and the λ solve on ResNet-50.

    .venv/bin/python benchmarks/bench_pruner.py

Prints medians; figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision

from taperprune.constraint import group_interactions, solve_budget
from taperprune.cost import build_cost_model, macs_and_marginals
from taperprune.graph import build_graph
from taperprune.models import demo_cnn
from taperprune.pruner import PrunerConfig, TaperPruner
from taperprune.schedule import ScheduleConfig


def demo_step_overhead(steps: int = 150, batch: int = 128) -> None:
    torch.manual_seed(0)
    model = demo_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    cfg = PrunerConfig(schedule=ScheduleConfig(kind="exponential", steps=steps), warmup_steps=10)
    pruner = TaperPruner(
        model, torch.zeros(1, 1, 28, 28), [0.125], config=cfg, keep_snapshot_models=False
    )
    train_t, prune_t = [], []
    for _ in range(steps + 10):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        rec = pruner.step(loss)
        t2 = time.perf_counter()
        if rec.phase == "taper":
            train_t.append(t1 - t0)
            prune_t.append(t2 - t1)
    tr, pr = statistics.median(train_t), statistics.median(prune_t)
    print(
        f"demo_cnn batch {batch}: training step {1e3 * tr:.1f} ms, pruner.step "
        f"{1e3 * pr:.3f} ms median (p90 {1e3 * sorted(prune_t)[int(0.9 * len(prune_t))]:.3f}),"
        f" overhead {100 * pr / tr:.2f} %"
    )


def resnet50_solve(steps: int = 200) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    t0 = time.perf_counter()
    graph = build_graph(model, torch.zeros(1, 3, 224, 224))
    cm = build_cost_model(graph)
    inter = group_interactions(cm, graph.unit_group, len(graph.groups))
    print(
        f"resnet50: graph + cost model + interactions {time.perf_counter() - t0:.2f} s, "
        f"{graph.num_units} units in {len(graph.groups)} groups"
    )
    scores = torch.rand(graph.num_units, dtype=torch.float64)
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    budget = float(cm.full_macs)
    rate = 1 - 0.25 ** (1 / 1000)  # full -> 25 % in 1000 steps
    solve_t, cost_t, removed = [], [], []
    state = None
    for _ in range(steps):
        budget *= 1 - rate
        t1 = time.perf_counter()
        sol = solve_budget(cm, scores, keep, budget, graph.unit_group, inter, marginals=state)
        state = (sol.macs, sol.marginals)
        solve_t.append(time.perf_counter() - t1)
        keep = sol.keep
        removed.append(sol.removed)
        t2 = time.perf_counter()
        macs_and_marginals(cm, keep)
        cost_t.append(time.perf_counter() - t2)
    print(
        f"resnet50: R(m) + marginal costs {1e3 * statistics.median(cost_t):.3f} ms; "
        f"λ solve {1e3 * statistics.median(solve_t):.3f} ms median "
        f"({statistics.mean(removed):.1f} units removed per step at rate {100 * rate:.3f} %)"
    )
    # A big step: 5 % of the MACs at once.
    t1 = time.perf_counter()
    sol = solve_budget(cm, scores, keep, budget * 0.95, graph.unit_group, inter)
    print(
        f"resnet50: one step removing 5 % of the MACs ({sol.removed} units): "
        f"{1e3 * (time.perf_counter() - t1):.1f} ms"
    )
    state = scores.numel() * 8 + graph.num_units * 4
    print(f"resnet50: pruner state {state / 1024:.0f} KiB (one float64 score + one mask per unit)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    demo_step_overhead()
    resnet50_solve()
