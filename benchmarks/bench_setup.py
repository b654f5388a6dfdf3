"""Setup cost of `TaperPruner(model, x, budgets)` against Torch-Pruning's own graph build.

    .venv/bin/python benchmarks/bench_setup.py               # resnet50, mobilenet_v2, demo_cnn
    git show HEAD:src/taperprune/surgery.py > /tmp/old_surgery.py
    .venv/bin/python benchmarks/bench_setup.py --alt /tmp/old_surgery.py   # and that one too

For each model: Torch-Pruning's `DependencyGraph().build_dependency`, taperprune's
`build_graph`, `check_surgery` (on that graph) and `TaperPruner(model, x, [0.5])` (graph,
cost model, surgery check and masks), as medians of `--repeats` interleaved rounds in one
process, and the ratio TaperPruner / Torch-Pruning build. `--alt FILE` loads another version
of `taperprune/surgery.py` (e.g. the committed one, as above) and times it in the same
rounds as the current one, so both variants see the same machine load.

`--threads` defaults to 1: a busy machine with several intra-op threads makes every forward
pass erratically slow (threads spinning at barriers), and ratios measured that way say more
about the load than about the code.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
import torch_pruning as tp
import torchvision
from torch import nn

import taperprune.pruner as pruner_mod
from taperprune import surgery
from taperprune.graph import build_graph
from taperprune.models import demo_cnn


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


CASES = {
    "resnet50": Case("resnet50", lambda: torchvision.models.resnet50(), (1, 3, 224, 224)),
    "mobilenet_v2": Case(
        "mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), (1, 3, 224, 224)
    ),
    "demo_cnn": Case("demo_cnn", demo_cnn, (1, 1, 28, 28)),
}


def load_surgery(path: Path) -> ModuleType:
    """Another version of taperprune/surgery.py, importable beside the installed one."""
    name = "taperprune._bench_alt_surgery"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def use_surgery(module: ModuleType) -> None:
    """Make TaperPruner use `module`'s check_surgery and remove_masked."""
    pruner_mod.check_surgery = module.check_surgery
    pruner_mod.remove_masked = module.remove_masked


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_case(case: Case, variants: dict[str, ModuleType], repeats: int) -> None:
    torch.manual_seed(0)
    model = case.build()  # training mode, as a training loop would pass it
    x = torch.randn(case.input_shape)

    def tp_build() -> None:
        was = model.training
        tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
        model.train(was)  # torch-pruning leaves the model in eval mode

    def taper_pruner() -> None:
        pruner_mod.TaperPruner(model, x, [0.5]).finalize()  # finalize: take the masks off

    graph = build_graph(model, x)
    tp_build()  # warm-up (allocator, lazy init)
    times: dict[str, list[float]] = {"tp": [], "graph": []}
    for v in variants:
        times[f"check/{v}"] = []
        times[f"pruner/{v}"] = []
    for _ in range(repeats):
        times["tp"].append(timed(tp_build))
        times["graph"].append(timed(lambda: build_graph(model, x)))
        for v, module in variants.items():
            use_surgery(module)
            times[f"check/{v}"].append(timed(partial(module.check_surgery, model, graph)))
            times[f"pruner/{v}"].append(timed(taper_pruner))
    use_surgery(surgery)
    med = {k: statistics.median(t) for k, t in times.items()}
    shape = "x".join(str(s) for s in case.input_shape[1:])
    print(
        f"{case.name} @{shape}: Torch-Pruning build {med['tp']:.3f} s, "
        f"build_graph {med['graph']:.3f} s ({med['graph'] / med['tp']:.2f}x)"
    )
    for v in variants:
        check, prun = med[f"check/{v}"], med[f"pruner/{v}"]
        print(
            f"  {v:>8} surgery: check_surgery {check:.3f} s ({check / med['tp']:.2f}x), "
            f"TaperPruner {prun:.3f} s, TaperPruner / TP build = {prun / med['tp']:.2f}x"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CASES), help="comma-separated: " + ",".join(CASES))
    ap.add_argument("--repeats", type=int, default=5, help="rounds per measurement (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: default)")
    ap.add_argument("--alt", type=Path, help="another surgery.py to time beside the current one")
    ap.add_argument("--alt-name", default="old", help="its label in the output")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    variants: dict[str, ModuleType] = {"current": surgery}
    if args.alt is not None:
        variants[args.alt_name] = load_surgery(args.alt)
    print(
        f"torch {torch.__version__}, torch-pruning {tp.__version__}, "
        f"{torch.get_num_threads()} thread(s), medians of {args.repeats}"
    )
    for name in args.models.split(","):
        bench_case(CASES[name], variants, args.repeats)


if __name__ == "__main__":
    main()
