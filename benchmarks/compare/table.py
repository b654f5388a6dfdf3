"""results.csv rows of `taperprune bench` → mean ± std tables (markdown) and a Pareto plot.

"Within noise": two means whose difference is at most twice its standard error,
|Δ| ≤ 2·√(s₁²/n₁ + s₂²/n₂) (a rough 95 % interval; with 3 seeds it is only a guide).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from taperprune.files import atomic_path, write_atomic  # noqa: E402

Row = dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One (view, net, method, budget) over its seeds."""

    mean: float
    std: float  # nan with one seed
    n: int
    macs_fraction: float  # mean MACs reached / full MACs
    steps: float  # mean optimizer steps

    def text(self) -> str:
        return f"{self.mean:.2f}" + ("" if math.isnan(self.std) else f" ± {self.std:.2f}")


def _cell(rows: Sequence[Row]) -> Cell:
    accs = [float(r["acc"]) for r in rows]
    std = statistics.stdev(accs) if len(accs) > 1 else math.nan
    return Cell(
        statistics.fmean(accs),
        std,
        len(accs),
        statistics.fmean(r["macs"] / r["full_macs"] for r in rows),
        statistics.fmean(float(r["steps"]) for r in rows),
    )


def within_noise(a: Cell, b: Cell) -> bool:
    """True when the two means differ by no more than twice the difference's standard error."""
    if a.n < 2 or b.n < 2:
        return True  # one seed: no estimate of the noise, so no difference is established
    return abs(a.mean - b.mean) <= 2.0 * math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


def column(row: Row) -> float:
    """A table column: the MAC budget, or in the steps view the nominal step budget."""
    return float(row["step_budget"]) if row["view"] == "steps" else float(row["budget"])


def grouped_rows(rows: Sequence[Row]) -> dict[tuple[str, str], dict[str, dict[float, list[Row]]]]:
    """(view, net) → method → column (see `column`) → rows, methods in first-seen order."""
    grouped: dict[tuple[str, str], dict[str, dict[float, list[Row]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        grouped[(r["view"], r["net"])][r["method"]][column(r)].append(r)
    for (view, net), methods in grouped.items():
        # The curve view compares against taperprune's one run of the per-budget view.
        ours = grouped.get(("per-budget", net), {}).get("taperprune")
        if view == "curve" and ours and "taperprune" not in methods:
            grouped[(view, net)] = {"taperprune": ours, **methods}
    return grouped


def cells(rows: Sequence[Row]) -> dict[tuple[str, str], dict[str, dict[float, Cell]]]:
    """(view, net) → method → column (see `column`) → Cell, methods in first-seen order."""
    return {
        key: {m: {b: _cell(rs) for b, rs in per.items()} for m, per in methods.items()}
        for key, methods in grouped_rows(rows).items()
    }


def column_heads(columns: Sequence[float], view: str) -> list[str]:
    return [f"{b:.0f} steps" if view == "steps" else f"{100 * b:.4g} %" for b in columns]


def best_baseline(per: dict[str, dict[float, Cell]], budget: float) -> tuple[str, Cell] | None:
    """The baseline with the highest mean at `budget`: what users would pick instead, not
    one of taperprune's own variants. Baselines with a noise estimate (≥ 2 seeds) come
    first, so a partial one-seed row does not hide a judged comparison."""
    others = [
        (m, c[budget]) for m, c in per.items() if not m.startswith("taperprune") and budget in c
    ]
    seeded = [mc for mc in others if mc[1].n >= 2]
    return max(seeded or others, key=lambda mc: mc[1].mean) if others else None


def _verdict(per: dict[str, dict[float, Cell]], budget: float) -> str:
    """taperprune against the best baseline (non-taperprune method) at `budget`."""
    if "taperprune" not in per or budget not in per["taperprune"]:
        return ""
    ours = per["taperprune"][budget]
    found = best_baseline(per, budget)
    if found is None:
        return ""
    name, best = found
    delta = ours.mean - best.mean
    noise = " (within noise)" if within_noise(ours, best) else ""
    return f"{delta:+.2f} vs {name}{noise}"


def _accuracy_table(per: dict[str, dict[float, Cell]], view: str) -> list[str]:
    budgets = sorted({b for c in per.values() for b in c}, reverse=view != "steps")
    curve = view == "curve" and len(per) > 1
    lines = ["| method | " + " | ".join(column_heads(budgets, view)) + " |"]
    lines.append("|---" * (len(budgets) + 1) + "|")
    best = {b: max((c[b] for c in per.values() if b in c), key=lambda c: c.mean) for b in budgets}
    for method, row in per.items():
        texts = []
        for b in budgets:
            if b not in row:
                texts.append("")
                continue
            c = row[b]
            t = c.text()
            if c is best[b]:
                t = f"**{t}**"
            elif within_noise(c, best[b]):
                t = f"{t} ≈"
            texts.append(t)
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    lines.append(
        "| *taperprune − best baseline* | " + " | ".join(_verdict(per, b) for b in budgets) + " |"
    )
    # Steps of the runs compared: taperprune's per snapshot, or a baseline's in the curve
    # view (where taperprune's one run makes every budget).
    others = [c for m, c in per.items() if m != "taperprune"]
    steps = others[0] if curve and others else per.get("taperprune") or next(iter(per.values()))
    lines.append(
        f"| *optimizer steps{' per baseline run' if curve else ''}* | "
        + " | ".join(f"{steps[b].steps:.0f}" if b in steps else "" for b in budgets)
        + " |"
    )
    return lines


def budget_error_table(rows: Sequence[Row]) -> list[str]:
    """Per net and method: MACs reached against the target, worst case over budgets and seeds."""
    by: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        by[(r["net"], r["method"])].append(r)
    lines = [
        "| net | method | all ≤ target | largest error (% of target) "
        "| largest error (channels' worth) |",
        "|---|---|---|---|---|",
    ]
    for (net, method), rs in by.items():
        # Each column's worst case on its own: the largest error in % is at a low budget,
        # the largest in channels' worth usually at a high one.
        pct = max((float(r["budget_error_pct"]) for r in rs), key=abs)
        chans = max((r["budget_error_macs"] / r["one_channel_macs"] for r in rs), key=abs)
        over = all(r["macs"] <= r["target_macs"] for r in rs)
        lines.append(
            f"| {net} | {method} | {'yes' if over else '**no**'} | {pct:+.2f} | {chans:+.2f} |"
        )
    return lines


def overhead_table(rows: Sequence[Row]) -> list[str]:
    """Wall time of taperprune's one run against each baseline's runs for the same budgets.

    Each run's time is the median over seeds of the same run (same method, budget and
    steps), then summed over the budgets: a run that waited out a pause of the bench or
    shared its core with another job counts as one outlier seed, not as the total.
    """
    per_slot: dict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in rows:
        if r["view"] == "per-budget":
            slot = re.sub(r"seed\d+", "seed*", r["run_id"])
            per_slot[(r["net"], r["method"])][slot][int(r["seed"])] = r["run_seconds"]
    lines = [
        "| net | method | wall time for all budgets, s (median over seeds, per run) |",
        "|---|---|---|",
    ]
    for (net, method), slots in per_slot.items():
        total = sum(statistics.median(by_seed.values()) for by_seed in slots.values())
        lines.append(f"| {net} | {method} | {total:.0f} |")
    return lines


def latency_table(rows: Sequence[Row]) -> list[str]:
    by: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["view"] == "per-budget":
            by[(r["net"], r["method"])][float(r["budget"])].append(float(r["latency_ms"]))
    budgets = sorted({b for per in by.values() for b in per}, reverse=True)
    lines = ["| net | method | " + " | ".join(f"{100 * b:.4g} %" for b in budgets) + " |"]
    lines.append("|---" * (len(budgets) + 2) + "|")
    for (net, method), per in by.items():
        cells_ = [f"{statistics.median(per[b]):.2f}" if b in per else "" for b in budgets]
        lines.append(f"| {net} | {method} | " + " | ".join(cells_) + " |")
    return lines


def headline(rows: Sequence[Row], view: str = "per-budget") -> list[str]:
    """Per net and budget of `view`: taperprune against the best baseline there, and a
    tally of where it is ahead or behind outside noise (the README's table)."""
    lines = [
        "| net | budget | taperprune | best baseline | Δ | seeds |",
        "|---|---|---|---|---|---|",
    ]
    ahead = behind = total = unjudged = 0
    alone: list[str] = []  # taperprune's budgets that no baseline has run yet
    for (v, net), per in cells(rows).items():
        if v != view or "taperprune" not in per:
            continue
        for b in sorted(per["taperprune"], reverse=True):
            found = best_baseline(per, b)
            if found is None:
                alone.append(f"{net} {100 * b:.4g} %")
                continue
            ours, (name, best) = per["taperprune"][b], found
            delta = ours.mean - best.mean
            if min(ours.n, best.n) < 2:  # no estimate of the noise: not judged
                unjudged += 1
                mark = "one seed, not judged"
            else:
                level = within_noise(ours, best)
                total += 1
                ahead += not level and delta > 0
                behind += not level and delta < 0
                mark = "level (within noise)" if level else ("**ahead**" if delta > 0 else "behind")
            lines.append(
                f"| {net} | {100 * b:.4g} % | {ours.text()} | {name} {best.text()} | "
                f"{delta:+.2f}, {mark} | {min(ours.n, best.n)} |"
            )
    lines += [
        "",
        f"Ahead outside noise at {ahead} of {total} (net, budget) points, behind outside "
        f"noise at {behind}, level at {total - ahead - behind}"
        + (f"; {unjudged} with one seed not judged" if unjudged else "")
        + (f"; no baseline yet at {', '.join(alone)}" if alone else "")
        + ".",
    ]
    return lines


def means_table(rows: Sequence[Row], net: str, view: str) -> list[str]:
    """One (net, view) as in table.md: method × column, mean ± std, the verdict and steps."""
    per = cells(rows).get((view, net))
    if not per:
        raise ValueError(f"no rows for {net} in the {view} view")
    return _accuracy_table(per, view)


def seed_table(rows: Sequence[Row], net: str, view: str) -> list[str]:
    """One (net, view) as method × column, each cell "mean (seed 0/seed 1/…)" in seed
    order, "mean (seeds 0/2: a/b)" where a seed is missing: what each seed gave, for the
    prose that discusses single seeds (the curve view shows taperprune's one run, as in
    `cells`)."""
    per_method = grouped_rows(rows).get((view, net))
    if not per_method:
        raise ValueError(f"no rows for {net} in the {view} view")
    if "taperprune" in per_method:
        per_method = {"taperprune": per_method["taperprune"], **per_method}
    cols = sorted({b for per in per_method.values() for b in per}, reverse=view != "steps")
    lines = ["| method | " + " | ".join(column_heads(cols, view)) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for method, per in per_method.items():
        texts = []
        for b in cols:
            seeded = sorted((int(r["seed"]), float(r["acc"])) for r in per.get(b, []))
            text = f"{statistics.fmean(a for _, a in seeded):.2f}" if seeded else ""
            if len(seeded) > 1:
                seeds = [s for s, _ in seeded]
                gaps = seeds != list(range(len(seeds)))
                which = "seeds " + "/".join(map(str, seeds)) + ": " if gaps else ""
                text += f" ({which}" + "/".join(f"{a:.2f}" for _, a in seeded) + ")"
            texts.append(text)
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    return lines


def markdown(rows: Sequence[Row]) -> str:
    parts = [
        "Top-1 accuracy (%) after fine-tuning, mean ± std over seeds. **Bold**: best mean; "
        "≈: within noise of the best (|Δ| ≤ 2 standard errors of the difference).",
        "",
    ]
    for (view, net), per in cells(rows).items():
        title = f"### {net}: {view}"
        if view == "steps":
            fraction = next(float(r["budget"]) for r in rows if r["view"] == "steps")
            title += f" ({100 * fraction:.4g} % of the MACs)"
        parts += [title, "", *_accuracy_table(per, view), ""]
    parts += ["### Budget error", "", *budget_error_table(rows), ""]
    parts += ["### Wall time (per-budget view)", "", *overhead_table(rows), ""]
    parts += ["### CPU latency of the pruned models, batch 32, ms (median)", ""]
    parts += [*latency_table(rows), ""]
    return "\n".join(parts)


def plot_bench_pareto(rows: Sequence[Row], path: Path) -> Path:
    """Accuracy (mean ± std) against MACs, one panel per (view, net), one line per method.

    The steps view has one MAC budget, so it is in the tables only.
    """
    groups = cells([r for r in rows if r["view"] != "steps"])
    ncols = min(2, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.0 * ncols, 4.8 * nrows), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
    # One colour per method across every panel.
    methods = list(dict.fromkeys(m for per in groups.values() for m in per))
    for ax, ((view, net), per) in zip(axes.flat, groups.items(), strict=False):
        ticks: set[float] = set()
        for method, row in per.items():
            i = methods.index(method)
            bs = sorted(row)
            ticks.update(100 * b for b in bs)
            ax.errorbar(
                [100 * row[b].macs_fraction for b in bs],
                [row[b].mean for b in bs],
                yerr=[0.0 if math.isnan(row[b].std) else row[b].std for b in bs],
                marker="o" if method.startswith("taperprune") else "s",
                linewidth=2.2 if method == "taperprune" else 1.0,
                capsize=3,
                color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
                label=method,
            )
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [f"{t:.3g}" for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("MACs (% of the unpruned net)")
        ax.set_ylabel("top-1 after fine-tune (%)")
        ax.set_title(f"{net}: {view}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def write_summary(rows: Sequence[Row], out: Path) -> list[Path]:
    """table.md, headline.md and pareto.png in `out`; returns the paths written."""
    if not rows:
        return []
    table, head = out / "table.md", out / "headline.md"
    write_atomic(table, markdown(rows))
    write_atomic(head, "\n".join(headline(rows)) + "\n")
    return [table, head, plot_bench_pareto(rows, out / "pareto.png")]
