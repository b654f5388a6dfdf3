"""Channel groups of a network: which channels must go together, and where each one sits.

Built from one recorded forward pass and torch-pruning's dependency graph (`trace.py`).
A *group* is a set of channels that must be removed together (a conv's outputs, the BN
after it, the next layer's inputs, every branch of a residual add, ...). Channels of a
group that feed or leave a grouped (non-depthwise) conv are further tied into *units*:
the same position in every conv group, so that removal keeps the conv groups valid.
Masks, scores and the budget solve all work on units; for most networks a unit is one
channel.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from .errors import GraphError
from .trace import (
    COUNTED_TYPES,
    CROSS_CHANNEL_TYPES,
    NORM_TYPES,
    is_depthwise,
    macs_per_pair,
    module_names,
    record_forward,
    trace_dependencies,
)

__all__ = [
    "COUNTED_TYPES",
    "CROSS_CHANNEL_TYPES",
    "FIXED",
    "NORM_TYPES",
    "ChannelGraph",
    "build_graph",
]

FIXED = -1  # unit index of a channel that is never removed


@dataclass(frozen=True)
class LayerChannels:
    """One conv/linear/BN layer: the unit behind each input and output index."""

    name: str
    kind: str  # "conv" | "linear" | "norm"
    in_units: torch.Tensor  # (C_in,) long, FIXED where not prunable
    out_units: torch.Tensor  # (C_out,) long
    conv_groups: int = 1
    macs_per_pair: int = 0  # MACs per (input, output) channel pair of one conv group
    output_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def depthwise(self) -> bool:
        return (
            self.kind == "conv"
            and self.conv_groups > 1
            and (self.conv_groups == len(self.in_units) == len(self.out_units))
        )


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together, indexed by the root layer's output channels."""

    index: int
    root: str  # name of the conv/linear whose output channels index the group
    channel_units: torch.Tensor  # (C_root,) long: unit of each root channel
    layers: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.channel_units)


@dataclass
class ChannelGraph:
    """Groups, units and per-layer channel maps of one model, for one input size."""

    groups: list[ChannelGroup]
    layers: dict[str, LayerChannels]
    unit_group: torch.Tensor  # (N,) long: group of each unit
    unit_size: torch.Tensor  # (N,) long: channels of the root layer in each unit
    input_shape: tuple[int, ...]
    mask_sites: list[tuple[str, str]] = field(default_factory=list)  # (layer, "norm"|"weight")
    fixed_groups: dict[str, str] = field(default_factory=dict)  # root name -> why not prunable

    @property
    def num_units(self) -> int:
        return len(self.unit_group)

    def units_of_group(self, group: int) -> torch.Tensor:
        return torch.nonzero(self.unit_group == group).flatten()

    def removed_root_channels(self, keep: torch.Tensor) -> dict[str, list[int]]:
        """Root layer name -> root channel indices whose unit is not kept."""
        out: dict[str, list[int]] = {}
        for g in self.groups:
            gone = torch.nonzero(~keep[g.channel_units]).flatten().tolist()
            if gone:
                out[g.root] = gone
        return out

    def kept_indices(self, keep: torch.Tensor) -> dict[str, dict[str, list[int]]]:
        """Per layer, the input and output indices that survive removal of unkept units."""
        ext = torch.cat([keep.bool(), torch.ones(1, dtype=torch.bool)])
        return {
            name: {
                "in": torch.nonzero(ext[lay.in_units]).flatten().tolist(),
                "out": torch.nonzero(ext[lay.out_units]).flatten().tolist(),
            }
            for name, lay in self.layers.items()
        }


class UnmaskableLayerError(GraphError):
    """Layers in prunable groups that cannot be masked exactly; `patterns`: --exclude
    patterns that cover them and, where possible, no other parametrised layer."""

    def __init__(self, model: nn.Module, refused: dict[str, tuple[str, str]]) -> None:
        from .inspect_model import exclude_patterns  # not at the top: it imports this module

        named = dict(model.named_modules())
        self.layers = tuple(n for n in named if n in refused)
        avoid = [n for n, m in named.items() if n not in refused and list(m.parameters(False))]
        self.patterns = tuple(exclude_patterns(self.layers, avoid))
        first, n, it = self.layers[0], len(refused), "it" if len(refused) == 1 else "them"
        kind, root = refused[first]
        kinds = ", ".join(sorted({k for k, _ in refused.values()}))
        what = (
            f"layer {first!r} ({kind}) sits in the prunable channel group of {root!r}"
            if n == 1
            else f"{n} layers ({kinds}; e.g. {first!r} in the group of {root!r}) sit in "
            "prunable channel groups"
        )
        super().__init__(
            f"{what} and taperprune cannot mask {it} exactly; exclude {it} with --exclude "
            f"'{','.join(self.patterns)}' (Python: exclude={list(self.patterns)!r})."
        )


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(self, x: tuple[int, int]) -> tuple[int, int]:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def build_graph(
    model: nn.Module, example_input: torch.Tensor, *, exclude: Sequence[str] = ()
) -> ChannelGraph:
    """Build the channel groups of `model` for inputs shaped like `example_input`.

    `exclude` holds layer names or fnmatch patterns: every group that touches a
    matching layer keeps all its channels.
    """
    names = module_names(model)
    all_names = [n for n in names.values() if n]
    for pat in exclude:
        if not any(fnmatch.fnmatchcase(n, pat) for n in all_names):
            raise GraphError(
                f"exclude pattern {pat!r} matches no layer of the model; layer names look like "
                f"{', '.join(repr(n) for n in all_names[:4])} (see `taperprune macs MODEL`)."
            )
    shapes, producers = record_forward(model, example_input)
    if not shapes:
        raise GraphError(
            "the model has no Conv or Linear layer, so there is nothing to prune or count."
        )

    dg, cross_nodes = trace_dependencies(model, example_input)

    tp_groups = list(
        dg.get_all_groups(
            ignored_layers=[], root_module_types=[nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear]
        )
    )
    layer_of: dict[str, nn.Module] = {
        n: m for m, n in names.items() if isinstance(m, COUNTED_TYPES + NORM_TYPES)
    }
    # Per layer: (group, root channel) behind each input / output index.
    in_map: dict[str, list[tuple[int, int] | None]] = {}
    out_map: dict[str, list[tuple[int, int] | None]] = {}
    for n, m in layer_of.items():
        cin, cout = _channels(m)
        in_map[n], out_map[n] = [None] * cin, [None] * cout

    groups_raw: list[tuple[str, int, list[str]]] = []
    fixed: dict[str, str] = {}
    refused: dict[str, tuple[str, str]] = {}  # layer -> (type, root of its group)
    for tp_group in tp_groups:
        root_mod = tp_group[0].dep.target.module
        root = names[root_mod]
        size = _channels(root_mod)[1]
        members: list[str] = []
        why = None
        for item in tp_group:
            mod = item.dep.target.module
            node = item.dep.target
            if node in cross_nodes:
                why = "a cross-channel layer (LRN/GroupNorm/LayerNorm) mixes its channels"
            if isinstance(mod, tp.ops._OutputOp):
                why = "its channels are the model's output"
                continue
            if not isinstance(mod, nn.Module) or isinstance(mod, tp.ops._ElementWiseOp):
                continue
            name = names.get(mod)
            if name is None:
                continue
            if isinstance(mod, CROSS_CHANNEL_TYPES):
                why = f"layer {name!r} ({type(mod).__name__}) mixes channels"
            elif (
                not isinstance(mod, COUNTED_TYPES + NORM_TYPES + (nn.PReLU,))
                and any(True for _ in mod.parameters(recurse=False))
                and not any(_matches(names.get(i.dep.target.module, ""), exclude) for i in tp_group)
            ):
                refused.setdefault(name, (type(mod).__name__, root))
            members.append(name)
            if name in producers and dg.is_out_channel_pruning_fn(item.dep.handler):
                why = "its channels are the model's output"
            if _matches(name, exclude):
                why = f"layer {name!r} is excluded"
        if why is not None:
            fixed[root] = why
            continue
        gi = len(groups_raw)
        groups_raw.append((root, size, members))
        for item in tp_group:
            mod = item.dep.target.module
            name = names.get(mod) if isinstance(mod, nn.Module) else None
            if name not in layer_of:
                continue
            lay = layer_of[name]
            both = isinstance(lay, NORM_TYPES) or is_depthwise(lay)
            is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
            width = len(out_map[name]) if is_out else len(in_map[name])
            if any(not 0 <= local < width for local in item.idxs) or (
                both and any(local >= len(in_map[name]) for local in item.idxs)
            ):
                raise GraphError(
                    f"torch-pruning maps channels of the group of {root!r} outside layer "
                    f"{name!r} ({type(lay).__name__}); known for convs with groups == "
                    "out_channels < in_channels beside a concat. Keep them whole with "
                    f"--exclude {name!r}"
                )
            for local, r in zip(item.idxs, item.root_idxs, strict=True):
                if both or is_out:
                    out_map[name][local] = (gi, r)
                if both or not is_out:
                    in_map[name][local] = (gi, r)

    if refused:
        raise UnmaskableLayerError(model, refused)

    # Tie channels of grouped convs by position within their conv group.
    uf = _UnionFind()
    bad_groups: set[int] = set()
    for name, m in layer_of.items():
        if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) or m.groups == 1 or is_depthwise(m):
            continue
        for side in (in_map[name], out_map[name]):
            per = len(side) // m.groups
            for p in range(per):
                members_at = [side[j * per + p] for j in range(m.groups)]
                live = [x for x in members_at if x is not None]
                if len(live) != len(members_at) or len({g for g, _ in live}) > 1:
                    bad_groups.update(g for g, _ in live)
                    continue
                for x in live[1:]:
                    uf.union(live[0], x)
    for g in sorted(bad_groups):
        fixed[groups_raw[g][0]] = "its channels feed a grouped conv together with fixed channels"

    # Number the units: group order, then lowest root channel.
    unit_of: dict[tuple[int, int], int] = {}
    unit_group: list[int] = []
    unit_size: list[int] = []
    groups: list[ChannelGroup] = []
    remap: dict[int, int] = {}
    order = sorted(
        (g for g in range(len(groups_raw)) if g not in bad_groups),
        key=lambda g: all_names.index(groups_raw[g][0]),
    )
    for g in order:
        root, size, members = groups_raw[g]
        new_g = len(groups)
        remap[g] = new_g
        ch_units = []
        for r in range(size):
            rep = uf.find((g, r))
            if rep not in unit_of:
                unit_of[rep] = len(unit_group)
                unit_group.append(new_g)
                unit_size.append(0)
            u = unit_of[rep]
            unit_size[u] += 1
            ch_units.append(u)
        groups.append(
            ChannelGroup(new_g, root, torch.tensor(ch_units, dtype=torch.long), tuple(members))
        )

    def to_units(side: list[tuple[int, int] | None]) -> torch.Tensor:
        return torch.tensor(
            [unit_of[uf.find(x)] if x is not None and x[0] in remap else FIXED for x in side],
            dtype=torch.long,
        )

    layers: dict[str, LayerChannels] = {}
    batch = int(example_input.shape[0])
    for name, m in layer_of.items():
        if isinstance(m, NORM_TYPES):
            layers[name] = LayerChannels(
                name, "norm", to_units(in_map[name]), to_units(out_map[name])
            )
            continue
        outs = tuple(tuple(s) for s in shapes.get(name, []))
        layers[name] = LayerChannels(
            name,
            "linear" if isinstance(m, nn.Linear) else "conv",
            to_units(in_map[name]),
            to_units(out_map[name]),
            conv_groups=getattr(m, "groups", 1),
            macs_per_pair=macs_per_pair(m, outs, batch),
            output_shapes=outs,
        )
    if not groups:
        reasons = "; ".join(f"{r}: {w}" for r, w in list(fixed.items())[:5])
        raise GraphError(
            "the model has no prunable channel group (every group is fixed"
            + (f" — {reasons}" if reasons else "")
            + "). Check --exclude, or prune a model with hidden conv/linear layers."
        )
    graph = ChannelGraph(
        groups=groups,
        layers=layers,
        unit_group=torch.tensor(unit_group, dtype=torch.long),
        unit_size=torch.tensor(unit_size, dtype=torch.long),
        input_shape=tuple(example_input.shape[1:]),
        fixed_groups=fixed,
    )
    graph.mask_sites = _mask_sites(dg, names, layers, layer_of)
    return graph


def _channels(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, NORM_TYPES):
        return m.num_features, m.num_features
    return m.in_channels, m.out_channels  # type: ignore[return-value]


def _mask_sites(
    dg: tp.DependencyGraph,
    names: dict[nn.Module, str],
    layers: dict[str, LayerChannels],
    layer_of: dict[str, nn.Module],
) -> list[tuple[str, str]]:
    """Where masks go: every BN of a group, and each producer not followed only by such a BN."""
    sites: list[tuple[str, str]] = []
    for name, lay in layers.items():
        if not bool((lay.out_units != FIXED).any()):
            continue
        if lay.kind == "norm":
            sites.append((name, "norm"))
            continue
        node = dg.module2node.get(layer_of[name])
        nexts = [] if node is None else node.outputs
        followed_by_norm = bool(nexts) and all(
            isinstance(n.module, NORM_TYPES)
            and names.get(n.module) in layers
            and torch.equal(layers[names[n.module]].out_units, lay.out_units)
            for n in nexts
        )
        if not followed_by_norm:
            sites.append((name, "weight"))
    return sites
