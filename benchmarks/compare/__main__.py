"""`python -m benchmarks.compare`: the comparison of taperprune with what users would pick
instead, from the same pretrained weights at equal optimizer steps (docs/BENCHMARKS.md).

Run it from the repository root, in the project's virtualenv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from taperprune.errors import TaperpruneError
from taperprune.run.config import split_csv

app = typer.Typer(add_completion=False, help=__doc__)
console = Console()


def _numbers(text: str, kind: type, what: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(s) for s in split_csv(text))
    except ValueError:
        raise TaperpruneError(f"{what} must be comma-separated numbers, got {text!r}") from None


@app.command()
def bench(
    out: Annotated[
        str, typer.Option(help="Bench directory (results.csv, table.md, pareto.png).")
    ] = "runs/bench",
    nets: Annotated[
        str,
        typer.Option(
            help="Nets, comma-separated: name, name:key=value, or path/file.py:function[:k=v]."
        ),
    ] = "demo_cnn,resnet20",
    data: Annotated[str, typer.Option(help="Data spec (as for prune).")] = "fashion-mnist",
    budgets: Annotated[
        str, typer.Option(help="MAC fractions, comma-separated.")
    ] = "0.5,0.25,0.125,0.0625,0.03125",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
    methods: Annotated[
        str,
        typer.Option(
            help="Methods, comma-separated, or 'all' (every method but tp_l1_layer, which "
            "equals uniform_width below its max pruning ratio: name it to run it)."
        ),
    ] = "all",
    views: Annotated[
        str, typer.Option(help="per-budget, curve, steps (comma-separated).")
    ] = "per-budget,curve",
    curve_methods: Annotated[
        str, typer.Option(help="Baselines of the curve view.")
    ] = "tp_l1_global,uniform_width",
    sweep_steps: Annotated[
        str, typer.Option(help="Step budgets of the steps view.")
    ] = "400,1000,2000",
    sweep_budget: Annotated[float, typer.Option(help="MAC fraction of the steps view.")] = 0.03125,
    sweep_methods: Annotated[
        str, typer.Option(help="Methods of the steps view.")
    ] = "taperprune,tp_l1_global",
    pretrain_epochs: Annotated[float, typer.Option(help="Pretraining of each net and seed.")] = 2.0,
    taper_epochs: Annotated[float, typer.Option(help="taperprune's taper.")] = 1.0,
    finetune_epochs: Annotated[float, typer.Option(help="Fine-tune per snapshot.")] = 1.0,
    train_limit: Annotated[int | None, typer.Option(help="Use only N training examples.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Use only N test examples.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "cpu",
    weights: Annotated[
        str | None,
        typer.Option(help="Start every net from these weights (file or torchvision name)."),
    ] = None,
    max_pruning_ratio: Annotated[
        str | None,
        typer.Option(
            help="Torch-Pruning's max_pruning_ratio: r for every net, or net=r,… per net "
            "(others keep the table in config.py; docs/BASELINES.md)."
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    quick: Annotated[
        bool, typer.Option(help="Tiny data and steps, one seed: checks the harness, nothing else.")
    ] = False,
) -> None:
    """Compare taperprune, its ablations, Torch-Pruning's methods and uniform width."""
    import torch

    from taperprune.run.config import RunConfig

    from .config import METHODS, BenchConfig, parse_max_ratios, quick_config
    from .harness import Bench
    from .table import write_summary

    if threads:
        torch.set_num_threads(threads)
    train = RunConfig(
        pretrain_epochs=pretrain_epochs,
        taper_epochs=taper_epochs,
        finetune_epochs=finetune_epochs,
        train_limit=train_limit,
        test_limit=test_limit,
        device=device,
        weights=weights,
    )
    cfg = BenchConfig(
        nets=split_csv(nets),
        data=data,
        budgets=_numbers(budgets, float, "--budgets"),
        seeds=_numbers(seeds, int, "--seeds"),
        methods=METHODS if methods == "all" else split_csv(methods),
        views=split_csv(views),
        curve_methods=split_csv(curve_methods),
        sweep_steps=_numbers(sweep_steps, int, "--sweep-steps"),
        sweep_budget=sweep_budget,
        sweep_methods=split_csv(sweep_methods),
        out=out,
        train=train,
        max_pruning_ratio=parse_max_ratios(max_pruning_ratio or ""),
    )
    if quick:
        cfg = quick_config(cfg)
    rows = Bench(cfg).run()
    for path in write_summary(rows, Path(cfg.out)):
        console.print(f"wrote {path}")


def main() -> None:
    """User errors print one line and exit 2, as `taperprune` does."""
    try:
        app(standalone_mode=False)
    except TaperpruneError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
