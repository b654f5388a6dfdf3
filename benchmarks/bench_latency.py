"""CPU latency of the product's own snapshots against their MAC reduction (issue 15, item 3).

Every net is pruned by `TaperPruner` with `PrunerConfig()` defaults, only `round_to`
varied (1 and 8), down to 50 % and 25 % of its MACs. Training is not the point here,
latency is: the pruner is driven by a short taper (`--taper-steps` steps of the default
adaptive schedule after `--warmup-steps` warm-up steps; one SGD step per pruner step) on
synthetic data — Gaussian-noise images, random labels, random-init weights — so its
scores are real Taylor scores from real gradients and its widths are the ones the
default price and solve produce. The unpruned net and each snapshot are exported with
`taperprune.export.export_onnx` and timed with `taperprune.latency` in eager PyTorch and
in onnxruntime at batch 1 and 32, with a fixed thread count. Configurations are
interleaved (unpruned, round_to 1, round_to 8, in alternating order) and each
measurement is repeated `--repeats` times; the median of the repeats is kept.

Pruning and export run first, on one thread; timing waits (`--wait-quiet`) for the
1-minute load to fall below 1, and a round during which other processes took
`--busy` cores or more (read from /proc/stat) is measured again (`--redo` times at most).

The same run times a large fp32 matmul in PyTorch (the machine's measured peak, in
G MAC/s) and single conv layers in both runtimes, so each net's achieved G MAC/s can be
read against what the machine does.

    .venv/bin/python benchmarks/bench_latency.py --models demo_cnn,resnet50,mobilenet_v2 \\
        --wait-quiet 600                                           # ~12 min on 2 cores
    .venv/bin/python benchmarks/bench_latency.py --models vgg16 --runs-large 3 --append \\
        --wait-quiet 300                                           # ~12 min more
    .venv/bin/python benchmarks/bench_latency.py --models demo_cnn --runs 5 --repeats 1 \\
        --csv /tmp/latency.csv --md /tmp/latency.md                # a quick try
    .venv/bin/python benchmarks/bench_latency.py --md-only         # the table from the CSV

Results go to `docs/bench/latency.csv` (a row per measurement, written as soon as it is
taken, so a partial run leaves its figures) and `docs/bench/latency.md`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taperprune.cost import count_macs
from taperprune.export import export_onnx
from taperprune.latency import onnx_latency, onnx_session, torch_latency
from taperprune.machine_load import OthersMeter
from taperprune.models import build_model, default_input_shape
from taperprune.pruner import TaperPruner
from taperprune.settings import PrunerConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "docs" / "bench" / "latency.csv"
DEFAULT_MD = ROOT / "docs" / "bench" / "latency.md"
PEAK_N = 2048  # the peak: a PEAK_N³ fp32 matmul
# A cell (net, batch) whose unpruned model does more MACs than this is timed with
# `--runs-large` runs and one warm-up run (VGG-16 at batch 32: ~0.5 T MACs, seconds a run).
LARGE_MACS = 20e9

FIELDS = [
    "kind",  # "net" (a model's latency) or "kernel" (the peak matmul, single conv layers)
    "net",
    "input",
    "round_to",
    "target",  # requested fraction of the MACs; 1 for the unpruned net
    "macs",  # per sample
    "mac_reduction",
    "runtime",
    "batch",
    "threads",
    "runs",  # timed runs per repeat
    "repeats",
    "median_ms",  # median over the repeats of each repeat's median
    "repeat_medians_ms",
    "p90_ms",  # median over the repeats of each repeat's p90
    "speedup",
    "speedup_per_mac_reduction",
    "gmacs_per_s",  # achieved: macs × batch / median
    "peak_gmacs_per_s",  # the PEAK_N³ matmul in torch, same threads, same run
    "conv_layers",
    "conv_mult8",  # fraction of conv output widths that are multiples of 8
    "conv_mult16",  # ... of 16 (onnxruntime's NCHWc block on AVX-512)
    "conv_min_width",
    "taper_steps",  # pruner steps the snapshot took (warm-up included)
    "load1",  # 1-minute load average when the cell started
    "others_cores",  # CPU cores other processes used in the kept rounds, at most (0 = quiet)
    "rounds_redone",  # rounds measured again because other processes ran during them
    "timestamp",
    "versions",  # torch and onnxruntime
]


def load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return math.nan


def others_now(seconds: float = 3.0) -> float:
    meter = OthersMeter()
    time.sleep(seconds)
    return meter.cores() or 0.0


def wait_quiet(limit_s: float, below: float = 1.0, every_s: float = 30.0) -> float:
    """Wait (at most `limit_s`) until the 1-minute load is below `below`; the last load read."""
    deadline = time.monotonic() + limit_s
    load = load1()
    while load >= below and time.monotonic() < deadline:
        print(f"load {load:.2f} ≥ {below}: waiting {every_s:.0f} s", flush=True)
        time.sleep(every_s)
        load = load1()
    print(f"load {load:.2f}: starting", flush=True)
    return load


def wait_others(limit_s: float, below: float = 0.25) -> float:
    """Before each net: wait (at most `limit_s`) until other processes use < `below` cores."""
    deadline = time.monotonic() + limit_s
    used = others_now()
    while used >= below and time.monotonic() < deadline:
        print(f"other processes use {used:.2f} cores: waiting", flush=True)
        time.sleep(10)
        used = others_now()
    return used


# ------------------------------------------------------------------------------ kernels
def median_s(call: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_matmul_ms(threads: int, runs: int = 10) -> float:
    """Median ms of a PEAK_N³ fp32 matmul in PyTorch at `threads` threads."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(PEAK_N, PEAK_N, generator=g)
    b = torch.randn(PEAK_N, PEAK_N, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return median_s(lambda: a @ b, 3, runs) * 1e3
    finally:
        torch.set_num_threads(before)


def onnx_matmul_ms(tmp: Path, threads: int, runs: int = 10) -> float:
    """Median ms of the same matmul in onnxruntime (an ONNX MatMul, one constant operand)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [PEAK_N, PEAK_N])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [PEAK_N, PEAK_N])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / "matmul.onnx"
    onnx.save(model, str(path))
    session = onnx_session(path, threads)
    a = rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32)
    return median_s(lambda: session.run(None, {"A": a}), 3, runs) * 1e3


def kernel_row(
    net: str, shape: str, runtime: str, batch: int, macs: int, ms: float, threads: int, peak: float
) -> dict[str, Any]:
    return {
        "kind": "kernel",
        "net": net,
        "input": shape,
        "runtime": runtime,
        "batch": batch,
        "threads": threads,
        "macs": macs,
        "median_ms": _r(ms),
        "gmacs_per_s": _r(macs * batch / (ms / 1e3) / 1e9, 2),
        "peak_gmacs_per_s": _r(peak, 2),
        "load1": load1(),
        "timestamp": _now(),
    }


def kernels(tmp: Path, threads: int) -> tuple[float, list[dict[str, Any]]]:
    """The peak (G MAC/s of the matmul in torch) and rows for the matmul in both runtimes
    and single convs (56 px, batch 8) in both: what each runtime achieves on one large
    layer, and what a width that is no multiple of 16 costs it."""
    mm = PEAK_N**3
    torch_ms = torch_matmul_ms(threads)
    peak = mm / (torch_ms / 1e3) / 1e9
    rows = [
        kernel_row("matmul 2048³", "", "torch", 1, mm, torch_ms, threads, peak),
        kernel_row(
            "matmul 2048³", "", "onnxruntime", 1, mm, onnx_matmul_ms(tmp, threads), threads, peak
        ),
    ]
    # 3x3 and 1x1 at 256 channels; 3x3 also at 248 (a multiple of 8, not 16) and 252 (of 4).
    for k, c in ((3, 256), (1, 256), (3, 248), (3, 252)):
        conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
        shape = (c, 56, 56)
        macs = c * c * k * k * 56 * 56
        path = tmp / f"conv{k}-{c}.onnx"
        export_onnx(conv, shape, path, check=False)
        for runtime in ("torch", "onnxruntime"):
            lat = (
                torch_latency(conv, shape, 8, threads=threads, warmup=3, runs=10)
                if runtime == "torch"
                else onnx_latency(path, shape, 8, threads=threads, warmup=3, runs=10)
            )
            name = f"conv {k}x{k} {c}→{c}"
            rows.append(
                kernel_row(name, f"{c}x56x56", runtime, 8, macs, lat.median_ms, threads, peak)
            )
    return peak, rows


# ------------------------------------------------------------------------------ pruning
@dataclass
class Variant:
    """The unpruned net or one snapshot."""

    label: str
    model: nn.Module
    round_to: int
    target: float
    macs: int
    steps: int = 0
    onnx: Path | None = None
    widths: list[int] = field(default_factory=list)


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def snapshots(
    base: nn.Module,
    shape: tuple[int, ...],
    num_classes: int,
    fractions: list[float],
    round_to: int,
    args: argparse.Namespace,
) -> list[Variant]:
    """Drive a default `TaperPruner` (only `round_to` set) with SGD steps on synthetic data."""
    torch.manual_seed(0)
    model = copy.deepcopy(base).train()
    example = torch.zeros((1, *shape))
    config = PrunerConfig(round_to=round_to, warmup_steps=args.warmup_steps)
    pruner = TaperPruner(model, example, fractions, config=config, steps=args.taper_steps)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    cap = args.warmup_steps + args.taper_steps + len(fractions) + 10
    steps_at: dict[int, int] = {}
    pruner.on_snapshot = lambda snap: steps_at.__setitem__(snap.target, snap.step)
    step = 0
    while not pruner.done:
        if step >= cap:
            raise RuntimeError(f"round_to={round_to}: the pruner was not done after {cap} steps")
        x = torch.randn((args.train_batch, *shape), generator=g)
        y = torch.randint(0, num_classes, (args.train_batch,), generator=g)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        pruner.step(loss)
        opt.zero_grad(set_to_none=True)
        step += 1
    out = []
    for f, target in zip(fractions, pruner.budgets, strict=True):
        small = pruner.export(f).eval()
        macs = count_macs(small, example)
        out.append(Variant(f"r{round_to}@{f:g}", small, round_to, f, macs, steps_at[target]))
    return out


# ------------------------------------------------------------------------------ timing
def measure(
    v: Variant, shape: tuple[int, ...], runtime: str, batch: int, threads: int, runs: int
) -> tuple[float, float, int]:
    warmup = 1 if runs <= 5 else 3
    if runtime == "torch":
        lat = torch_latency(
            v.model, shape, batch, threads=threads, warmup=warmup, runs=runs, max_seconds=math.inf
        )
    else:
        assert v.onnx is not None
        lat = onnx_latency(
            v.onnx, shape, batch, threads=threads, warmup=warmup, runs=runs, max_seconds=math.inf
        )
    return lat.median_ms, lat.p90_ms, lat.runs


def versions() -> str:
    import onnxruntime

    return f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


class CsvOut:
    def __init__(self, path: Path, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not (append and path.exists())
        self.f = path.open("w" if new else "a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.f, FIELDS)
        if new:
            self.w.writeheader()
            self.f.flush()

    def write(self, row: dict[str, Any]) -> None:
        row = {"versions": versions(), **row}
        self.w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS})
        self.f.flush()


@dataclass
class Net:
    name: str
    shape: tuple[int, ...]
    full: int
    variants: list[Variant]


def prepare_net(name: str, args: argparse.Namespace, tmp: Path) -> Net:
    """The unpruned net and its snapshots (interleaved: each budget, each round_to in
    turn), each exported to ONNX and checked against PyTorch."""
    torch.manual_seed(0)
    shape = tuple(default_input_shape(name))
    num_classes = 10 if name == "demo_cnn" else 1000
    base = build_model(name, num_classes=num_classes).eval()
    full = count_macs(base, torch.zeros((1, *shape)))
    fractions = [float(f) for f in args.fractions.split(",")]
    t0 = time.perf_counter()
    variants = [Variant("unpruned", base, 0, 1.0, full)]
    pruned: dict[int, list[Variant]] = {}
    for r in (int(v) for v in args.round_to.split(",")):
        pruned[r] = snapshots(base, shape, num_classes, fractions, r, args)
    for i in range(len(fractions)):
        for r in pruned:
            variants.append(pruned[r][i])
    print(f"{name}: pruned in {time.perf_counter() - t0:.0f} s", flush=True)
    for i, v in enumerate(variants):
        v.widths = conv_widths(v.model)
        v.onnx = tmp / f"{name}-{i}.onnx"
        check = export_onnx(v.model, shape, v.onnx, check=True)
        assert check is not None and check.passed, check
        m8 = sum(w % 8 == 0 for w in v.widths) / len(v.widths)
        print(
            f"  {v.label}: {v.macs / 1e6:,.1f} M MACs ({full / v.macs:.2f}× fewer), "
            f"steps {v.steps}; conv widths ×8: {m8:.0%}, min {min(v.widths)}",
            flush=True,
        )
    return Net(name, shape, full, variants)


def time_net(net: Net, args: argparse.Namespace, out: CsvOut, peak: float) -> None:
    """Every runtime and batch; within each, `args.repeats` interleaved rounds."""
    name, shape, full, variants = net.name, net.shape, net.full, net.variants
    shape_s = "x".join(map(str, shape))
    for runtime in args.runtimes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            large = full * batch > LARGE_MACS
            runs = args.runs_large if large else args.runs
            cell_load = load1()
            meds: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            p90s: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            timed: dict[int, int] = {}
            others = 0.0  # the most any kept round saw
            redone = 0
            t1 = time.perf_counter()
            for rep in range(args.repeats):
                # ABBA: reversing the order every other repeat cancels a linear drift.
                order = list(range(len(variants)))
                order = order if rep % 2 == 0 else order[::-1]
                for attempt in range(args.redo + 1):
                    meter = OthersMeter()
                    got = [
                        measure(variants[i], shape, runtime, batch, args.threads, runs)
                        for i in order
                    ]
                    used = meter.cores() or 0.0
                    if used < args.busy or attempt == args.redo:
                        break
                    # Another process ran during this round: wait for quiet and redo it.
                    redone += 1
                    print(f"    round {rep + 1}: other processes used {used:.2f} cores; redo")
                    wait_others(args.wait_net)
                others = max(others, used)
                for i, (med, p90, n) in zip(order, got, strict=True):
                    meds[i].append(med)
                    p90s[i].append(p90)
                    timed[i] = n
            base_ms = statistics.median(meds[0])
            for i, v in enumerate(variants):
                ms = statistics.median(meds[i])
                red = full / v.macs
                speed = base_ms / ms
                out.write(
                    {
                        "kind": "net",
                        "net": name,
                        "input": shape_s,
                        "round_to": v.round_to or "",
                        "target": v.target,
                        "macs": v.macs,
                        "mac_reduction": _r(red),
                        "runtime": runtime,
                        "batch": batch,
                        "threads": args.threads,
                        "runs": timed[i],
                        "repeats": args.repeats,
                        "median_ms": _r(ms),
                        "repeat_medians_ms": ";".join(f"{m:.3f}" for m in meds[i]),
                        "p90_ms": _r(statistics.median(p90s[i])),
                        "speedup": _r(speed),
                        "speedup_per_mac_reduction": _r(speed / red),
                        "gmacs_per_s": _r(v.macs * batch / (ms / 1e3) / 1e9, 2),
                        "peak_gmacs_per_s": _r(peak, 2),
                        "conv_layers": len(v.widths),
                        "conv_mult8": _r(sum(w % 8 == 0 for w in v.widths) / len(v.widths)),
                        "conv_mult16": _r(sum(w % 16 == 0 for w in v.widths) / len(v.widths)),
                        "conv_min_width": min(v.widths),
                        "taper_steps": v.steps or "",
                        "load1": cell_load,
                        "others_cores": _r(others, 2),
                        "rounds_redone": redone,
                        "timestamp": _now(),
                    }
                )
            print(
                f"  {runtime} b{batch}: "
                + ", ".join(
                    f"{v.label} {statistics.median(meds[i]):.2f} ms" for i, v in enumerate(variants)
                )
                + f" ({time.perf_counter() - t1:.0f} s, load {cell_load:.2f}, "
                f"other processes {others:.2f} cores)",
                flush=True,
            )


# ------------------------------------------------------------------------------ table
def _f(x: str, nd: int = 2) -> str:
    return f"{float(x):.{nd}f}" if x not in ("", None) else ""


def _label(r: dict[str, str]) -> str:
    tgt = float(r["target"])
    return "unpruned" if tgt == 1 else f"{tgt:.0%}, round_to {r['round_to']}"


def markdown(csv_path: Path) -> str:
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    nets = [r for r in rows if r["kind"] == "net"]
    kernels = [r for r in rows if r["kind"] == "kernel"]
    stamps = sorted(r["timestamp"] for r in rows if r["timestamp"])
    vers = sorted({r.get("versions") or "" for r in rows} - {""})
    threads = sorted({r["threads"] for r in rows})
    lines = [
        f"Measured {stamps[0]} to {stamps[-1]}, {platform.machine()}, {', '.join(vers)}, "
        f"{'/'.join(threads)} threads."
        if stamps
        else "",
        "",
        f"Generated by `benchmarks/bench_latency.py` from `{csv_path.name}`. ms: median over "
        "the repeats of each repeat's median; speed-up: against the unpruned net in the same "
        "runtime and batch; ratio: speed-up ÷ MAC reduction; G MAC/s achieved = MACs × "
        "batch / median; load: 1-minute load average when the cell began; others: CPU cores "
        "other processes used (from /proc/stat), at most, in the rounds kept; redone: rounds "
        "measured again because others used ≥ 0.3 cores during them.",
        "",
    ]
    if kernels:
        lines += [
            "| kernel | runtime | batch | threads | median ms | G MAC/s | others | at |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in kernels:
            lines.append(
                f"| {r['net']} | {r['runtime']} | {r['batch']} | {r['threads']} "
                f"| {_f(r['median_ms'])} | {_f(r['gmacs_per_s'], 1)} | {_f(r['others_cores'])} "
                f"| {r['timestamp'][11:16]} |"
            )
        lines.append("")
    # Condensed: one row per net and snapshot, one column per runtime and batch.
    cells = sorted(
        {(r["runtime"], int(r["batch"])) for r in nets}, key=lambda c: (c[0] != "torch", c[1])
    )
    by: dict[tuple[str, str, str], dict[tuple[str, int], dict[str, str]]] = {}
    for r in nets:
        by.setdefault((r["net"], r["target"], r["round_to"]), {})[
            (r["runtime"], int(r["batch"]))
        ] = r
    head = " | ".join(f"{rt} b{b}" for rt, b in cells)
    lines += [
        "ms, speed-up (ratio) per runtime and batch:",
        "",
        f"| net | snapshot | MACs | MAC red. | widths ×8 / ×16 | min width | {head} |",
        "|---|---|---|---|---|---|" + "---|" * len(cells),
    ]
    for (net, _, _), got in by.items():
        r = next(iter(got.values()))
        parts = []
        for c in cells:
            x = got.get(c)
            if x is None:
                parts.append("")
            elif float(x["target"]) == 1:
                parts.append(f"{_f(x['median_ms'])}")
            else:
                parts.append(
                    f"{_f(x['median_ms'])}, {_f(x['speedup'])}× "
                    f"({_f(x['speedup_per_mac_reduction'])})"
                )
        lines.append(
            f"| {net} | {_label(r)} | {int(r['macs']) / 1e6:,.1f} M | {_f(r['mac_reduction'])}× "
            f"| {float(r['conv_mult8']):.0%} / {float(r['conv_mult16']):.0%} "
            f"| {r['conv_min_width']} | " + " | ".join(parts) + " |"
        )
    lines += [
        "",
        "Every measurement:",
        "",
        "| net | snapshot | MACs | MAC red. | runtime | batch | runs×repeats | ms | repeats' ms "
        "| speed-up | ratio | G MAC/s (peak) | load | others | redone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in nets:
        lines.append(
            f"| {r['net']} | {_label(r)} | {int(r['macs']) / 1e6:,.1f} M "
            f"| {_f(r['mac_reduction'])}× | {r['runtime']} | {r['batch']} "
            f"| {r['runs']}×{r['repeats']} | {_f(r['median_ms'])} "
            f"| {r['repeat_medians_ms'].replace(';', ' / ')} | {_f(r['speedup'])}× "
            f"| {_f(r['speedup_per_mac_reduction'])} "
            f"| {_f(r['gmacs_per_s'], 1)} ({_f(r['peak_gmacs_per_s'], 1)}) "
            f"| {_f(r['load1'])} | {_f(r['others_cores'])} | {r.get('rounds_redone') or 0} |"
        )
    return "\n".join(lines) + "\n"


def add_pruning_args(ap: argparse.ArgumentParser) -> None:
    """The options of `snapshots`: how the default pruner is driven on synthetic data."""
    ap.add_argument("--warmup-steps", type=int, default=5, help="pruner warm-up steps")
    ap.add_argument("--taper-steps", type=int, default=20, help="taper steps (schedule steps)")
    ap.add_argument("--train-batch", type=int, default=2, help="synthetic batch per SGD step")
    ap.add_argument("--lr", type=float, default=0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo_cnn,resnet50,mobilenet_v2,vgg16")
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--round-to", default="1,8")
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per repeat")
    ap.add_argument(
        "--runs-large", type=int, default=5, help=f"runs where MACs × batch > {LARGE_MACS:.0e}"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_pruning_args(ap)
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        help="seconds to wait, after pruning and before timing, for load < 1",
    )
    ap.add_argument(
        "--wait-net",
        type=float,
        default=120,
        help="seconds to wait, before each net's timing, for other processes to use < 0.25 cores",
    )
    ap.add_argument(
        "--busy",
        type=float,
        default=0.3,
        help="a round during which other processes used this many cores is redone",
    )
    ap.add_argument("--redo", type=int, default=2, help="redos per round at most")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--md", type=Path, default=DEFAULT_MD)
    ap.add_argument("--append", action="store_true", help="add to an existing CSV")
    ap.add_argument("--md-only", action="store_true", help="only write the table from the CSV")
    args = ap.parse_args()
    if args.md_only:
        args.md.write_text(markdown(args.csv), encoding="utf-8")
        print(f"wrote {args.md}")
        return

    import onnxruntime

    torch.set_num_threads(args.threads)
    start_load = load1()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; load {start_load}",
        flush=True,
    )
    out = CsvOut(args.csv, args.append)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        # Pruning and export need no quiet machine; one thread keeps them from suffering
        # (and causing) oversubscription while other processes run.
        torch.set_num_threads(1)
        nets = []
        for name in args.models.split(","):
            nets.append(prepare_net(name, args, tmp))
            print(f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        torch.set_num_threads(args.threads)
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet)
        meter = OthersMeter()
        peak, rows = kernels(tmp, args.threads)
        others = meter.cores() or 0.0
        for row in rows:
            row["others_cores"] = _r(others, 2)
            out.write(row)
            print(f"kernel {row['net']} {row['runtime']}: {row['gmacs_per_s']} G MAC/s")
        print(f"peak (torch matmul {PEAK_N}³): {peak:.1f} G MAC/s", flush=True)
        for net in nets:
            if args.wait_net > 0:
                wait_others(args.wait_net)
            time_net(net, args, out, peak)
            print(f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        end_ms = torch_matmul_ms(args.threads)
        row = kernel_row(
            "matmul 2048³ (at the end)", "", "torch", 1, PEAK_N**3, end_ms, args.threads, peak
        )
        out.write(row)
        print(f"peak at the end: {row['gmacs_per_s']} G MAC/s", flush=True)
    out.f.close()
    args.md.write_text(markdown(args.csv), encoding="utf-8")
    print(f"wrote {args.csv} and {args.md} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
