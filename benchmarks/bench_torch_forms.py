"""Eager-torch speed-up of the product's snapshots in four inference forms.

Issue 15 asks ResNet-50 at 50 % of the MACs for a speed-up ≥ 0.8 × its MAC reduction in
eager torch at batch 32, which the plain form misses. This times the unpruned net and the
default pruner's 50 % snapshots (round_to 1 and 8, pruned as `bench_latency.py` does) as
they are, in channels_last, with batch norm folded into the convolutions
(`torch.fx.experimental.optimization.fuse`), and both; the rounds are interleaved and
the order reversed every other round, and other processes' CPU use is reported per
timing (stop other jobs first: on 2 cores one busy process spoils eager torch).

    .venv/bin/python benchmarks/bench_torch_forms.py --batch 32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_latency import add_pruning_args, median_s, snapshots  # noqa: E402
from taperprune.machine_load import BUSY_CORES, OthersMeter  # noqa: E402
from taperprune.models import build_model, default_input_shape  # noqa: E402

FORMS = ("plain", "channels_last", "bn_folded", "bn_folded+channels_last")


def forms(model: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """Each form: (the module, whether its input is channels_last)."""
    plain = copy.deepcopy(model).eval()
    folded = fuse(plain)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return {
        "plain": (plain, False),
        "channels_last": (cl, True),
        "bn_folded": (folded, False),
        "bn_folded+channels_last": (folded_cl, True),
    }


def time_ms(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    """Median ms of `model(x)` over `runs`, after one warm-up."""
    with torch.inference_mode():
        return 1000 * median_s(lambda: model(x), warmup=1, runs=runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=0, help="timed runs (0: 5 at batch > 1, else 20)")
    add_pruning_args(ap)
    args = ap.parse_args()
    runs = args.runs or (5 if args.batch > 1 else 20)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = tuple(default_input_shape(args.model))
    base = build_model(args.model, num_classes=1000).eval()
    nets = {"unpruned": base}
    for r in (1, 8):
        snap = snapshots(base, shape, 1000, [args.fraction], r, args)[0]
        nets[f"{args.fraction:g} round_to {r}"] = snap.model
    by_net = {name: forms(m) for name, m in nets.items()}
    torch.set_num_threads(args.threads)
    found: dict[tuple[str, str], list[float]] = {}
    for rnd in range(args.rounds):
        order = list(nets) if rnd % 2 == 0 else list(nets)[::-1]
        for name in order:
            for form, (model, cl) in by_net[name].items():
                x = torch.randn(args.batch, *shape)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                meter = OthersMeter()
                ms = time_ms(model, x, runs)
                others = meter.cores()
                flag = " (busy)" if others is not None and others >= BUSY_CORES else ""
                print(f"round {rnd} {name:18s} {form:24s} {ms:9.2f} ms{flag}", flush=True)
                found.setdefault((name, form), []).append(ms)
    # The first round runs slow everywhere (first touch of every form): median of rounds.
    what = f"{args.model} batch {args.batch}, {args.threads} threads"
    print(f"\n{what}, median of {args.rounds} rounds")
    print("| form | " + " | ".join(nets) + " |")
    print("|---" * (len(nets) + 1) + "|")
    for form in FORMS:
        full = statistics.median(found[("unpruned", form)])
        cells = []
        for name in nets:
            ms = statistics.median(found[(name, form)])
            ratio = full / ms
            cells.append(f"{ms:.0f} ms" + ("" if name == "unpruned" else f", {ratio:.2f}×"))
        print(f"| {form} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
