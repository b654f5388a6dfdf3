"""`taperprune macs | prune | demo | report | export | bench-latency`: parse into configs,
call the library or the application, print results. Nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .budget import NS, amount, format_macs
from .cli_inspect import check, macs
from .errors import RunInterrupted, TaperpruneError
from .run.flags import with_setting_flags

# Nothing above imports torch: `taperprune --help` answers at once. Commands import
# what they need when they run.

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Prune whole channels of a CNN to an exact MAC budget while fine-tuning.",
)
# soft_wrap: a line of results stays one line in a log file (tables keep their width).
console = Console(soft_wrap=True)
_DEBUG = {"on": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False) -> None:
    _DEBUG["on"] = debug


app.command()(macs)
app.command()(check)


def _speedups(metrics: Path) -> dict[str, float]:
    """Each runtime's speed-up in a snapshot's metrics.json ({} where none was measured)."""
    import json

    try:
        speed = json.loads(metrics.read_text()).get("speedup") or {}
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in speed.items()}


def _print_result(result: Any) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    table = Table(title=f"taperprune — {result.out}")
    for col in (
        {"MACs": "budget", "ns": "budget (latency)"}.get(result.unit, f"budget ({result.unit})"),
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
            _budget_text(s.target, result.unit),
            format_macs(s.macs),
            f"{100 * s.macs / result.full_macs:.2f}%",
            f"{s.params:,}",
            f"{s.acc_at_snapshot:.2f}%",
            f"{s.acc_finetuned:.2f}%",
            str(s.step),
        )
    console.print(table)
    _print_speedups(result)
    console.print(f"total time {result.seconds:.0f} s; files in {result.out}/")


def _budget_text(target: int, unit: str) -> str:
    return amount(target, NS) if unit == "ns" else format_macs(target)


def _print_speedups(result: Any) -> None:
    """Every runtime's measured speed-up per snapshot; a slowdown in red."""
    speeds = {
        s.label: _speedups(Path(result.out) / "snapshots" / s.label / "metrics.json")
        for s in result.snapshots
    }
    keys = list(dict.fromkeys(k for sp in speeds.values() for k in sp))
    if not keys:
        return
    table = Table(title="speed-up over unpruned (median latency)")
    table.add_column("budget", justify="right")
    table.add_column("MACs ÷", justify="right")
    for k in keys:
        table.add_column(k.replace("/b", " b"), justify="right")
    for s in result.snapshots:
        cells = []
        for k in keys:
            x = speeds[s.label].get(k)
            cells.append("–" if x is None else f"[red]{x:.2f}×[/red]" if x < 1 else f"{x:.2f}×")
        table.add_row(
            _budget_text(s.target, result.unit), f"{result.full_macs / s.macs:.2f}×", *cells
        )
    console.print(table)
    if any(x < 1 for sp in speeds.values() for x in sp.values()):
        console.print("[red]red[/red]: slower than unpruned (the reason is in report.html)")


def prune(
    config: Annotated[
        Path | None, typer.Option(help="YAML file of settings; flags override it.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run directory.")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the interrupted run in this directory (its config.yaml)."),
    ] = None,
    **settings: Any,
) -> None:
    """Prune a model to each budget in one run; writes snapshots and a trace to --out.

    Every setting of config.yaml is a flag: a flag overrides the file, the file the default.
    """
    from .run.config import load_config

    given = [f"--{k.replace('_', '-')}" for k, v in settings.items() if v is not None]
    if resume is not None:
        if given or config is not None:
            raise TaperpruneError(
                f"--resume continues with the run's own config.yaml; drop {given or '--config'} "
                f"(edit {resume / 'config.yaml'} to change a setting, e.g. a lower learning rate)"
            )
        from .run.pipeline import resume_run

        _print_result(resume_run(resume, console=console))
        return
    cfg = load_config(config, settings)  # every setting checked before torch is imported
    from .run.pipeline import run_prune

    _print_result(run_prune(cfg, console=console, overwrite=overwrite))


app.command()(with_setting_flags(prune))


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run directory.")] = "runs/demo",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = True,
    train_limit: Annotated[int | None, typer.Option(help="Use only N training examples.")] = None,
) -> None:
    """The 5-minute tour: demo CNN on Fashion-MNIST, pruned to 50/25/12.5 % of its MACs."""
    from .run.config import RunConfig
    from .run.pipeline import run_prune

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
    from .run.report import write_report

    if out is None and len(runs) > 1:
        out = Path("report")
    console.print(f"report: {write_report(runs, out)}")


def _snapshot_dir(target: Path, budget: str | None) -> Path:
    """A snapshot directory from a run directory + budget, or a snapshot directory itself;
    checked: no file it holds is a symbolic link, its metrics.json fits its schema."""
    from .run.rundir import check_links, find_snapshot, is_run, read_metrics, read_run

    if is_run(target):
        if budget is None:
            run = read_run(target)
            raise TaperpruneError(
                f"{target} is a run with snapshots {[s.label for s in run.snapshots]}; "
                "choose one with --budget (e.g. --budget 0.25)"
            )
        return find_snapshot(read_run(target), budget).directory
    if (target / "plan.json").is_file():
        check_links(target)
        if (target / "metrics.json").is_file():
            read_metrics(target / "metrics.json")
        return target
    raise TaperpruneError(
        f"{target} is neither a run directory (config.yaml) nor a snapshot directory (plan.json)"
    )


_TRUST = typer.Option(
    "--trust-model-file",
    help="Allow the snapshot's plan to name a Python file (file.py:function) that is imported "
    "and run: only for snapshots you made yourself.",
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
    trust_model_file: Annotated[bool, _TRUST] = False,
) -> None:
    """Export a snapshot and check the file reproduces the PyTorch model."""
    from .export import FORMATS, check_loaded, export_onnx, export_torchscript
    from .files import write_json
    from .plan import load, read_plan, save_with_plan
    from .run.rundir import inside, read_metrics

    if format not in FORMATS:
        raise TaperpruneError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    snap = _snapshot_dir(run, budget)
    model = load(snap, trust_model_file=trust_model_file)
    shape = tuple(read_plan(snap)["input_shape"])
    default = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
    name = default.get(format, f"{snap.name}-with-plan.safetensors")
    # --out is the user's choice; the default stays in the snapshot, through no link.
    target = out or inside(snap, name, field="export target")
    if format == "onnx":
        check = export_onnx(model, shape, target)
    elif format == "torchscript":
        check = export_torchscript(model, shape, target)
    else:
        save_with_plan(target, model, read_plan(snap))
        check = check_loaded(model, shape, target, trust_model_file=trust_model_file)
    assert check is not None
    metrics_path = inside(snap, "metrics.json")
    if metrics_path.is_file():
        metrics = read_metrics(metrics_path)
        checks = metrics.setdefault("export_checks", {})
        checks[format] = check.as_dict() | {"path": str(target)}
        write_json(metrics_path, metrics)
    console.print(f"wrote {target}")
    console.print(check.describe())
    if not check.passed:
        raise TaperpruneError(f"the exported {format} file does not reproduce the model")


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
    trust_model_file: Annotated[bool, _TRUST] = False,
) -> None:
    """CPU latency (median, p90) of a model, a snapshot or a whole run, with speed-ups."""
    from .latency import RUNTIMES, default_threads
    from .run.config import split_csv
    from .run.timing import models_to_time, time_models

    runtimes = split_csv(runtime)
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise TaperpruneError(f"--runtime must be among {', '.join(RUNTIMES)}, got {runtime!r}")
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise TaperpruneError(f"--batch must be integers like 1,32, got {batch!r}") from None
    threads = threads or default_threads()
    items, shape = models_to_time(target, input, num_classes, trust_model_file=trust_model_file)
    console.print(
        f"threads: {threads} (torch.set_num_threads / onnxruntime intra-op), input "
        f"{'x'.join(map(str, shape))}, {warmup} warm-up + {runs} timed runs each"
    )
    table = Table(title=f"latency — {target}")
    for col in ("model", "MACs", "runtime", "batch", "median ms", "p90 ms", "speed-up", "MACs ÷"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for row in time_models(items, shape, runtimes, batches, threads, warmup, runs):
        table.add_row(
            row.name,
            format_macs(row.macs) if row.macs else "–",
            row.runtime,
            str(row.batch),
            f"{row.median_ms:.3f}",
            f"{row.p90_ms:.3f}",
            f"{row.speedup:.2f}×",
            f"{row.mac_reduction:.2f}×" if row.macs else "–",
        )
    console.print(table)


def _one_line(exc: BaseException) -> str:
    """The message on one line, safe from rich markup (a path may hold '[...]')."""
    return escape(" ".join(str(exc).split()))


def main() -> None:
    """Entry point: user errors print one message and exit 2, without a traceback. The
    message is one line whatever the terminal's width (soft wrap: never broken by rich)."""
    try:
        app(standalone_mode=False)
    except RunInterrupted as exc:
        console.print(f"[yellow]stopped:[/yellow] {_one_line(exc)}", soft_wrap=True)
        sys.exit(130)
    except TaperpruneError as exc:
        if _DEBUG["on"]:
            raise
        console.print(f"[red]error:[/red] {_one_line(exc)}", soft_wrap=True)
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
