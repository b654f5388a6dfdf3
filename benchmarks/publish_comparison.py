"""Assemble the published comparison (docs/bench/) from the bench directories it came from.

    .venv/bin/python benchmarks/publish_comparison.py runs/bench-demo runs/bench-resnet20 \
        runs/bench-resnet20-static runs/bench-narrow --out docs/bench

The default price changed during the benchmark (marginal MACs now → marginal MACs at full
width, `price: static`). Rows made before the change are relabelled so that every label
says what ran: `taperprune` is always the current default; the old default's rows become
`taperprune_marginal_price`, and the ablations that ran on top of it get
` (marginal price)` appended. Rows are told apart by the `price` each run's config.yaml
records, not by when they ran.

The same for the width floor and the cap (`max_pruning_ratio`): a `taperprune` row whose
run kept another floor or cap than today's default becomes `taperprune_nofloor` /
`taperprune_nocap` (without it) or `taperprune (width_floor f, max_pruning_ratio r)` (the
settings that differ), and a variant that only set today's defaults becomes `taperprune`.
A (view, net, method, seed, budget) that two benches both hold then is published once.

`--keep NET …` carries those nets' rows over from the published results.csv as they are
(for a regeneration that re-ran only some nets). `--docs README.md docs/BENCHMARKS.md`
regenerates the tables marked in those files (`benchmarks/compare/splice.py`) from the same
rows: the blocks without `from=` when OUT is docs/bench, else those whose `from=` is OUT
as a link from the doc writes it (`from=bench/long` in docs/BENCHMARKS.md for `--out
docs/bench/long`); a doc with no block of OUT is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.compare.config import TAPERPRUNE  # noqa: E402
from benchmarks.compare.results import complete_seeds, read_rows, run_dir, write_rows  # noqa: E402
from benchmarks.compare.splice import splice  # noqa: E402
from benchmarks.compare.table import write_summary  # noqa: E402
from taperprune.files import write_atomic  # noqa: E402
from taperprune.settings import PrunerConfig  # noqa: E402

# The settings a taperprune row is labelled by, each with its value before it existed
# (the runs made then kept it), and the label of a `taperprune` row that ran without it.
LABELLED: dict[str, tuple[float, str]] = {
    "width_floor": (0.0, "taperprune_nofloor"),
    "max_pruning_ratio": (1.0, "taperprune_nocap"),
}
DEFAULTS: dict[str, float] = {k: float(getattr(PrunerConfig(), k)) for k in LABELLED}


def run_config(bench: Path, row: dict[str, Any]) -> dict[str, Any] | None:
    """The config.yaml of the taperprune run that made `row` (None for a baseline)."""
    if not row["method"].startswith("taperprune"):
        return None
    path = run_dir(bench, row["run_id"]) / "config.yaml"
    if not path.is_file():
        sys.exit(
            f"{path} is missing: the row {row['run_id']} of {bench / 'results.csv'} cannot be "
            "labelled by its settings; copy the bench's runs/ along with its results.csv"
        )
    return dict(yaml.safe_load(path.read_text()))


def settings_of(config: dict[str, Any]) -> dict[str, float]:
    """The labelled settings a run kept (their old value where the setting is younger)."""
    return {k: float(config.get(k, before)) for k, (before, _) in LABELLED.items()}


def setting_label(method: str, settings: dict[str, float]) -> str:
    """`taperprune` only for today's defaults: a default row that kept other settings is
    named by them, and a variant that only set today's defaults becomes `taperprune`."""
    other = {k: v for k, v in settings.items() if v != DEFAULTS[k]}
    if method == "taperprune" and other:
        if len(other) == 1:
            ((key, value),) = other.items()
            if value == LABELLED[key][0]:
                return LABELLED[key][1]
        return "taperprune (" + ", ".join(f"{k} {v:g}" for k, v in other.items()) + ")"
    variant = TAPERPRUNE.get(method)
    if variant and not other and set(variant) <= set(LABELLED):
        return "taperprune"
    return method


def once(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (view, net, method, seed, budget, step budget) once: the first bench's row."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        key = tuple(r[k] for k in ("view", "net", "method", "seed", "budget", "step_budget"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def relabel(bench: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        config = run_config(bench, r)
        if config is not None:
            r = r | {"method": setting_label(r["method"], settings_of(config))}
        price = None if config is None else str(config["price"])
        if price == "macs":
            if r["method"] in ("taperprune", "taperprune_static_price"):
                r = r | {"method": "taperprune_marginal_price"}
            elif r["method"] != "taperprune_marginal_price":
                r = r | {"method": f"{r['method']} (marginal price)"}
        elif price == "static" and r["method"] == "taperprune_static_price":
            r = r | {"method": "taperprune"}
        out.append(r)
    return out


MAIN = (Path(__file__).parents[1] / "docs" / "bench").resolve()


def publish_of(doc: Path, out: Path) -> Callable[[str | None], bool]:
    """Whether a marker's `from=` in `doc` (a path as a link from `doc` writes it; None: the
    main publish, docs/bench) names the publish to `out`; one naming a directory that is
    neither `out` nor one that exists is a typo, and is refused."""
    target = out.resolve()

    def ours(origin: str | None) -> bool:
        where = MAIN if origin is None else (doc.parent / origin).resolve()
        if origin is not None and where == MAIN:
            raise ValueError(f"from={origin} is the main publish: leave from= out")
        if where != target and not where.is_dir():
            raise ValueError(f"from={origin}: no such directory next to {doc}")
        return where == target

    return ours


def regenerated(doc: Path, rows: list[dict[str, Any]], out: Path) -> tuple[str, int]:
    """`doc`'s text with `out`'s marked blocks regenerated; a doc that cannot be is one line."""
    try:
        text, count = splice(doc.read_text(encoding="utf-8"), rows, publish_of(doc, out))
    except (OSError, ValueError) as exc:
        sys.exit(f"{doc}: {exc}")
    if not count:
        named = "" if out.resolve() == MAIN else f" with from= naming {out}"
        sys.exit(f"{doc}: no <!-- bench: … -->{named} block to regenerate")
    return text, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("benches", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument(
        "--complete-seeds",
        action="store_true",
        help="publish each method only on the seeds that have run every budget its lowest "
        "seed has (for tables published while a bench is still running)",
    )
    ap.add_argument(
        "--docs",
        type=Path,
        nargs="*",
        default=[],
        help="markdown files whose <!-- bench: … --> blocks are regenerated from the rows "
        "(those naming OUT with from=DIR, or those without from= when OUT is docs/bench)",
    )
    ap.add_argument(
        "--keep",
        nargs="*",
        default=[],
        metavar="NET",
        help="carry these nets' rows over from OUT/results.csv as published (already "
        "labelled) instead of reading them from the benches",
    )
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for bench in args.benches:
        read = [r for r in read_rows(bench / "results.csv") if r["net"] not in args.keep]
        rows += relabel(bench, read)
    kept = [r for r in read_rows(args.out / "results.csv") if r["net"] in args.keep]
    missing = sorted(set(args.keep) - {r["net"] for r in kept})
    if missing:
        sys.exit(f"{args.out / 'results.csv'} has no rows of {', '.join(missing)} to keep")
    rows += kept
    rows = once(rows)
    if args.complete_seeds:
        rows, notes = complete_seeds(rows)
        for note in notes:
            print(note)
    order = {"per-budget": 0, "curve": 1, "steps": 2}

    def rank(method: str) -> int:
        if method == "taperprune":
            return 0
        return 1 if method.startswith("taperprune") else 2

    rows.sort(key=lambda r: (r["net"], order[r["view"]], rank(r["method"])))
    docs = {doc: regenerated(doc, rows, args.out) for doc in args.docs}  # every doc, before writing
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "results.csv", rows)
    for path in write_summary(rows, args.out):
        print(f"wrote {path}")
    for doc, (text, count) in docs.items():
        write_atomic(doc, text)
        print(f"regenerated {count} block(s) in {doc}")


if __name__ == "__main__":
    main()
