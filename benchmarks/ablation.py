"""Ablations of the method on one setting, all from the same pretrained weights.

    .venv/bin/python benchmarks/ablation.py --out runs/ablation [--seeds 0] [--quick]

Prints a markdown table: accuracy (at the snapshot / after its fine-tune) per budget for
the default method and each variant (MAC-unaware price, BN-|γ| scores, fixed linear
taper, one-shot), plus the MACs reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from taperprune.pipeline import run_prune
from taperprune.train import RunConfig

VARIANTS: dict[str, dict[str, object]] = {
    "taperprune (adaptive, Taylor / marginal MACs)": {},
    "MAC-unaware price (every channel costs 1)": {"price": "uniform"},
    "BN-|γ| scores": {"score": "bn_gamma"},
    "fixed linear taper": {"schedule": "linear"},
    "one-shot (λ rule), then fine-tune": {"schedule": "oneshot"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--model", default="demo_cnn")
    ap.add_argument("--budgets", default="0.5,0.25,0.125,0.0625,0.03125")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--pretrain-epochs", type=float, default=2.0)
    ap.add_argument("--taper-epochs", type=float, default=1.0)
    ap.add_argument("--finetune-epochs", type=float, default=1.0)
    ap.add_argument("--only", default=None, help="comma-separated variant indices")
    ap.add_argument("--quick", action="store_true", help="tiny data: checks the script runs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    console = Console(stderr=True)
    root = Path(args.out)
    limits = {"train_limit": 1024, "test_limit": 256} if args.quick else {}
    budgets = tuple(args.budgets.split(","))
    rows = []
    names = list(VARIANTS)
    if args.only:
        names = [names[int(i)] for i in args.only.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        base = RunConfig(
            model=args.model,
            data=args.data,
            budgets=budgets,
            seed=seed,
            pretrain_epochs=args.pretrain_epochs,
            taper_epochs=args.taper_epochs,
            finetune_epochs=args.finetune_epochs,
            **limits,
        )  # type: ignore[arg-type]
        # One pretraining per seed; every variant starts from these weights.
        pre = dataclasses.replace(
            base,
            out=str(root / f"seed{seed}" / "pretrain"),
            budgets=(budgets[0],),
            finetune_epochs=0.0,
        )
        if not (root / f"seed{seed}" / "pretrain" / "base" / "model.safetensors").exists():
            run_prune(pre, console=console, overwrite=True)
        weights = str(root / f"seed{seed}" / "pretrain" / "base" / "model.safetensors")
        for i, name in enumerate(names):
            cfg = dataclasses.replace(
                base, out=str(root / f"seed{seed}" / f"v{i}"), weights=weights, **VARIANTS[name]
            )  # type: ignore[arg-type]
            t0 = time.perf_counter()
            res = run_prune(cfg, console=console, overwrite=True)
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "base_acc": res.base_acc,
                    "seconds": time.perf_counter() - t0,
                    "snapshots": [
                        dataclasses.asdict(s) | {"frac": s.macs / res.full_macs}
                        for s in res.snapshots
                    ],
                }
            )
            (root / "results.json").write_text(json.dumps(rows, indent=1))
    header = "| variant | " + " | ".join(f"{float(b):.4g}" for b in budgets) + " |"
    print(header)
    print("|---" * (len(budgets) + 1) + "|")
    for r in rows:
        cells = [
            f"{s['acc_at_snapshot']:.2f} / **{s['acc_finetuned']:.2f}**" for s in r["snapshots"]
        ]
        print(f"| {r['variant']} (seed {r['seed']}) | " + " | ".join(cells) + " |")
    print()
    print(
        "MACs reached (% of full): "
        + "; ".join(
            f"{r['variant']}: " + ", ".join(f"{100 * s['frac']:.2f}" for s in r["snapshots"])
            for r in rows
        )
    )
    print(f"base accuracy: {rows[0]['base_acc']:.2f}%" if rows else "no rows")


if __name__ == "__main__":
    main()
