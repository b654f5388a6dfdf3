"""Zoo coverage: one case per torchvision classification family (plus `alexnet_bvlc`).

Each supported family is built with random weights and random BN statistics, in
float64, at a small input; a random keep mask bisected to about half of the full MACs
is applied, and then: pruned ≡ masked, analytic MACs ≡ hook counter ≡ torch's
FlopCounterMode, and the group structure is the one docs/MODELS.md lists. A family
taperprune cannot prune fails with a GraphError whose message says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from taperprune.cost import CostModel, build_cost_model, count_macs, macs
from taperprune.errors import GraphError
from taperprune.graph import ChannelGraph, build_graph
from taperprune.masks import ChannelMasks, _MaskedForward
from taperprune.models import build_model
from taperprune.surgery import remove_masked
from test_equivalence import flop_counter_macs, randomise

pytestmark = pytest.mark.usefixtures("one_thread")

OUTPUT = "its channels are the model's output"
NO_AUX = {"aux_logits": False, "init_weights": False}


@dataclass(frozen=True)
class Family:
    """How a family is tested and what its channel graph must look like."""

    size: int  # square input side used in the test
    prunable: int = 0  # expected number of prunable groups
    fixed: dict[str, str] = field(default_factory=dict)  # expected graph.fixed_groups
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder arguments
    error: str | None = None  # unsupported: regex the GraphError message must match


FAMILIES: dict[str, Family] = {
    "vgg11": Family(32, 10, {"classifier.6": OUTPUT}),
    "vgg11_bn": Family(32, 10, {"classifier.6": OUTPUT}),
    "alexnet": Family(64, 7, {"classifier.6": OUTPUT}),  # three 3/2 max-pools: ≥ 63 px
    "alexnet_bvlc": Family(227, 7, {"1.7": OUTPUT}),  # flatten → Linear(256·6·6): 227 px
    "resnet18": Family(32, 12, {"fc": OUTPUT}),
    "resnext50_32x4d": Family(32, 37, {"fc": OUTPUT}),
    "wide_resnet50_2": Family(32, 37, {"fc": OUTPUT}),
    "mobilenet_v2": Family(32, 25, {"classifier.1": OUTPUT}),
    "mobilenet_v3_small": Family(32, 27, {"classifier.3": OUTPUT}),
    "shufflenet_v2_x0_5": Family(
        32,
        error=r"could not trace the model's channel dependencies: ZeroDivisionError"
        r".*channel-shuffle view",
    ),
    "densenet121": Family(32, 120, {"classifier": OUTPUT}),
    "efficientnet_b0": Family(32, 40, {"classifier.1": OUTPUT}),
    "regnet_x_400mf": Family(32, 49, {"fc": OUTPUT}),
    "regnet_y_400mf": Family(32, 53, {"fc": OUTPUT}),
    "googlenet": Family(32, 57, {"fc": OUTPUT}, NO_AUX),
    "inception_v3": Family(75, 94, {"fc": OUTPUT}, NO_AUX),  # smallest input it accepts
}


def keep_near(
    graph: ChannelGraph, cm: CostModel, target: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """A random keep mask whose MACs are just at or below `target` of the full MACs.

    Each unit draws r ~ U(0, 1) once and is kept when r ≥ p; the unit with the highest r
    in each group is always kept. MACs then fall monotonically in p, so p is bisected.
    (Keeping a fraction q of every group gives about q² of the MACs, so p ends near 0.3.)
    """
    full = cm.full_macs
    r = torch.rand(graph.num_units, generator=torch.Generator().manual_seed(seed))
    always = torch.zeros(graph.num_units, dtype=torch.bool)
    for gi in range(len(graph.groups)):
        units = graph.units_of_group(gi)
        always[units[r[units].argmax()]] = True
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if float(macs(cm, (r >= mid) | always)) > target * full:
            lo = mid
        else:
            hi = mid
    return (r >= hi) | always


@pytest.mark.parametrize("name", list(FAMILIES))
def test_zoo_family(name: str) -> None:
    fam = FAMILIES[name]
    torch.manual_seed(0)
    model = randomise(build_model(name, num_classes=10, **fam.kwargs))
    x = torch.randn(2, 3, fam.size, fam.size, dtype=torch.float64)
    if fam.error is not None:
        with pytest.raises(GraphError, match=fam.error):
            build_graph(model, x[:1])
        return

    graph = build_graph(model, x[:1])
    assert len(graph.groups) == fam.prunable > 0
    assert graph.fixed_groups == fam.fixed
    cm = build_cost_model(graph)
    full = cm.full_macs
    assert full == count_macs(model, x[:1]) == flop_counter_macs(model, x[:1])

    keep = keep_near(graph, cm)
    masks = ChannelMasks(model, graph)
    masks.set_keep(keep)
    with torch.no_grad():
        masked_out = model(x)
    small = remove_masked(model, graph, keep).eval()
    assert not any(isinstance(m.__dict__.get("forward"), _MaskedForward) for m in small.modules())
    with torch.no_grad():
        pruned_out = small(x)
    assert masked_out.shape == pruned_out.shape == (2, 10)
    scale = masked_out.abs().max().item()
    assert scale > 0
    assert (masked_out - pruned_out).abs().max().item() <= 1e-6 * scale

    expected = round(float(macs(cm, keep)))
    assert count_macs(small, x[:1]) == expected == flop_counter_macs(small, x[:1])
    assert 0.3 * full <= expected <= 0.7 * full
    masks.remove()
