"""Foundation costs: graph + cost-model build, R(m) and ∇R, and the masks' training overhead.

.venv/bin/python benchmarks/bench_foundation.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from taperprune.cost import build_cost_model, macs_and_marginals
from taperprune.graph import build_graph
from taperprune.masks import ChannelMasks
from taperprune.models import demo_cnn


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graph_build() -> None:
    model = torchvision.models.resnet50()
    x = torch.zeros(1, 3, 224, 224)
    ours = median_time(lambda: build_cost_model(build_graph(model, x)), 3)
    tp_only = median_time(
        lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False), 3
    )
    print(
        f"resnet50 @224: graph + cost model {ours:.2f} s (torch-pruning's build alone "
        f"{tp_only:.2f} s)"
    )
    graph = build_graph(model, x)
    cm = build_cost_model(graph)
    keep = torch.rand(graph.num_units) > 0.3
    t = median_time(lambda: macs_and_marginals(cm, keep), 200)
    print(f"resnet50: R(m) + marginal costs for {graph.num_units} units: {1e3 * t:.3f} ms")


def mask_overhead(steps: int = 40, batch: int = 128) -> None:
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def per_step(model: nn.Module) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        times = []
        for i in range(steps + 10):
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 10:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    torch.manual_seed(0)
    plain_model = demo_cnn()
    affine_model = demo_cnn()
    ChannelMasks(affine_model, build_graph(affine_model, torch.zeros(1, 1, 28, 28)))
    # The alternative: multiply every BN output by a per-channel mask vector.
    output_model = demo_cnn()
    for m in output_model.modules():
        if isinstance(m, nn.BatchNorm2d):
            v = torch.ones(m.num_features, requires_grad=True)
            m.register_forward_hook(lambda _m, _i, out, v=v: out * v.view(1, -1, 1, 1))
    # Interleaved rounds, so that warm-up and clock changes hit every variant alike.
    rounds: dict[str, list[float]] = {"plain": [], "affine": [], "output": []}
    for _ in range(3):
        rounds["plain"].append(per_step(plain_model))
        rounds["affine"].append(per_step(affine_model))
        rounds["output"].append(per_step(output_model))
    plain, affine, output = (statistics.median(rounds[k]) for k in ("plain", "affine", "output"))
    print(
        f"demo_cnn batch {batch} training step: plain {1e3 * plain:.1f} ms, masks in the BN "
        f"affine {1e3 * affine:.1f} ms ({100 * (affine / plain - 1):+.1f} %), masks on the BN "
        f"output {1e3 * output:.1f} ms ({100 * (output / plain - 1):+.1f} %)"
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    graph_build()
    mask_overhead()
