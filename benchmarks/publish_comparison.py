"""Assemble the published comparison (docs/bench/) from the bench directories it came from.

    .venv/bin/python benchmarks/publish_comparison.py runs/bench-demo runs/bench-resnet20 \
        runs/bench-resnet20-static runs/bench-narrow --out docs/bench

The default price changed during the benchmark (marginal MACs now → marginal MACs at full
width, `price: static`). Rows made before the change are relabelled so that every label
says what ran: `taperprune` is always the current default; the old default's rows become
`taperprune_marginal_price`, and the ablations that ran on top of it get
` (marginal price)` appended. Rows are told apart by the `price` each run's config.yaml
records, not by when they ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.compare.results import complete_seeds, read_rows, run_dir, write_rows  # noqa: E402
from benchmarks.compare.table import write_summary  # noqa: E402


def run_price(bench: Path, row: dict[str, Any]) -> str | None:
    """The `price` of the taperprune run that made `row` (None for a baseline)."""
    if not row["method"].startswith("taperprune"):
        return None
    config = run_dir(bench, row["run_id"]) / "config.yaml"
    return str(yaml.safe_load(config.read_text())["price"])


def relabel(bench: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        price = run_price(bench, r)
        if price == "macs":
            if r["method"] in ("taperprune", "taperprune_static_price"):
                r = r | {"method": "taperprune_marginal_price"}
            elif r["method"] != "taperprune_marginal_price":
                r = r | {"method": f"{r['method']} (marginal price)"}
        elif price == "static" and r["method"] == "taperprune_static_price":
            r = r | {"method": "taperprune"}
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("benches", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument(
        "--complete-seeds",
        action="store_true",
        help="publish only the seeds that have run every cell their net's lowest seed has "
        "(for tables published while a bench is still running)",
    )
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for bench in args.benches:
        rows += relabel(bench, read_rows(bench / "results.csv"))
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
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "results.csv", rows)
    for path in write_summary(rows, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
