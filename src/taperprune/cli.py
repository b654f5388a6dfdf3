"""`taperprune macs | prune | demo`: parse into configs, call the library, print results."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml
from rich.console import Console
from rich.table import Table

from .budget import format_macs
from .errors import TaperpruneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Prune whole channels of a CNN to an exact MAC budget while fine-tuning.",
)
console = Console()
_DEBUG = {"on": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False) -> None:
    _DEBUG["on"] = debug


@app.command()
def macs(
    model: Annotated[
        str, typer.Argument(help="Built-in or torchvision name, or file.py:function.")
    ],
    input: Annotated[
        str | None, typer.Option("--input", help="Input shape CxHxW (default: the model's usual).")
    ] = None,
    num_classes: Annotated[int, typer.Option(help="Classifier outputs.")] = 1000,
) -> None:
    """Count MACs per layer (conv: k·k·H·W·Cin/groups·Cout, linear: in·out)."""
    from .cost import build_cost_model, layer_macs
    from .graph import build_graph
    from .models import BUILTIN, build_model, default_input_shape, parse_input_shape

    shape = parse_input_shape(input) if input else default_input_shape(model)
    if model in BUILTIN and num_classes == 1000 and model != "alexnet_bvlc":
        num_classes = 10
    net = build_model(model, num_classes=num_classes, in_channels=shape[0])
    x = torch.zeros((1, *shape))
    graph = build_graph(net, x)
    cm = build_cost_model(graph)
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    per_layer = layer_macs(cm, keep)
    total = sum(per_layer.values())
    modules = dict(net.named_modules())
    table = Table(title=f"{model} @ {'x'.join(map(str, shape))}")
    for col in ("layer", "type", "in → out", "output", "MACs", "share", "prunable"):
        table.add_column(col, justify="right" if col in ("MACs", "share") else "left")
    for name, lay in graph.layers.items():
        if lay.kind == "norm" or name not in per_layer:
            continue
        out_shape = "x".join(map(str, lay.output_shapes[0][1:])) if lay.output_shapes else "-"
        prunable = "out" if bool((lay.out_units >= 0).any()) else "-"
        table.add_row(
            name,
            type(modules[name]).__name__,
            f"{len(lay.in_units)} → {len(lay.out_units)}",
            out_shape,
            f"{per_layer[name]:,}",
            f"{100 * per_layer[name] / total:.1f}%",
            prunable,
        )
    console.print(table)
    console.print(
        f"total: [bold]{total:,}[/bold] MACs ({format_macs(total)}MAC) in {len(per_layer)} layers; "
        f"{len(graph.groups)} prunable channel groups, {graph.num_units} units"
    )


def _config_from(file: Path | None, overrides: dict[str, Any]) -> Any:
    from .train import RunConfig

    base: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise TaperpruneError(f"cannot read config {file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise TaperpruneError(f"config {file} must be a mapping of settings")
        known = {f.name for f in fields(RunConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise TaperpruneError(
                f"config {file} has unknown settings {unknown}; known: {sorted(known)}"
            )
        base.update(loaded)
    base.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("budgets", "exclude"):
        if isinstance(base.get(key), str):
            base[key] = tuple(s.strip() for s in base[key].split(",") if s.strip())
        elif key in base:
            base[key] = tuple(str(s) for s in base[key])
    return RunConfig(**base)


def _print_result(result: Any) -> None:
    table = Table(title=f"taperprune — {result.out}")
    for col in (
        "budget",
        "MACs",
        "% of full",
        "params",
        "top-1 at snapshot",
        "after fine-tune",
        "step",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        "unpruned",
        format_macs(result.full_macs),
        "100.0%",
        f"{result.full_params:,}",
        f"{result.base_acc:.2f}%",
        "",
        "",
    )
    for s in result.snapshots:
        table.add_row(
            format_macs(s.target),
            format_macs(s.macs),
            f"{100 * s.macs / result.full_macs:.2f}%",
            f"{s.params:,}",
            f"{s.acc_at_snapshot:.2f}%",
            f"{s.acc_finetuned:.2f}%",
            str(s.step),
        )
    console.print(table)
    console.print(f"total time {result.seconds:.0f} s; files in {result.out}/")


@app.command()
def prune(
    model: Annotated[str | None, typer.Option(help="Model name or file.py:function.")] = None,
    data: Annotated[
        str | None,
        typer.Option(help="fashion-mnist | cifar10:/path | imagefolder:/path | synthetic"),
    ] = None,
    budgets: Annotated[
        str | None, typer.Option(help="Decreasing budgets: fractions (0.5,0.25) or MACs (3.87G).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of settings; flags override.")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run directory.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    weights: Annotated[
        str | None, typer.Option(help="Start from these weights (no pretrain).")
    ] = None,
    pretrain_epochs: Annotated[float | None, typer.Option()] = None,
    taper_epochs: Annotated[
        float | None, typer.Option(help="Reach the last budget within.")
    ] = None,
    finetune_epochs: Annotated[float | None, typer.Option(help="Per snapshot.")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="adaptive | linear | exponential | oneshot")
    ] = None,
    tolerance: Annotated[float | None, typer.Option(help="Allowed relative loss rise.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    exclude: Annotated[str | None, typer.Option(help="Layer names/patterns to keep whole.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | auto")] = None,
    amp: Annotated[str | None, typer.Option(help="bf16 | fp16")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Use only N training examples.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Use only N test examples.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
) -> None:
    """Prune a model to each budget in one run; writes snapshots and a trace to --out."""
    from .train import run_prune

    overrides = dict(
        model=model,
        data=data,
        budgets=budgets,
        out=out,
        seed=seed,
        weights=weights,
        pretrain_epochs=pretrain_epochs,
        taper_epochs=taper_epochs,
        finetune_epochs=finetune_epochs,
        schedule=schedule,
        tolerance=tolerance,
        batch_size=batch_size,
        exclude=exclude,
        device=device,
        amp=amp,
        train_limit=train_limit,
        test_limit=test_limit,
    )
    cfg = _config_from(config, overrides)
    _print_result(run_prune(cfg, console=console, overwrite=overwrite))


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run directory.")] = "runs/demo",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = True,
    train_limit: Annotated[int | None, typer.Option(help="Use only N training examples.")] = None,
) -> None:
    """The 5-minute tour: demo CNN on Fashion-MNIST, pruned to 50/25/12.5 % of its MACs."""
    from .train import RunConfig, run_prune

    cfg = RunConfig(out=out, train_limit=train_limit)
    _print_result(run_prune(cfg, console=console, overwrite=overwrite))


def main() -> None:
    """Entry point: user errors print one message and exit 2, without a traceback."""
    try:
        app(standalone_mode=False)
    except TaperpruneError as exc:
        if _DEBUG["on"]:
            raise
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
