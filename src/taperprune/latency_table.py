"""Measuring the latency model on this machine: per-layer tables and the calibration.

Every conv/linear layer is timed alone (its own input size, the chosen runtime, batch and
threads) over a grid of (live inputs, live outputs); identical layers are timed once. The
whole network is timed at five uniform and four random widths to fit the calibration (see
`latency_model.py`). The result is cached on disk, keyed by the model's layers, the input
shape, runtime, batch, threads, CPU model and library versions (`latency_cache`), and reused;
the timing itself is `latency_meter`'s.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .constraint import _rank_within
from .cost import build_cost_model, forward_with_hooks
from .errors import LatencyTimingWarning, TaperpruneError
from .files import write_json
from .graph import FIXED, ChannelGraph
from .latency_cache import FORMAT, cache_dir, cache_key, key_parts
from .latency_meter import LatencySettings, Meter, RuntimeMeter
from .latency_model import LatencyModel, LayerTable, monotone
from .machine_load import OthersMeter, busy_note
from .surgery import remove_masked

GRID_POINTS = 5  # per prunable width: 8, ¼, ½, ¾ and all of it


@dataclass(frozen=True)
class LayerSpec:
    """One conv/linear layer as it sits in the network: enough to build and time it alone."""

    kind: str  # "conv1d" | "conv2d" | "conv3d" | "linear"
    in_channels: int
    out_channels: int
    in_shape: tuple[int, ...]  # per sample; channels first (conv) or last (linear)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    calls: int = 1  # forward calls per network forward (a shared layer counts each call)
    act: int = 0  # output elements per output channel, per sample, over all calls

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def module(self, a: int, b: int) -> nn.Module:
        """This layer with `a` inputs and `b` outputs (depthwise: `b` channels)."""
        if self.kind == "linear":
            return nn.Linear(a, b, bias=self.bias)
        conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[self.kind]
        groups = b if self.depthwise else self.groups
        return conv(
            b if self.depthwise else a,
            b,
            self.kernel,  # type: ignore[arg-type]
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
            self.dilation,  # type: ignore[arg-type]
            groups,
            self.bias,
        )

    def input_shape(self, a: int) -> tuple[int, ...]:
        if self.kind == "linear":
            return (*self.in_shape[:-1], a)
        return (a, *self.in_shape[1:])


def layer_specs(model: nn.Module, example_input: torch.Tensor, names: Sequence[str]) -> dict:
    """name -> LayerSpec for the counted layers `names`, recorded by one forward pass."""
    modules = dict(model.named_modules())
    batch = int(example_input.shape[0])
    seen: dict[str, dict[str, Any]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            if not isinstance(out, torch.Tensor) or not inp or not isinstance(inp[0], torch.Tensor):
                return
            width = out.shape[-1] if isinstance(mod, nn.Linear) else out.shape[1]
            entry = seen.setdefault(name, {"in_shape": tuple(inp[0].shape[1:]), "calls": 0})
            entry["calls"] += 1
            entry["act"] = entry.get("act", 0) + out.numel() // batch // int(width)

        return record

    forward_with_hooks(model, example_input, [(modules[n], hook(n)) for n in names])
    specs: dict[str, LayerSpec] = {}
    for name in names:
        mod, rec = modules[name], seen.get(name)
        if rec is None:
            continue
        if isinstance(mod, nn.Linear):
            specs[name] = LayerSpec(
                "linear",
                mod.in_features,
                mod.out_features,
                rec["in_shape"],
                bias=mod.bias is not None,
                calls=rec["calls"],
                act=rec["act"],
            )
            continue
        assert isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        if isinstance(mod.padding, str):
            raise TaperpruneError(
                f"layer {name!r} uses padding={mod.padding!r}; latency budgets need numeric "
                "padding (MAC and parameter budgets work)"
            )
        specs[name] = LayerSpec(
            f"conv{len(mod.kernel_size)}d",
            mod.in_channels,
            mod.out_channels,
            rec["in_shape"],
            tuple(mod.kernel_size),
            tuple(mod.stride),
            tuple(mod.padding),
            tuple(mod.dilation),
            mod.groups,
            mod.bias is not None,
            rec["calls"],
            rec["act"],
        )
    return specs


def width_grid(n: int, points: int = GRID_POINTS) -> tuple[int, ...]:
    """Increasing widths up to n, about evenly spaced, on multiples of 8 where n ≥ 16:
    runtimes vectorise channels in 8s (onnxruntime's blocked convs), so widths between
    multiples of 8 can run slower than the next multiple and are not sampled."""
    step = 8 if n >= 16 else 1
    picks = {step, n}
    for i in range(1, points - 1):
        picks.add(max(step, round(n * i / (points - 1) / step) * step))
    return tuple(sorted(p for p in picks if 1 <= p <= n))


def _layer_grids(
    spec: LayerSpec, in_fixed: bool, out_fixed: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    grid_in = (spec.in_channels,) if in_fixed or spec.depthwise else width_grid(spec.in_channels)
    grid_out = (spec.out_channels,) if out_fixed else width_grid(spec.out_channels)
    return grid_in, grid_out


def measure_table(
    spec: LayerSpec, grid_in: tuple[int, ...], grid_out: tuple[int, ...], meter: Meter
) -> LayerTable:
    """The layer's milliseconds per network forward at every grid point.

    A grouped (not depthwise) conv is timed at full width only and scaled by a·b: its
    conv groups stay, so its cost follows its MACs.
    """
    if spec.groups > 1 and not spec.depthwise:
        full = spec.calls * meter.layer_ms(
            spec.module(spec.in_channels, spec.out_channels), spec.input_shape(spec.in_channels)
        )
        return LayerTable((0, spec.in_channels), (0, spec.out_channels), ((0.0, 0.0), (0.0, full)))
    rows = []
    for a in grid_in:
        row = []
        for b in grid_out:
            shape = spec.input_shape(b if spec.depthwise else a)
            row.append(spec.calls * meter.layer_ms(spec.module(a, b), shape))
        rows.append(tuple(row))
    return monotone(LayerTable(grid_in, grid_out, tuple(rows)))


CALIBRATION_WIDTHS = (1.0, 0.75, 0.5, 0.25, 0.0)
CALIBRATION_RANDOM = 4  # and this many networks of random widths (shares in [0.2, 1])


def uniform_keep(graph: ChannelGraph, share: float | torch.Tensor) -> torch.Tensor:
    """Every group's first `share` of its units (one share, or one per group), on a
    multiple of 8 channels where the group is 16 or wider (as the tables' grid), at least
    one unit."""
    sizes = torch.tensor([g.size for g in graph.groups], dtype=torch.float64)
    channels = torch.where(
        sizes >= 16, (share * sizes / 8).round().clamp(min=1) * 8, (share * sizes).round()
    ).clamp(min=1)
    per_unit = sizes / torch.bincount(graph.unit_group, minlength=len(graph.groups))
    units = (channels / per_unit).floor().clamp(min=1).long()
    return _rank_within(graph.unit_group) < units[graph.unit_group]


def build_latency_model(
    model: nn.Module,
    example_input: torch.Tensor,
    graph: ChannelGraph,
    settings: LatencySettings,
    *,
    meter: Meter | None = None,
    cache: Path | None | bool = True,
) -> LatencyModel:
    """L(m) of `model` measured by `meter` (the real runtime by default), from the cache
    when this model was measured here before with the same settings.

    `cache`: True for the default folder (`cache_dir`), a folder, or False/None for none.
    """
    names = [n for n, lay in graph.layers.items() if lay.kind != "norm"]
    specs = layer_specs(model, example_input[:1], names)
    folder = cache_dir() if cache is True else (Path(cache) if cache else None)
    path = None
    if folder is not None:
        path = folder / f"{cache_key(key_parts(specs, graph, settings))}.json"
        if path.is_file():
            try:
                return _from_cached(json.loads(path.read_text()), specs, graph)
            except (ValueError, KeyError, TypeError):
                pass  # a damaged or older entry: measure again and overwrite it
    # Only the real meter's timings suffer from other processes (a fake one is exact).
    load = OthersMeter() if meter is None else None
    meter = meter if meter is not None else RuntimeMeter(settings)
    tables: dict[str, LayerTable] = {}
    by_shape: dict[str, LayerTable] = {}
    for name in specs:
        lay, spec = graph.layers[name], specs[name]
        grid_in, grid_out = _layer_grids(
            spec, bool((lay.in_units == FIXED).all()), bool((lay.out_units == FIXED).all())
        )
        key = json.dumps([asdict(spec), grid_in, grid_out])
        if key not in by_shape:
            by_shape[key] = measure_table(spec, grid_in, grid_out, meter)
        tables[name] = by_shape[key]
    shape = tuple(example_input.shape[1:])
    raw = _assemble(specs, tables, graph, 0.0, 0.0, 1.0)
    points = []
    for share in calibration_shares(len(graph.groups)):
        keep = uniform_keep(graph, share)
        net = model if bool(keep.all()) else remove_masked(model, graph, keep, verify=False)
        points.append((meter.net_ms(net, shape), *raw.parts(keep)))
    base_ms, per_act_ms, scale = fit_calibration(points)
    others = load.cores() if load is not None else None
    note = busy_note(others, "the latency model")
    if note:
        warnings.warn(note, LatencyTimingWarning, stacklevel=2)
    if path is not None:
        write_json(
            path,
            {
                "format": FORMAT,
                "tables": {n: asdict(t) for n, t in tables.items()},
                "base_ms": base_ms,
                "per_act_ms": per_act_ms,
                "scale": scale,
                "others_cores": others,
                "calibration": [
                    {"measured_ms": m, "tables_ms": t, "activations": a} for m, t, a in points
                ],
            },
        )
    return _assemble(specs, tables, graph, base_ms, per_act_ms, scale, others)


def calibration_shares(num_groups: int) -> list[float | torch.Tensor]:
    """The networks the calibration is fitted on: uniform widths (all, ¾, ½, ¼ and the
    least of every group) and CALIBRATION_RANDOM of random widths per group (seeded):
    uniform nets alone let one runtime quirk of a uniform shape set the scale for every
    other shape."""
    gen = torch.Generator().manual_seed(0)
    shares: list[float | torch.Tensor] = list(CALIBRATION_WIDTHS)
    for _ in range(CALIBRATION_RANDOM):
        shares.append(0.2 + 0.8 * torch.rand(num_groups, generator=gen, dtype=torch.float64))
    return shares


def fit_calibration(points: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """(base, per_act, scale) from (measured ms, summed table ms, activations) points:
    measured ≈ scale · tables + base + per_act · activations, least squares.

    per_act may come out negative: a layer timed alone converts its input and output
    between layouts (onnxruntime's blocked NCHWc), which a network does once, not per
    layer, and that cost follows the activations. A fit whose scale is not positive, or
    that predicts a point at or below zero, is dropped for a simpler one."""
    m = torch.tensor([p[0] for p in points], dtype=torch.float64)
    t = torch.tensor([p[1] for p in points], dtype=torch.float64)
    act = torch.tensor([p[2] for p in points], dtype=torch.float64)
    one = torch.ones_like(m)
    for cols in (("scale", "act"), ("scale",), ("act",), ()):
        # The remainder is the measurement less the tables (scale 1) where scale is not fitted.
        x = torch.stack(
            [one, *([t] if "scale" in cols else []), *([act] if "act" in cols else [])], 1
        )
        y = m if "scale" in cols else m - t
        coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.flatten().tolist()
        base, rest = coef[0], coef[1:]
        scale = rest.pop(0) if "scale" in cols else 1.0
        per_act = rest.pop(0) if "act" in cols else 0.0
        fitted = scale * t + base + per_act * act
        finite = all(map(math.isfinite, (base, scale, per_act)))
        if finite and scale > 0 and bool((fitted > 0).all()):
            return base, per_act, scale
    return float((m - t).mean()), 0.0, 1.0


def _assemble(
    specs: dict[str, LayerSpec],
    tables: dict[str, LayerTable],
    graph: ChannelGraph,
    base_ms: float,
    per_act_ms: float,
    scale: float,
    others_cores: float | None = None,
) -> LatencyModel:
    names = tuple(specs)
    layers = [graph.layers[n] for n in names]
    return LatencyModel(
        num_units=graph.num_units,
        layer_names=names,
        tables=tuple(tables[n] for n in names),
        in_units=tuple(lay.in_units for lay in layers),
        out_units=tuple(lay.out_units for lay in layers),
        act=torch.tensor([float(specs[n].act) for n in names], dtype=torch.float64),
        base_ms=base_ms,
        per_act_ms=per_act_ms,
        scale=scale,
        incidence=build_cost_model(graph),
        others_cores=others_cores,
    )


def _from_cached(data: dict[str, Any], specs: dict[str, LayerSpec], graph: ChannelGraph):
    if data["format"] != FORMAT or set(data["tables"]) != set(specs):
        raise KeyError("stale cache entry")
    tables = {
        n: LayerTable(tuple(t["grid_in"]), tuple(t["grid_out"]), tuple(tuple(r) for r in t["ms"]))
        for n, t in data["tables"].items()
    }
    return _assemble(
        specs,
        tables,
        graph,
        float(data["base_ms"]),
        float(data["per_act_ms"]),
        float(data["scale"]),
        data.get("others_cores"),
    )
