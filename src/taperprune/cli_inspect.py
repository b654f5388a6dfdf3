"""`taperprune macs` and `taperprune check`: what a model costs and whether `prune` can take
it, in seconds, nothing trained. Parse, call `inspect_model`, print; torch is imported only
when a command runs."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .budget import amount, budget_resource, format_macs
from .errors import TaperpruneError

if TYPE_CHECKING:
    from torch import nn

    from .inspect_model import CheckReport, LayerRow

console = Console()  # lines wrap at the terminal's width (80 columns when piped)

# `prune`'s defaults: its default data set (Fashion-MNIST) has 10 classes; its default
# budgets (RunConfig's: tests/test_check.py keeps them equal, without importing it here).
DEFAULT_NUM_CLASSES = 10
DEFAULT_BUDGETS = "0.5,0.25,0.125"

_MODEL = typer.Argument(help="Built-in or torchvision name, or file.py:function.")
_INPUT = typer.Option(
    "--input", help="Input shape CxHxW (default: the model's usual, e.g. 3x224x224)."
)
_CLASSES = typer.Option(
    help="Classifier outputs: your data's classes (prune's default data set has 10)."
)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def _load(model: str, input: str | None, num_classes: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The model built as `prune` builds it, and the input shape."""
    from .models import build_model, default_input_shape, parse_input_shape

    shape = parse_input_shape(input) if input else default_input_shape(model)
    net = build_model(model, num_classes=num_classes, in_channels=shape[0])  # as prepare does
    return net, shape


def wrap_name(name: str, width: int) -> str:
    """`name` in lines of at most `width` characters, broken after dots where it can be."""
    parts = [seg + "." for seg in name.split(".")[:-1]] + [name.split(".")[-1]]
    lines = [""]
    for part in parts:
        while len(part) > width:  # a segment wider than the column: cut it
            if lines[-1]:
                lines.append("")
            lines[-1], part = part[:width], part[width:]
            lines.append("")
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line for line in lines if line)


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims)) if dims else "-"


def macs_table(title: str, rows: list[LayerRow], total: int, width: int) -> Table:
    """The per-layer table in `width` columns: numbers whole and on one line; where the
    table would be wider, no outer edges, and layer names wrap after dots."""
    heads = ("layer", "type", "in → out", "output", "MACs", "share", "prunable")

    def cells(arrow: str) -> list[tuple[str, ...]]:
        return [
            (
                r.name,
                r.kind,
                f"{r.channels[0]}{arrow}{r.channels[1]}",
                _shape(r.output),
                f"{r.macs:,}",
                f"{100 * r.macs / total:.1f}%" if total else "-",
                r.prunable,
            )
            for r in rows
        ]

    def widths(table_cells: list[tuple[str, ...]]) -> list[int]:
        return [max([len(h)] + [len(c[i]) for c in table_cells]) for i, h in enumerate(heads)]

    body = cells(" → ")
    compact = sum(widths(body)) + 3 * len(heads) + 1 > width  # borders and padding
    if compact:
        heads, body = (*heads[:2], "in→out", *heads[3:]), cells("→")
    fit = width - sum(widths(body)[1:]) - (3 * len(heads) - 3 if compact else 3 * len(heads) + 1)
    table = Table(title=escape(title), show_edge=not compact, pad_edge=not compact)
    for head in heads:
        table.add_column(
            head,
            justify="right" if head in ("MACs", "share") else "left",
            no_wrap=head != "layer",  # rich may narrow only the layer column
            overflow="fold",
        )
    for c in body:
        table.add_row(escape(wrap_name(c[0], max(fit, len(heads[0])))), *map(escape, c[1:]))
    return table


def macs(
    model: Annotated[str, _MODEL],
    input: Annotated[str | None, _INPUT] = None,
    num_classes: Annotated[int, _CLASSES] = DEFAULT_NUM_CLASSES,
) -> None:
    """Count MACs per layer (conv: k·k·H·W·Cin/groups·Cout, linear: in·out)."""
    import torch

    from .inspect_model import macs_report

    net, shape = _load(model, input, num_classes)
    report = macs_report(net, torch.zeros((1, *shape)))
    title = f"{model} @ {_shape(shape)}"
    console.print(macs_table(title, report.rows, report.total, console.width))
    head = (
        f"total: [bold]{report.total:,}[/bold] MACs ({format_macs(report.total)}MAC) "
        f"in {len(report.rows)} layers; "
    )
    if report.graph is not None:
        g = report.graph
        console.print(head + f"{len(g.groups)} prunable channel groups, {g.num_units:,} units")
    else:
        console.print(head + "channel groups unknown (MACs counted by forward hooks):")
        first = re.split(r"\.\s+(?=[A-Z])", report.why_unknown or "")[0]  # one sentence
        console.print(escape(first))


def _groups_lines(report: CheckReport) -> list[str]:
    g = report.graph
    units, channels = g.num_units, int(g.unit_size.sum())
    per = f"{units:,} units" + (f" ({channels:,} channels)" if channels != units else "")
    fixed = g.fixed_groups
    lines = [
        f"channel groups: {len(g.groups)} prunable, {per}; {len(fixed)} kept whole"
        + (":" if fixed else "")
    ]
    by_reason: dict[str, list[str]] = {}
    order = {name: i for i, name in enumerate(g.layers)}
    for root, why in sorted(fixed.items(), key=lambda kv: order.get(kv[0], -1)):
        key = "is excluded" if why.endswith("is excluded") else why
        by_reason.setdefault(key, []).append(root)
    for why, roots in by_reason.items():
        shown = ", ".join(roots[:4]) + (f", … ({len(roots)} groups)" if len(roots) > 4 else "")
        reason = "excluded (--exclude)" if why == "is excluded" else why
        lines.append(f"  {shown}: {reason}")
    return lines


def _least_left(report: CheckReport) -> str:
    """What every group keeps at the least reachable budget, in words."""
    if report.max_pruning_ratio < 1:
        cap = 100 * (1 - report.max_pruning_ratio)
        return f"≥ {cap:.3g}% of every group's units left (--max-pruning-ratio)"
    one = "one unit" if report.round_to == 1 else f"one block of {report.round_to} channels"
    return one + " left per group"


def _print_check(report: CheckReport) -> None:
    for line in _groups_lines(report):
        console.print(escape(line))
    share = report.minimum / report.full if report.full else 0.0
    console.print("surgery: removing channels computes the masked model (trial on every group)")
    console.print(
        f"least reachable: {amount(report.minimum, report.unit)} ({share:.2%}), "
        + _least_left(report)
    )
    console.print("budgets:")
    table = Table.grid(padding=(0, 2))
    for col in ("budget", "amount", "share", "verdict"):
        table.add_column(col, justify="left" if col in ("budget", "verdict") else "right")
    for b in report.budgets:
        table.add_row(
            "  " + escape(b.text),
            amount(b.macs, report.unit) if b.macs is not None else "-",
            f"{b.macs / report.full:.1%}" if b.macs is not None else "",
            "feasible" if b.feasible else escape(f"infeasible: {b.why}"),
            style=None if b.feasible else "red",
        )
    console.print(table)


def check(
    model: Annotated[str, _MODEL],
    input: Annotated[str | None, _INPUT] = None,
    budgets: Annotated[
        str, typer.Option(help="Decreasing budgets: fractions (0.5,0.25) or MACs (3.87G).")
    ] = DEFAULT_BUDGETS,
    exclude: Annotated[
        str | None, typer.Option(help="Layer names/patterns to keep whole, comma-separated.")
    ] = None,
    num_classes: Annotated[int, _CLASSES] = DEFAULT_NUM_CLASSES,
    round_to: Annotated[
        int, typer.Option(help="Every group keeps a multiple of N channels (prune's --round-to).")
    ] = 1,
    max_pruning_ratio: Annotated[
        float, typer.Option(help="Every group loses at most this share (prune's flag; 1: no cap).")
    ] = 1.0,
    latency_runtime: Annotated[
        str, typer.Option(help="Latency budgets: onnxruntime | torch (prune's flag).")
    ] = "onnxruntime",
    latency_batch: Annotated[int, typer.Option(help="Latency budgets: batch size.")] = 1,
    latency_threads: Annotated[
        int, typer.Option(help="Latency budgets: CPU threads (0: torch's default).")
    ] = 0,
) -> None:
    """Dry run of `prune` in seconds: groups, least MACs, budgets, --exclude patterns.

    Nothing trains: prunable groups and units, MACs and params, the least reachable MACs,
    each budget feasible or not, and ready-to-paste --exclude patterns where needed.
    """
    import torch

    from .cost import count_params
    from .errors import GraphError
    from .inspect_model import check_model, check_output, hook_layer_macs, raise_if_infeasible
    from .latency_meter import LatencySettings
    from .settings import PrunerConfig

    if max_pruning_ratio < 1 and round_to > 1:  # in flag terms: check has no width floor
        raise TaperpruneError(
            "--max-pruning-ratio < 1 needs --round-to 1 (one block of channels per group is "
            "already a floor); drop one of them"
        )
    try:  # prune's own checks, before the model is built
        PrunerConfig(round_to=round_to, max_pruning_ratio=max_pruning_ratio)
    except ValueError as exc:
        raise TaperpruneError(f"the flags: {exc}") from None
    latency = LatencySettings(latency_runtime, latency_batch, latency_threads)
    wanted = _split(budgets)
    if budget_resource(wanted) == "latency":
        n = latency.resolved_threads()
        console.print(
            f"latency budgets: timing every layer in {latency_runtime} at batch {latency_batch}, "
            f"{n} thread{'s' if n != 1 else ''} (once per model and machine; cached)"
        )
    net, shape = _load(model, input, num_classes)
    x = torch.zeros((1, *shape))
    check_output(net, x, model, num_classes)
    head = f"{model} @ {_shape(shape)}, {num_classes} classes"
    try:
        report = check_model(
            net,
            x,
            wanted,
            _split(exclude),
            round_to=round_to,
            max_pruning_ratio=max_pruning_ratio,
            latency=latency,
        )
    except GraphError:
        total = sum(r.macs for r in hook_layer_macs(net, x))  # no graph to count on
        console.print(f"{head}: {total:,} MACs, {count_params(net):,} params")
        raise
    console.print(f"{head}: {report.full_macs:,} MACs, {report.params:,} params")
    if report.refused is not None:
        console.print(f"[red]refused:[/red] {escape(str(report.refused))}")
        console.print(f"with --exclude '{escape(','.join(report.suggested))}' added:")
    _print_check(report)
    if report.refused is not None:
        every = ",".join(report.exclude + report.suggested)
        raise TaperpruneError(
            f"{model} cannot be pruned exactly as it is: add --exclude '{every}' "
            f"(checked above: {len(report.graph.groups)} groups stay prunable with it)"
        )
    raise_if_infeasible(report, wanted)
    flags = f"--model {model} --budgets {','.join(wanted)}"
    if report.exclude:
        flags += f" --exclude '{','.join(report.exclude)}'"
    if round_to > 1:
        flags += f" --round-to {round_to}"
    if max_pruning_ratio < 1:
        flags += f" --max-pruning-ratio {max_pruning_ratio!r}"
    if report.unit == "ns":
        flags += f" --latency-runtime {latency_runtime} --latency-batch {latency_batch}"
        flags += f" --latency-threads {latency_threads}" if latency_threads else ""
    console.print(f"ok: `taperprune prune {escape(flags)}` passes these checks")
