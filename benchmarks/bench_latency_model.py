"""How well the latency model predicts what it prices (issue 15): predicted vs measured
latency of random masked networks, and the timer's own spread beside it.

For each net, runtime and batch the latency model is measured from scratch (no cache:
per-layer tables and the calibration on nine whole networks, as a latency-budget run does), then
`--configs` random masked configurations are pruned physically and timed end to end with
the same meter. Each group keeps a random share of its channels, uniform in [0.15, 1];
with `--round-to 8` the share is rounded to a multiple of 8 channels, as a run with
`--round-to 8` would produce. Every configuration is timed in `--repeats` passes over
all of them (the meter a run's snapshot check uses: the median of three half-second
windows); measured is their mean, the error |predicted − measured| / measured, and the
timer spread (max − min) / mean of the passes: the floor under any model's error here.

Timing wants a quiet machine: the bench waits (`--wait-quiet`) until other processes use
less than 0.25 core, and re-times a configuration measured while others ran.

    .venv/bin/python benchmarks/bench_latency_model.py                 # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_latency_model.py --nets demo_cnn --configs 5 \\
        --csv /tmp/lm.csv --md /tmp/lm.md                              # a quick try
    .venv/bin/python benchmarks/bench_latency_model.py --md-only

Rows go to `docs/bench/latency_model.csv` as they are measured; the summary table (median
and 90th-percentile error per net, runtime, batch, round_to) to `latency_model.md`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_latency import versions, wait_others
from taperprune.blocks import group_widths
from taperprune.constraint import _rank_within
from taperprune.graph import build_graph
from taperprune.latency_meter import LatencySettings, RuntimeMeter
from taperprune.latency_table import build_latency_model
from taperprune.machine_load import BUSY_CORES, OthersMeter
from taperprune.models import build_model
from taperprune.surgery import remove_masked

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "docs" / "bench" / "latency_model.csv"
DEFAULT_MD = ROOT / "docs" / "bench" / "latency_model.md"
NETS = {"demo_cnn": (1, 28, 28), "resnet18": (3, 112, 112)}
FIELDS = [
    "net",
    "input",
    "runtime",
    "batch",
    "threads",
    "round_to",
    "config",
    "widths",
    "predicted_ms",
    "measured_ms",
    "error",
    "repeat_spread",  # (max − min) / mean of the configuration's `--repeats` timings
    "tables_ms",  # Σ layer tables before the calibration's scale (to refit it offline)
    "activations",
    "calibration",  # base_ms / per_act_ms / scale of this model
    "model_seconds",
    "others_cores",
    "when",
    "versions",
]


def random_keep(graph: Any, gen: torch.Generator, round_to: int) -> torch.Tensor:
    """Each group keeps its first units up to a random share in [0.15, 1] of its channels,
    on a multiple of `round_to` channels where the group is wider than that."""
    sizes = torch.tensor([g.size for g in graph.groups], dtype=torch.float64)
    share = 0.15 + 0.85 * torch.rand(len(sizes), generator=gen, dtype=torch.float64)
    channels = (share * sizes).round().clamp(min=1)
    if round_to > 1:
        rounded = (channels / round_to).round().clamp(min=1) * round_to
        channels = torch.where(sizes > round_to, rounded, sizes)
    units = torch.zeros(len(sizes), dtype=torch.float64).index_add_(
        0, graph.unit_group, torch.ones(graph.num_units, dtype=torch.float64)
    )
    per_unit = sizes / units
    keep_units = (channels / per_unit).round().clamp(min=1).long()
    return _rank_within(graph.unit_group) < keep_units[graph.unit_group]


def measure_net(name: str, args: argparse.Namespace, write: Any) -> None:
    shape = NETS[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    x = torch.zeros((1, *shape))
    graph = build_graph(model, x)
    for runtime in args.runtimes:
        models = {}
        for batch in args.batches:  # each batch size has its own tables and calibration
            settings = LatencySettings(runtime, batch, args.threads)
            wait_others(args.wait_quiet)
            t0 = time.perf_counter()
            lm = build_latency_model(model, x, graph, settings, cache=False)
            models[batch] = (settings, lm, time.perf_counter() - t0)
        for round_to in args.round_to:
            gen = torch.Generator().manual_seed(1000 + round_to)
            nets = []
            for i in range(args.configs):
                keep = random_keep(graph, gen, round_to)
                nets.append((i, keep, remove_masked(model, graph, keep, verify=False)))
            for settings, lm, seconds in models.values():
                # Every configuration timed once per pass, `--repeats` passes: the two
                # timings of one network lie minutes apart, so their spread is the timer's
                # own, slow drift included, measured in the same run as the error.
                times: dict[int, list[float]] = {i: [] for i, _, _ in nets}
                busy = 0.0
                for _ in range(args.repeats):
                    for i, _, small in nets:
                        ms, others = _timed(small, shape, settings, args)
                        times[i].append(ms)
                        busy = max(busy, others)
                for i, keep, _ in nets:
                    measured = statistics.mean(times[i])
                    row = _row(name, shape, settings, round_to, i, graph, keep, lm)
                    row.update(
                        measured_ms=round(measured, 5),
                        error=round(abs(row["predicted_ms"] - measured) / measured, 5),
                        repeat_spread=round((max(times[i]) - min(times[i])) / measured, 5),
                        model_seconds=round(seconds, 1),
                        others_cores=round(busy, 2),
                    )
                    write(row)


def _timed(
    small: torch.nn.Module,
    shape: tuple[int, ...],
    settings: LatencySettings,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """(ms, others' cores meanwhile) by the meter a run's snapshot check uses (the median
    of its windows), re-timed (twice at most) when others ran."""
    meter = RuntimeMeter(settings)
    for _attempt in range(3):
        load = OthersMeter()  # others' CPU use during the timing itself
        ms = meter.net_ms(small, shape)
        busy = load.cores() or 0.0
        if busy < BUSY_CORES:
            break
        wait_others(args.wait_quiet)
    return ms, busy


def _row(
    name: str,
    shape: tuple[int, ...],
    settings: LatencySettings,
    round_to: int,
    i: int,
    graph: Any,
    keep: torch.Tensor,
    lm: Any,
) -> dict[str, Any]:
    tables_ms, acts = lm.parts(keep)
    return {
        "net": name,
        "input": "x".join(map(str, shape)),
        "runtime": settings.runtime,
        "batch": settings.batch,
        "threads": settings.resolved_threads(),
        "round_to": round_to,
        "config": i,
        "widths": "-".join(map(str, group_widths(graph, keep).tolist())),
        "predicted_ms": round(lm.total(keep) / 1e6, 5),
        "tables_ms": round(tables_ms, 5),
        "activations": round(acts),
        "calibration": f"{lm.base_ms:.5g}/{lm.per_act_ms:.4g}/{lm.scale:.4g}",
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(),
    }


def markdown(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    cells: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in rows:
        key = (r["net"], r["input"], r["runtime"], r["batch"], r["threads"], r["round_to"])
        cells.setdefault(key, []).append(r)
    out = [
        "| net | input | runtime | batch | threads | round_to | configs | median error | "
        "90th pct error | worst | timer spread | model built in |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, rs in cells.items():
        errs = sorted(float(r["error"]) for r in rs)
        p90 = errs[min(len(errs) - 1, int(0.9 * len(errs)))]
        spreads = [float(r["repeat_spread"]) for r in rs if r.get("repeat_spread")]
        spread = f"{100 * statistics.median(spreads):.1f} %" if spreads else "–"
        out.append(
            "| " + " | ".join(key) + f" | {len(rs)} | {100 * statistics.median(errs):.1f} % | "
            f"{100 * p90:.1f} % | {100 * errs[-1]:.1f} % | {spread} | "
            f"{rs[0]['model_seconds']} s |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="demo_cnn,resnet18")
    p.add_argument("--runtimes", default="onnxruntime,torch")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--round-to", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="passes over the configurations")
    p.add_argument("--wait-quiet", type=float, default=600.0, help="seconds to wait at most")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--md", type=Path, default=DEFAULT_MD)
    p.add_argument("--append", action="store_true")
    p.add_argument("--md-only", action="store_true")
    args = p.parse_args()
    if not args.md_only:
        args.runtimes = args.runtimes.split(",")
        args.batches = [int(b) for b in args.batches.split(",")]
        args.round_to = [int(r) for r in args.round_to.split(",")]
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        new = not (args.append and args.csv.exists())
        with args.csv.open("w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()

            def write(row: dict[str, Any]) -> None:
                writer.writerow(row)
                f.flush()
                print(
                    f"{row['net']} {row['runtime']} b{row['batch']} r{row['round_to']} "
                    f"#{row['config']}: predicted {row['predicted_ms']} ms, measured "
                    f"{row['measured_ms']} ms ({100 * row['error']:.1f} %)",
                    flush=True,
                )

            for name in args.nets.split(","):
                measure_net(name, args, write)
    args.md.write_text(markdown(args.csv))
    print(args.md.read_text())


if __name__ == "__main__":
    main()
