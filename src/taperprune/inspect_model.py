"""What `taperprune macs` and `check` compute, without training: MACs per layer (from the
channel graph, or from forward hooks where no graph can be built), channel groups, the
least reachable MACs, each budget's feasibility, and `--exclude` patterns that cover a
list of layer names."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import block_units, rounded_budgets
from .budget import amount, parse_budget
from .constraint import minimum_macs
from .cost import build_cost_model, count_params, hooked_macs, layer_macs
from .errors import BudgetError, GraphError, ModelError
from .graph import FIXED, ChannelGraph, UnmaskableLayerError, build_graph
from .latency_meter import LatencySettings
from .resource import budget_cost
from .settings import PrunerConfig
from .surgery import check_surgery
from .width_floor import ratio_floors

_SPECIAL = re.compile(r"[*?\[\]]")


def _literal(text: str) -> str:
    """An fnmatch pattern matching exactly `text`."""
    return _SPECIAL.sub(lambda m: f"[{m.group(0)}]", text)


def _candidates(name: str) -> set[str]:
    """Patterns that match `name`: itself, `*.suffix`, `prefix.*`, `*.infix.*`,
    `prefix.*.suffix`, each also with digit runs as `*` (block indices)."""
    segs = name.split(".")
    k = len(segs)

    def lit(i: int, j: int) -> str:
        return _literal(".".join(segs[i:j]))

    out = {_literal(name)}
    for i in range(1, k):
        out |= {"*." + lit(i, k), lit(0, i) + ".*"}
        for j in range(i + 1, min(i + 2, k - 1) + 1):
            out.add("*." + lit(i, j) + ".*")
        for j in range(i + 1, k):
            out.add(lit(0, i) + ".*." + lit(j, k))
    out |= {re.sub(r"\d+", "*", p) for p in out}
    return {p for p in out if p == _literal(name) or re.search(r"[A-Za-z0-9_]", p)}


def exclude_patterns(names: Sequence[str], avoid: Sequence[str] = ()) -> list[str]:
    """A few fnmatch patterns that together match every name in `names` and none in `avoid`
    (a name in both is matched: it cannot be avoided). Greedy: each pattern covers the most
    names still uncovered; ties go to fewer wildcards, then to the shorter pattern."""
    todo = list(dict.fromkeys(names))
    avoid_set = set(avoid) - set(todo)
    covers: dict[str, frozenset[str]] = {}
    for cand in sorted({c for n in todo for c in _candidates(n)}):
        rx = re.compile(fnmatch.translate(cand))
        if not any(rx.match(a) for a in avoid_set):
            covers[cand] = frozenset(n for n in todo if rx.match(n))
    left, chosen = set(todo), []
    while left:
        best = min(covers, key=lambda p: (-len(covers[p] & left), p.count("*"), len(p), p))
        chosen.append(best)
        left -= covers[best]
    for p in list(reversed(chosen)):  # a later, wider pattern may cover an earlier one
        if covers[p] <= frozenset().union(*(covers[q] for q in chosen if q != p)):
            chosen.remove(p)
    # Listed in the order of the first name each covers: reads like the model.
    first = {p: min(todo.index(n) for n in covers[p]) for p in chosen}
    return sorted(chosen, key=lambda p: (first[p], p))


@dataclass(frozen=True)
class LayerRow:
    """One conv/linear layer of the MAC table."""

    name: str
    kind: str  # the module's class name
    channels: tuple[int, int]  # (in, out)
    output: tuple[int, ...]  # output shape of the first call, without the batch
    macs: int  # per sample, summed over calls
    prunable: str  # "out", "-", or "unknown" (no channel graph)


@dataclass
class MacsReport:
    """MACs per layer; groups and units are None when the channel graph cannot be built."""

    rows: list[LayerRow]
    total: int
    graph: ChannelGraph | None
    why_unknown: str | None = None


def _channels_of(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return int(m.in_channels), int(m.out_channels)  # type: ignore[arg-type]


def hook_layer_macs(model: nn.Module, example: torch.Tensor) -> list[LayerRow]:
    """Per-layer MACs by forward hooks, `count_macs`'s convention, in call order."""
    return [
        LayerRow(n, type(m).__name__, _channels_of(m), s, t, "unknown")
        for n, (m, s, t) in hooked_macs(model, example).items()
    ]


def macs_report(model: nn.Module, example: torch.Tensor, exclude: Sequence[str] = ()) -> MacsReport:
    """MACs per layer from the channel graph; by forward hooks where it cannot be built."""
    try:
        graph = build_graph(model, example, exclude=exclude)
    except GraphError as exc:
        try:
            rows = hook_layer_macs(model, example)
        except Exception:
            raise exc from None  # the input does not fit: the graph's message says so
        if not rows:
            raise
        return MacsReport(rows, sum(r.macs for r in rows), None, " ".join(str(exc).split()))
    per_layer = layer_macs(build_cost_model(graph), torch.ones(graph.num_units, dtype=torch.bool))
    modules = dict(model.named_modules())
    rows = []
    for name, lay in graph.layers.items():
        if lay.kind == "norm" or name not in per_layer:
            continue
        rows.append(
            LayerRow(
                name,
                type(modules[name]).__name__,
                (len(lay.in_units), len(lay.out_units)),
                tuple(lay.output_shapes[0][1:]) if lay.output_shapes else (),
                per_layer[name],
                "out" if bool((lay.out_units != FIXED).any()) else "-",
            )
        )
    return MacsReport(rows, sum(per_layer.values()), graph)


@dataclass(frozen=True)
class BudgetRow:
    """One requested budget: its MACs (None when malformed) and whether a run can reach it."""

    text: str
    macs: int | None
    feasible: bool
    why: str = ""


@dataclass
class CheckReport:
    """Everything `prune` checks before it trains, and what it found."""

    full_macs: int
    params: int
    graph: ChannelGraph
    minimum: float
    budgets: list[BudgetRow]
    exclude: tuple[str, ...] = ()
    suggested: tuple[str, ...] = ()  # patterns added to make the graph buildable
    refused: UnmaskableLayerError | None = None
    unit: str = "MACs"  # what the budgets and `minimum` count: MACs or params
    full: int = 0  # the unpruned model's count in `unit`
    round_to: int = 1
    max_pruning_ratio: float = 1.0


def budget_rows(
    values: Sequence[str], full_macs: int, minimum: float, unit: str = "MACs"
) -> list[BudgetRow]:
    """Each budget as `prune` reads it (`parse_budget`), reachable or not and why."""
    rows: list[BudgetRow] = []
    last: int | None = None
    for text in values:
        try:
            macs = parse_budget(text, full_macs, unit)
        except BudgetError as exc:
            rows.append(BudgetRow(text, None, False, str(exc)))
            continue
        why = ""
        if macs < minimum:
            why = f"below the least reachable {amount(minimum, unit)}"
        elif last is not None and macs >= last:
            why = "not below the budget before it (budgets must decrease)"
        rows.append(BudgetRow(text, macs, not why, why))
        last = macs
    return rows


def check_model(
    model: nn.Module,
    example: torch.Tensor,
    budgets: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    surgery: bool = True,
    round_to: int = 1,
    max_pruning_ratio: float = 1.0,
    latency: LatencySettings | None = None,
) -> CheckReport:
    """`prune`'s checks before training (graph, surgery, budgets), gathered, not raised.

    When the graph refuses layers it cannot mask, the refusal's patterns are added to
    `exclude` and the rest is checked with them (`suggested`, `refused` say so).
    """
    PrunerConfig(round_to=round_to, max_pruning_ratio=max_pruning_ratio)  # prune's own checks
    exclude = tuple(exclude)
    refused = None
    try:
        graph = build_graph(model, example, exclude=exclude)
    except UnmaskableLayerError as exc:
        refused = exc
        graph = build_graph(model, example, exclude=exclude + exc.patterns)
    if surgery:
        check_surgery(model, graph)
    # MACs; params for '1.2Mparams'; ns for '3.5ms' (then the latency model is measured)
    unit, cm = budget_cost(graph, model, budgets, example_input=example, latency=latency)
    blocks = block_units(graph, round_to)  # a round_to no group is wider than: one line
    floors = ratio_floors(graph.unit_group, len(graph.groups), max_pruning_ratio)
    least = minimum_macs(cm, graph.unit_group, len(graph.groups), blocks, floors)
    rows = budget_rows(list(budgets), cm.full_macs, least, unit)
    return CheckReport(
        unit=unit,
        full=cm.full_macs,
        full_macs=build_cost_model(graph).full_macs if unit != "MACs" else cm.full_macs,
        params=count_params(model),
        graph=graph,
        minimum=least,
        budgets=rows,
        exclude=exclude,
        suggested=refused.patterns if refused else (),
        refused=refused,
        round_to=round_to,
        max_pruning_ratio=max_pruning_ratio,
    )


def raise_if_infeasible(report: CheckReport, budgets: Sequence[str]) -> None:
    """The budget error `prune` would stop with, if any: its own `rounded_budgets` call."""
    rounded_budgets(
        list(budgets),
        report.full,
        report.minimum,
        report.round_to,
        report.unit,
        report.max_pruning_ratio,
    )


def check_output(model: nn.Module, example: torch.Tensor, name: str, classes: int) -> None:
    """The model must map a batch to one tensor of class scores (N, classes), as `prune` needs."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise ModelError(
            f"model {name} cannot run on an input of shape {tuple(example.shape)}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model {name} returns a {type(out).__name__}, not one tensor of class scores; "
            "wrap it so that forward returns the logits (e.g. out[0] or out.logits)"
        )
    if out.ndim != 2 or out.shape[1] != classes:
        raise ModelError(
            f"model {name} returns shape {tuple(out.shape)} for a batch of 1; for "
            f"{classes} classes (1, {classes}) is expected: does its builder take num_classes?"
        )
