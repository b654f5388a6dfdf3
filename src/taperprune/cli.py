"""`taperprune macs | prune | demo`: parse into configs, call the library, print results."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml
from rich.console import Console
from rich.table import Table

from .budget import format_macs
from .cost import count_macs
from .errors import TaperpruneError
from .train import split_csv

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
    from .train import config_from_mapping

    base: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise TaperpruneError(f"cannot read config {file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise TaperpruneError(f"config {file} must be a mapping of settings")
        base.update(loaded)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(base, source=f"config {file}" if file else "the flags")


def _print_result(result: Any) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
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
        str | None,
        typer.Option(
            help="Start from these weights (no pretrain): a .safetensors or weights-only .pth "
            "file, or a torchvision weights name (IMAGENET1K_V1, DEFAULT, "
            "VGG16_Weights.IMAGENET1K_V1), downloaded once into torch's hub cache."
        ),
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
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Optimizer steps between checkpoints (0: phase ends only).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the interrupted run in this directory (its config.yaml)."),
    ] = None,
) -> None:
    """Prune a model to each budget in one run; writes snapshots and a trace to --out."""
    given = [k for k, v in locals().items() if k not in ("resume", "overwrite") and v]
    from .pipeline import resume_run, run_prune

    if resume is not None:
        if given:
            raise TaperpruneError(
                f"--resume continues with the run's own config.yaml; drop {given} (edit "
                f"{resume / 'config.yaml'} to change a setting, e.g. a lower learning rate)"
            )
        _print_result(resume_run(resume, console=console))
        return

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
        checkpoint_every=checkpoint_every,
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
    from .pipeline import run_prune
    from .train import RunConfig

    cfg = RunConfig(out=out, train_limit=train_limit)
    _print_result(run_prune(cfg, console=console, overwrite=overwrite))


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write report.html (default: the run; ./report for several)."),
    ] = None,
) -> None:
    """Write report.html and PNG plots; several runs are overlaid on one Pareto plot."""
    from .report import write_report

    if out is None and len(runs) > 1:
        out = Path("report")
    console.print(f"report: {write_report(runs, out)}")


def _snapshot_dir(target: Path, budget: str | None) -> Path:
    """A snapshot directory from a run directory + budget, or a snapshot directory itself."""
    from .rundir import find_snapshot, is_run, read_run

    if is_run(target):
        if budget is None:
            run = read_run(target)
            raise TaperpruneError(
                f"{target} is a run with snapshots {[s.label for s in run.snapshots]}; "
                "choose one with --budget (e.g. --budget 0.25)"
            )
        return find_snapshot(read_run(target), budget).directory
    if (target / "plan.json").is_file():
        return target
    raise TaperpruneError(
        f"{target} is neither a run directory (config.yaml) nor a snapshot directory (plan.json)"
    )


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory (with --budget) or a snapshot.")],
    budget: Annotated[
        str | None, typer.Option(help="Snapshot of the run: 0.25, 25pct or 3.87G.")
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="onnx | torchscript | safetensors")
    ] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: in the snapshot).")
    ] = None,
) -> None:
    """Export a snapshot and check the file reproduces the PyTorch model."""
    from .export import load, read_json, read_plan, save_with_plan, write_json
    from .formats import FORMATS, check_loaded, export_onnx, export_torchscript

    if format not in FORMATS:
        raise TaperpruneError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    snap = _snapshot_dir(run, budget)
    model = load(snap)
    shape = tuple(read_plan(snap)["input_shape"])
    default = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
    target = out or snap / default.get(format, f"{snap.name}-with-plan.safetensors")
    if format == "onnx":
        check = export_onnx(model, shape, target)
    elif format == "torchscript":
        check = export_torchscript(model, shape, target)
    else:
        save_with_plan(target, model, read_plan(snap))
        check = check_loaded(model, shape, target)
    assert check is not None
    metrics_path = snap / "metrics.json"
    if metrics_path.is_file():
        metrics = read_json(metrics_path)
        checks = metrics.setdefault("export_checks", {})
        checks[format] = check.as_dict() | {"path": str(target)}
        write_json(metrics_path, metrics)
    console.print(f"wrote {target}")
    console.print(check.describe())
    if not check.passed:
        raise TaperpruneError(f"the exported {format} file does not reproduce the model")


def _models_to_time(
    target: str, input: str | None, num_classes: int
) -> tuple[list[tuple[str, Any]], tuple[int, ...]]:
    """(name, model or ONNX path) to time, the unpruned reference first where there is one,
    and the input shape: --input, else the one the target was made for."""
    from .export import load, read_plan
    from .latency import onnx_session
    from .models import build_model, default_input_shape, parse_input_shape
    from .rundir import is_run, read_run

    given = parse_input_shape(input) if input else None
    path = Path(target)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise TaperpruneError(f"ONNX file {path} does not exist")
        dims = onnx_session(path, 1).get_inputs()[0].shape[1:]
        if given is None and not all(isinstance(d, int) for d in dims):
            raise TaperpruneError(f"{path} has a dynamic input size; give --input CxHxW")
        return [(path.name, path)], given or tuple(dims)
    if is_run(path):
        run = read_run(path)
        items = [("unpruned", load(path / "base"))]
        items += [(s.label, load(s.directory)) for s in run.snapshots]
        return items, given or tuple(run.base_plan["input_shape"])
    if (path / "plan.json").is_file():
        base = path.parent.parent / "base"
        ref = [("unpruned", load(base))] if (base / "plan.json").is_file() else []
        shape = given or tuple(read_plan(path)["input_shape"])
        return ref + [(path.name, load(path))], shape
    if path.exists():
        raise TaperpruneError(f"{path} is not a run, a snapshot (plan.json) or an .onnx file")
    shape = given or default_input_shape(target)
    return [(target, build_model(target, num_classes=num_classes, in_channels=shape[0]))], shape


@app.command("bench-latency")
def bench_latency(
    target: Annotated[
        str, typer.Argument(help="Model name, file.py:fn, run or snapshot directory, or .onnx.")
    ],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,32",
    runtime: Annotated[str, typer.Option(help="torch, onnxruntime, or both (comma).")] = "torch",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: torch's default here).")
    ] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per measurement.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 5,
    input: Annotated[str | None, typer.Option("--input", help="Input shape CxHxW.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classifier outputs (model names).")] = 1000,
) -> None:
    """CPU latency (median, p90) of a model, a snapshot or a whole run, with speed-ups."""
    import tempfile

    from .formats import export_onnx
    from .latency import RUNTIMES, default_threads, onnx_latency, torch_latency

    runtimes = split_csv(runtime)
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise TaperpruneError(f"--runtime must be among {', '.join(RUNTIMES)}, got {runtime!r}")
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise TaperpruneError(f"--batch must be integers like 1,32, got {batch!r}") from None
    threads = threads or default_threads()
    items, shape = _models_to_time(target, input, num_classes)
    console.print(
        f"threads: {threads} (torch.set_num_threads / onnxruntime intra-op), input "
        f"{'x'.join(map(str, shape))}, {warmup} warm-up + {runs} timed runs each"
    )
    table = Table(title=f"latency — {target}")
    for col in ("model", "MACs", "runtime", "batch", "median ms", "p90 ms", "speed-up", "MACs ÷"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    reference: dict[tuple[str, int], tuple[float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, item in items:
            macs = 0 if isinstance(item, Path) else count_macs(item, torch.zeros((1, *shape)))
            onnx_path = item if isinstance(item, Path) else Path(tmp) / f"{len(reference)}.onnx"
            if "onnxruntime" in runtimes and not isinstance(item, Path):
                export_onnx(item, shape, onnx_path, check=False)
            for rt in runtimes:
                if rt == "torch" and isinstance(item, Path):
                    continue
                for b in batches:
                    m = (
                        torch_latency(item, shape, b, threads=threads, warmup=warmup, runs=runs)
                        if rt == "torch"
                        else onnx_latency(
                            onnx_path, shape, b, threads=threads, warmup=warmup, runs=runs
                        )
                    )
                    ref_ms, ref_macs = reference.setdefault((rt, b), (m.median_ms, macs))
                    table.add_row(
                        name,
                        format_macs(macs) if macs else "–",
                        rt,
                        str(b),
                        f"{m.median_ms:.3f}",
                        f"{m.p90_ms:.3f}",
                        f"{ref_ms / m.median_ms:.2f}×",
                        f"{ref_macs / macs:.2f}×" if macs else "–",
                    )
    console.print(table)


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
        str, typer.Option(help="Nets, comma-separated: name or name:key=value.")
    ] = "demo_cnn,resnet20",
    data: Annotated[str, typer.Option(help="Data spec (as for prune).")] = "fashion-mnist",
    budgets: Annotated[
        str, typer.Option(help="MAC fractions, comma-separated.")
    ] = "0.5,0.25,0.125,0.0625,0.03125",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
    methods: Annotated[str, typer.Option(help="Methods, comma-separated, or 'all'.")] = "all",
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
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    quick: Annotated[
        bool, typer.Option(help="Tiny data and steps, one seed: checks the harness, nothing else.")
    ] = False,
) -> None:
    """Compare taperprune, its ablations, Torch-Pruning's methods and uniform width."""
    from .bench import METHODS, Bench, BenchConfig, quick_config
    from .benchtable import write_summary
    from .train import RunConfig

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
    )
    if quick:
        cfg = quick_config(cfg)
    rows = Bench(cfg).run()
    for path in write_summary(rows, Path(cfg.out)):
        console.print(f"wrote {path}")


def main() -> None:
    """Entry point: user errors print one message and exit 2, without a traceback."""
    from .pipeline import RunInterrupted

    try:
        app(standalone_mode=False)
    except RunInterrupted as exc:
        console.print(f"[yellow]stopped:[/yellow] {exc}")
        sys.exit(130)
    except TaperpruneError as exc:
        if _DEBUG["on"]:
            raise
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:
        # Usage errors (typer's vendored click) know how to show themselves and their code.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
