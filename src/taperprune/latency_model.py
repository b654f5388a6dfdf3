"""The latency model: L(m), the modelled latency of the masked network, and its marginals.

Each conv/linear layer has a table of measured times over a grid of (live inputs a,
live outputs b), bilinearly interpolated between grid points (`latency_table.py` measures
it). The network's latency is scale · (the sum of its layers' entries) plus a remainder
that follows the activations, base + per_act · (output elements of the counted layers):
BatchNorm, activations, adds and copies scale with the channels that reach them, and a
layer inside a network runs a little faster or slower than alone (warm caches, fused
neighbours). The three numbers are fitted to the whole network measured at four uniform
and four random widths and at its smallest (`latency_table.fit_calibration`).

Everything is in nanoseconds, so that a latency budget is an integer like a MAC budget
and the λ solve, the blocks of `round_to`, the taper and the snapshots work unchanged:
λ prices a nanosecond. The marginal cost of a unit is the table's slope over its last
channel (exact in the budget: the solve re-evaluates L after every batch of removals).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from .cost import CostModel
from .graph import FIXED

MIN_PRICE_NS = 1e-3


@dataclass(frozen=True)
class LayerTable:
    """Measured milliseconds of one layer over a grid of (live inputs, live outputs)."""

    grid_in: tuple[int, ...]  # increasing; one point where the time does not depend on it
    grid_out: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]  # ms[i][j] at (grid_in[i], grid_out[j])

    def __post_init__(self) -> None:
        rows = len(self.ms)
        if rows != len(self.grid_in) or any(len(r) != len(self.grid_out) for r in self.ms):
            raise ValueError(
                f"a latency table of {len(self.grid_in)}×{len(self.grid_out)} grid points "
                f"holds {rows} rows"
            )
        for grid in (self.grid_in, self.grid_out):
            if any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
                raise ValueError(f"latency table grid {grid} is not increasing")


def monotone(table: LayerTable, tie_share: float = 0.005) -> LayerTable:
    """`table` made non-decreasing in both widths (timing noise can make a wider layer look
    faster). Where that leaves a flat step, `tie_share` of its widest time is added in
    proportion to a·b, so that every channel keeps a positive price."""
    raw = torch.tensor(table.ms, dtype=torch.float64)
    v = torch.cummax(torch.cummax(raw, 0).values, 1).values
    flat = (v.shape[0] > 1 and bool((v[1:] <= v[:-1]).any())) or (
        v.shape[1] > 1 and bool((v[:, 1:] <= v[:, :-1]).any())
    )
    if flat:
        a = torch.tensor(table.grid_in, dtype=torch.float64)
        b = torch.tensor(table.grid_out, dtype=torch.float64)
        v = v + tie_share * float(v.max()) * torch.outer(a / a.max(), b / b.max())
    return LayerTable(table.grid_in, table.grid_out, tuple(tuple(r) for r in v.tolist()))


def _coo(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": mat-vec is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape).coalesce()


@dataclass(frozen=True)
class LatencyModel:
    """L(m) of one network: per-layer tables, the remainder, and the units in each layer."""

    num_units: int
    layer_names: tuple[str, ...]
    tables: tuple[LayerTable, ...]
    in_units: tuple[torch.Tensor, ...]  # per layer: the unit of every input channel
    out_units: tuple[torch.Tensor, ...]
    act: torch.Tensor  # (L,) output elements per output channel (H_out·W_out, tokens)
    base_ms: float  # the remainder at zero activations
    per_act_ms: float  # the remainder per output element of a counted layer
    scale: float  # in-network time of a layer ÷ its time alone
    incidence: CostModel  # the MAC model of the same layers: which units meet where
    # Other processes' CPU use while it was timed (machine_load; None: not measured).
    others_cores: float | None = None
    # Derived once: padded grids and values, and the unit incidence per layer.
    _gin: torch.Tensor = field(init=False, repr=False)
    _gout: torch.Tensor = field(init=False, repr=False)
    _nin: torch.Tensor = field(init=False, repr=False)
    _nout: torch.Tensor = field(init=False, repr=False)
    _ns: torch.Tensor = field(init=False, repr=False)  # (L, K, K) nanoseconds
    _in_mat: torch.Tensor = field(init=False, repr=False)  # (L, N+1) channels per unit
    _out_mat: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nl = len(self.tables)
        k = max([2, *(max(len(t.grid_in), len(t.grid_out)) for t in self.tables)])
        gin = torch.zeros(nl, k, dtype=torch.float64)
        gout = torch.zeros(nl, k, dtype=torch.float64)
        ns = torch.zeros(nl, k, k, dtype=torch.float64)
        for i, t in enumerate(self.tables):
            gi, go = len(t.grid_in), len(t.grid_out)
            gin[i, :gi] = torch.tensor(t.grid_in, dtype=torch.float64)
            gin[i, gi:] = t.grid_in[-1]
            gout[i, :go] = torch.tensor(t.grid_out, dtype=torch.float64)
            gout[i, go:] = t.grid_out[-1]
            v = torch.tensor(t.ms, dtype=torch.float64) * 1e6
            ns[i, :gi, :go] = v
            ns[i, gi:, :go] = v[-1:, :]
            ns[i, :, go:] = ns[i, :, go - 1 : go]
        n1 = self.num_units + 1
        sets = {
            "_gin": gin,
            "_gout": gout,
            "_nin": torch.tensor([len(t.grid_in) for t in self.tables]),
            "_nout": torch.tensor([len(t.grid_out) for t in self.tables]),
            "_ns": ns,
            "_in_mat": self._incidence(self.in_units, n1),
            "_out_mat": self._incidence(self.out_units, n1),
        }
        for name, value in sets.items():
            object.__setattr__(self, name, value)

    def _incidence(self, per_layer: tuple[torch.Tensor, ...], n1: int) -> torch.Tensor:
        rows, cols = [], []
        for li, units in enumerate(per_layer):
            u = torch.where(units == FIXED, torch.full_like(units, n1 - 1), units)
            rows.append(torch.full_like(u, li))
            cols.append(u)
        if not rows:
            return torch.zeros(0, n1, dtype=torch.float64)
        r, c = torch.cat(rows), torch.cat(cols)
        return _coo(r, c, torch.ones(len(r), dtype=torch.float64), (len(per_layer), n1))

    # ---------------------------------------------------------------- the model
    def _widths(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = torch.cat([masks.detach().to(torch.float64).cpu(), torch.ones(1, dtype=torch.float64)])
        return m, self._in_mat @ m, self._out_mat @ m

    def _table_ns(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(L,) interpolated nanoseconds of every layer at widths (a, b)."""
        i, wa = _cell(self._gin, self._nin, a)
        j, wb = _cell(self._gout, self._nout, b)
        k = self._ns.shape[1]
        flat = self._ns.reshape(len(a), k * k)

        def at(ii: torch.Tensor, jj: torch.Tensor) -> torch.Tensor:
            return flat.gather(1, (ii * k + jj).unsqueeze(1)).squeeze(1)

        i1, j1 = (i + 1).clamp(max=k - 1), (j + 1).clamp(max=k - 1)
        return self.scale * (
            (1 - wa) * (1 - wb) * at(i, j)
            + wa * (1 - wb) * at(i1, j)
            + (1 - wa) * wb * at(i, j1)
            + wa * wb * at(i1, j1)
        )

    def _remainder_ns(self, b: torch.Tensor) -> torch.Tensor:
        return 1e6 * (self.base_ms + self.per_act_ms * (self.act * b).sum())

    def total(self, masks: torch.Tensor) -> float:
        """L(m) in nanoseconds."""
        _, a, b = self._widths(masks)
        return float(self._table_ns(a, b).sum() + self._remainder_ns(b))

    def total_and_marginals(self, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
        """L(m) and d: what removing each live unit saves (its layers' slopes over their
        last channel, times the channels it holds); 0 for removed units."""
        m, a, b = self._widths(masks)
        t = self._table_ns(a, b)
        total = float(t.sum() + self._remainder_ns(b))
        d_in = t - self._table_ns(a - 1, b)
        d_out = t - self._table_ns(a, b - 1) + 1e6 * self.per_act_ms * self.act
        d = self._in_mat.t() @ d_in + self._out_mat.t() @ d_out
        # A unit whose removal saves nothing in the model (a flat table, a negative
        # per-activation term) still gets a tiny price: the solve takes it last, not never,
        # so every budget above the minimum stays reachable.
        return total, d[:-1].clamp(min=MIN_PRICE_NS) * m[:-1]

    def parts(self, masks: torch.Tensor) -> tuple[float, float]:
        """(Σ layer tables in ms before `scale`, output elements of the counted layers): what
        the calibration weighs (`latency_table.fit_calibration`)."""
        _, a, b = self._widths(masks)
        return float(self._table_ns(a, b).sum()) / 1e6 / self.scale, float((self.act * b).sum())

    def per_layer(self, masks: torch.Tensor) -> dict[str, int]:
        """Per-layer nanoseconds of the masked network (the remainder not included)."""
        _, a, b = self._widths(masks)
        t = self._table_ns(a, b)
        return {n: int(round(float(v))) for n, v in zip(self.layer_names, t, strict=True)}

    @property
    def full_macs(self) -> int:
        """L of the unpruned network, in nanoseconds (named like the MAC model's)."""
        return int(round(self.total(torch.ones(self.num_units, dtype=torch.float64))))


def _cell(
    grid: torch.Tensor, n: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the grid cell holding x and the weight of its upper corner; below the first
    grid point the table is constant (a runtime pads channels up to its vector width), and
    a one-point grid is constant everywhere (weight 0)."""
    i = torch.searchsorted(grid, x.unsqueeze(1).contiguous(), right=True).squeeze(1) - 1
    i = torch.minimum(i.clamp(min=0), (n - 2).clamp(min=0))
    g0 = grid.gather(1, i.unsqueeze(1)).squeeze(1)
    g1 = grid.gather(1, (i + 1).clamp(max=grid.shape[1] - 1).unsqueeze(1)).squeeze(1)
    span = g1 - g0
    w = torch.where(span > 0, (x - g0) / torch.where(span > 0, span, 1.0), 0.0)
    return i, torch.where(n > 1, w.clamp(0.0, 1.0), 0.0)
