"""The MAC model: exact counts, the cost R(m) of a masked network and its marginal costs.

Convention (Kruglov 2018, and the usual VGG-16 = 15.47 GMAC figure): a conv costs
k_h·k_w·H_out·W_out·(C_in/groups)·C_out MACs, a linear in·out per token; nothing
else is counted, biases neither. Replacing the channel counts by sums of binary
masks gives R(m): for each (layer, conv group) *block*, coeff · a · b with a, b the
live input and output channels. R is exact for binary masks; the marginal cost
d_u = R(m) − R(m with unit u removed) is computed in closed form, vectorised.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .graph import FIXED, ChannelGraph


@dataclass(frozen=True)
class CostModel:
    """Sparse incidence of units in the blocks of all counted layers (built once)."""

    num_units: int
    coeff: torch.Tensor  # (B,) float64 MACs per (input, output) pair in each block
    block_layer: torch.Tensor  # (B,) long: layer index of each block
    layer_names: tuple[str, ...]
    in_block: torch.Tensor  # (E_in,) long
    in_unit: torch.Tensor  # (E_in,) long in [0, N]; N is the constant "always kept" unit
    in_count: torch.Tensor  # (E_in,) float64: how many input indices of the block it covers
    out_block: torch.Tensor
    out_unit: torch.Tensor
    out_count: torch.Tensor
    both_block: torch.Tensor  # pairs where one unit is both an input and an output of a block
    both_unit: torch.Tensor
    both_count: torch.Tensor  # in_count * out_count for that pair
    # Derived once: the incidences as CSR matrices, so that R and d are a few sparse
    # mat-vecs (about 4x faster than index_add on ResNet-50's 50k entries).
    in_mat: torch.Tensor = field(init=False, repr=False)  # (B, N+1)
    in_mat_t: torch.Tensor = field(init=False, repr=False)  # (N+1, B)
    out_mat: torch.Tensor = field(init=False, repr=False)
    out_mat_t: torch.Tensor = field(init=False, repr=False)
    both_cost: torch.Tensor = field(init=False, repr=False)  # (N+1,) correction of d

    def __post_init__(self) -> None:
        nb, n1 = len(self.coeff), self.num_units + 1
        for side, block, unit, count in (
            ("in", self.in_block, self.in_unit, self.in_count),
            ("out", self.out_block, self.out_unit, self.out_count),
        ):
            object.__setattr__(self, f"{side}_mat", _csr(block, unit, count, (nb, n1)))
            object.__setattr__(self, f"{side}_mat_t", _csr(unit, block, count, (n1, nb)))
        both = torch.zeros(n1, dtype=torch.float64).index_add_(
            0, self.both_unit, self.both_count * self.coeff[self.both_block]
        )
        object.__setattr__(self, "both_cost", both)

    @property
    def full_macs(self) -> int:
        return int(round(float(macs(self, torch.ones(self.num_units, dtype=torch.float64)))))

    # The interface of a budgeted resource, shared with `latency_model.LatencyModel`.
    @property
    def incidence(self) -> CostModel:
        """Which units meet in which layer (for a MAC or parameter model: itself)."""
        return self

    def total_and_marginals(self, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
        return macs_and_marginals(self, masks)

    def per_layer(self, masks: torch.Tensor) -> dict[str, int]:
        return layer_macs(self, masks)


def _csr(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": mat-vec is all we use
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape)
        return coo.coalesce().to_sparse_csr()


def _entries(
    units: torch.Tensor, groups: int, block0: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(block, unit, count) for one side of a layer split into `groups` conv groups."""
    u = torch.where(units == FIXED, torch.full_like(units, n), units)
    per = len(u) // groups
    blocks = block0 + torch.arange(len(u)) // per
    key = blocks * (n + 1) + u
    uniq, counts = torch.unique(key, return_counts=True)
    return uniq // (n + 1), uniq % (n + 1), counts.double()


@dataclass(frozen=True)
class Term:
    """One bilinear part of a cost: coeff · (live inputs) · (live outputs) per conv group."""

    name: str
    in_units: torch.Tensor  # (C_in,) long, FIXED where not prunable
    out_units: torch.Tensor
    groups: int
    per_pair: float


def build_cost_model(graph: ChannelGraph) -> CostModel:
    """The MAC model: every counted layer of `graph` indexed into blocks, once."""
    return assemble(
        graph.num_units,
        [
            Term(name, lay.in_units, lay.out_units, lay.conv_groups, lay.macs_per_pair)
            for name, lay in graph.layers.items()
            if lay.kind != "norm" and lay.macs_per_pair != 0
        ],
    )


def assemble(n: int, terms: list[Term]) -> CostModel:
    """A cost model of `n` units from bilinear terms (a linear term has a FIXED input)."""
    coeff: list[torch.Tensor] = []
    block_layer: list[torch.Tensor] = []
    names: list[str] = []
    Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ins: list[Entries] = []
    outs: list[Entries] = []
    both: list[Entries] = []
    block0 = 0
    for term in terms:
        li = len(names)
        names.append(term.name)
        g = term.groups
        ib, iu, ic = _entries(term.in_units, g, block0, n)
        ob, ou, oc = _entries(term.out_units, g, block0, n)
        ins.append((ib, iu, ic))
        outs.append((ob, ou, oc))
        # A unit on both sides of a block (depthwise convs, a conv inside a residual
        # stream) appears squared in a·b: its exact removal cost needs a correction.
        ik = ib * (n + 1) + iu
        ok = ob * (n + 1) + ou
        common, ia, oa = _intersect(ik, ok)
        keep = (common % (n + 1)) != n
        both.append((common[keep] // (n + 1), common[keep] % (n + 1), (ic[ia] * oc[oa])[keep]))
        coeff.append(torch.full((g,), float(term.per_pair), dtype=torch.float64))
        block_layer.append(torch.full((g,), li, dtype=torch.long))
        block0 += g

    def cat(parts: list[Entries], i: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat([p[i] for p in parts]) if parts else torch.zeros(0, dtype=dtype)

    return CostModel(
        num_units=n,
        coeff=torch.cat(coeff) if coeff else torch.zeros(0, dtype=torch.float64),
        block_layer=torch.cat(block_layer) if block_layer else torch.zeros(0, dtype=torch.long),
        layer_names=tuple(names),
        in_block=cat(ins, 0, torch.long),
        in_unit=cat(ins, 1, torch.long),
        in_count=cat(ins, 2, torch.float64),
        out_block=cat(outs, 0, torch.long),
        out_unit=cat(outs, 1, torch.long),
        out_count=cat(outs, 2, torch.float64),
        both_block=cat(both, 0, torch.long),
        both_unit=cat(both, 1, torch.long),
        both_count=cat(both, 2, torch.float64),
    )


def _intersect(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Common values of two sorted 1-D tensors of unique values, with their positions in each."""
    in_a = torch.isin(a, b)
    return a[in_a], torch.nonzero(in_a).flatten(), torch.nonzero(torch.isin(b, a)).flatten()


def _ext(masks: torch.Tensor) -> torch.Tensor:
    m = masks.detach().to(torch.float64).cpu()
    return torch.cat([m, torch.ones(1, dtype=torch.float64)])


def _block_sums(cm: CostModel, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Live input and output channels of every block."""
    return cm.in_mat @ m, cm.out_mat @ m


def macs(cm: CostModel, masks: torch.Tensor) -> torch.Tensor:
    """R(m): MACs per sample of the network with unit masks `masks` (exact for 0/1 masks)."""
    m = _ext(masks)
    a, b = _block_sums(cm, m)
    return (cm.coeff * a * b).sum()


def macs_and_marginals(cm: CostModel, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """R(m) and d, where d_u = R(m) − R(m without unit u) for live units, 0 for removed ones."""
    m = _ext(masks)
    a, b = _block_sums(cm, m)
    total = float((cm.coeff * a * b).sum())
    d = cm.in_mat_t @ (cm.coeff * b) + cm.out_mat_t @ (cm.coeff * a) - cm.both_cost
    return total, d[:-1] * m[:-1]


def layer_macs(cm: CostModel, masks: torch.Tensor) -> dict[str, int]:
    """Per-layer MACs per sample of the masked network."""
    m = _ext(masks)
    a, b = _block_sums(cm, m)
    per = torch.zeros(len(cm.layer_names), dtype=torch.float64).index_add_(
        0, cm.block_layer, cm.coeff * a * b
    )
    return {n: int(round(float(v))) for n, v in zip(cm.layer_names, per, strict=True)}


def hooked_macs(
    model: nn.Module, example_input: torch.Tensor
) -> dict[str, tuple[nn.Module, tuple[int, ...], int]]:
    """Per counted layer, in call order: (module, output shape, MACs per sample), measured
    with forward hooks (a layer called twice counts twice)."""
    names = {m: n for n, m in model.named_modules()}
    batch = int(example_input.shape[0])
    found: dict[str, tuple[nn.Module, tuple[int, ...], int]] = {}

    def hook(mod: nn.Module, _inp: object, out: object) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(mod, nn.Linear):
            n = out.numel() * mod.in_features
        else:
            k = 1
            for s in mod.kernel_size:  # type: ignore[union-attr]
                k *= int(s)
            n = out.numel() * k * int(mod.in_channels // mod.groups)  # type: ignore[operator]
        shape, total = found[names[mod]][1:] if names[mod] in found else (out.shape[1:], 0)
        found[names[mod]] = (mod, tuple(shape), total + n // batch)

    counted = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    forward_with_hooks(
        model, example_input, [(m, hook) for m in model.modules() if isinstance(m, counted)]
    )
    return found


def forward_with_hooks(
    model: nn.Module, example_input: torch.Tensor, hooks: list[tuple[nn.Module, Any]]
) -> None:
    """One forward pass of `model` (eval mode, no gradients) with forward hooks on some of
    its modules; the hooks are removed and the mode restored afterwards."""
    handles = [m.register_forward_hook(h) for m, h in hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs per sample of `model` by this module's convention, measured with forward hooks."""
    return sum(macs for _, _, macs in hooked_macs(model, example_input).values())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
