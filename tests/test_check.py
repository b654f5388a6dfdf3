"""`taperprune check` and `macs`: a dry run in seconds, --exclude patterns that cover the
layers the graph refuses, squeeze-excitation blocks pruned exactly, MACs of models without
a channel graph, and a table that keeps its numbers whole at 80 columns."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from typer.testing import CliRunner

from taperprune import cli_inspect
from taperprune.cli import app
from taperprune.cost import build_cost_model, count_macs, layer_macs, macs
from taperprune.errors import GraphError, TaperpruneError
from taperprune.graph import FIXED, UnmaskableLayerError, build_graph
from taperprune.inspect_model import exclude_patterns, hook_layer_macs, macs_report
from taperprune.masks import ChannelMasks
from taperprune.models import build_model
from taperprune.run.config import RunConfig
from taperprune.surgery import remove_masked
from taperprune.width_floor import ratio_floors
from test_equivalence import random_keep, randomise

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

ATTN_NET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t, _ = self.attn(t, t, t)
        return t.transpose(1, 2).reshape(b, c, hh, ww)


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(8) for _ in range(3)])
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(torch.relu(self.stem(x))))
        return self.fc(torch.relu(x).mean((2, 3)))


def build(num_classes=1000):
    return Net(num_classes)
"""


@pytest.fixture
def attn_net(tmp_path: Path) -> str:
    path = tmp_path / "attn_net.py"
    path.write_text(ATTN_NET)
    return f"{path}:build"


def _invoke(*args: str, columns: int = 200) -> tuple[int, str, BaseException | None]:
    res = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    return res.exit_code, res.output, res.exception


# --- exclude patterns -------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["features", "block", "se", "fc1", "fc2", "conv", "0", "1", "12", "s?[1]"]
)
NAMES = st.lists(st.lists(SEGMENTS, min_size=1, max_size=5).map(".".join), min_size=1, max_size=25)


@given(NAMES, st.data())
def test_patterns_cover_every_name_and_avoid_the_others(names: list[str], data) -> None:
    names = list(dict.fromkeys(names))
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    avoid = [n for n in names if n not in chosen]
    patterns = exclude_patterns(chosen, avoid)
    for n in chosen:
        assert any(fnmatch.fnmatchcase(n, p) for p in patterns), (n, patterns)
    for n in avoid:
        assert not any(fnmatch.fnmatchcase(n, p) for p in patterns), (n, patterns)
    assert all(any(fnmatch.fnmatchcase(n, p) for n in chosen) for p in patterns)
    assert len(patterns) <= len(chosen)


def test_patterns_compress_a_repeated_structure() -> None:
    model = build_model("efficientnet_b0", num_classes=10)
    names = [n for n, _ in model.named_modules()]
    se = [n for n in names if n.endswith((".fc1", ".fc2"))]
    assert len(se) == 32
    params = [n for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
    patterns = exclude_patterns(se, [n for n in params if n not in se])
    assert len(patterns) == 1 and "*" in patterns[0], patterns
    assert set(fnmatch.filter(params, patterns[0])) == set(se)
    # Names a layer in both lists cannot avoid, and names with fnmatch's own characters.
    assert exclude_patterns(["a.b"], ["a.b"]) == ["a.b"]
    assert exclude_patterns(["x[0]"], ["x0"]) == ["x[[]0[]]"]


# --- the graph's refusal suggests them, and check proves they work ----------------------


def test_graph_refusal_names_every_layer_and_one_pattern(attn_net: str) -> None:
    model = build_model(attn_net, num_classes=10)
    with pytest.raises(UnmaskableLayerError) as info:
        build_graph(model, torch.zeros(1, 3, 8, 8))
    err = info.value
    assert err.layers == ("blocks.0.attn", "blocks.1.attn", "blocks.2.attn")
    assert err.patterns == ("*.attn",)
    assert "3 layers (MultiheadAttention" in str(err) and "--exclude '*.attn'" in str(err)
    graph = build_graph(model, torch.zeros(1, 3, 8, 8), exclude=err.patterns)
    assert [g.root for g in graph.groups] == ["stem", "head"]


def test_check_suggests_the_pattern_then_passes_with_it(attn_net: str) -> None:
    code, out, exc = _invoke("check", attn_net, "--input", "3x8x8", "--budgets", "0.8,0.7")
    assert isinstance(exc, TaperpruneError) and code != 0
    assert "add --exclude '*.attn'" in str(exc)
    assert "with --exclude '*.attn' added:" in out and "feasible" in out
    code, out, exc = _invoke(
        "check", attn_net, "--input", "3x8x8", "--budgets", "0.8,0.7", "--exclude", "*.attn"
    )
    assert code == 0 and exc is None, out
    assert "ok: `taperprune prune" in " ".join(out.split())


# --- check's figures and defaults -------------------------------------------------------


def test_check_defaults_are_prunes() -> None:
    assert ",".join(RunConfig().budgets) == cli_inspect.DEFAULT_BUDGETS
    assert RunConfig().data == "fashion-mnist"  # 10 classes: cli_inspect.DEFAULT_NUM_CLASSES
    assert cli_inspect.DEFAULT_NUM_CLASSES == 10


def test_check_efficientnet_b0_prints_groups_minimum_and_budgets() -> None:
    code, out, exc = _invoke("check", "efficientnet_b0", "--input", "3x64x64")
    assert code == 0 and exc is None, out
    model = build_model("efficientnet_b0", num_classes=10)
    full = count_macs(model, torch.zeros(1, 3, 64, 64))
    text = " ".join(out.split())
    assert f"10 classes: {full:,} MACs" in text
    assert "channel groups: 40 prunable, 11,404 units; 1 kept whole" in text
    assert "classifier.1: its channels are the model's output" in text
    assert "least reachable:" in text
    for frac in ("0.5", "0.25", "0.125"):
        assert f"{frac} {round(float(frac) * full):,}" in text


def test_check_infeasible_budget_exits_2_with_one_line() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "taperprune", "check", "demo_cnn", "--budgets", "0.5,0.0001"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "infeasible: below the least reachable" in res.stdout
    errors = [line for line in res.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "least this model can reach" in errors[0]
    assert "Traceback" not in res.stdout + res.stderr


def _least_with(model: torch.nn.Module, example: torch.Tensor, floors: torch.Tensor) -> int:
    """MACs with the model pruned to `floors` units in every group, counted independently."""
    graph = build_graph(model, example)
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    for g in range(len(graph.groups)):
        units = (graph.unit_group == g).nonzero().flatten()
        keep[units[: int(floors[g])]] = True
    return count_macs(remove_masked(model, graph, keep), example)


def test_check_max_pruning_ratio_sets_the_least_and_is_passed_on() -> None:
    model, x = build_model("demo_cnn", num_classes=10), torch.zeros(1, 1, 28, 28)
    graph = build_graph(model, x)
    floors = ratio_floors(graph.unit_group, len(graph.groups), 0.9)
    least = _least_with(model, x, floors)
    code, out, exc = _invoke(
        "check", "demo_cnn", "--budgets", "0.5,0.05", "--max-pruning-ratio", "0.9"
    )
    text = " ".join(out.split())
    assert code == 0 and exc is None, out
    assert f"least reachable: {least:,} MACs" in text and "(--max-pruning-ratio)" in text
    assert "--budgets 0.5,0.05 --max-pruning-ratio 0.9` passes" in text
    code, out, exc = _invoke(
        "check", "demo_cnn", "--budgets", "0.5,0.01", "--max-pruning-ratio", "0.9"
    )
    assert code != 0 and "infeasible: below the least reachable" in out
    assert "max_pruning_ratio=0.9" in str(exc)
    code, _, _ = _invoke("check", "demo_cnn", "--budgets", "0.5,0.01")  # no cap: reachable
    assert code == 0


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--max-pruning-ratio", "0"], "max_pruning_ratio must be in (0, 1]"),
        (["--max-pruning-ratio", "0.9", "--round-to", "8"], "needs --round-to 1"),
    ],
)
def test_check_refuses_a_bad_cap_before_building_the_model(flags: list[str], why: str) -> None:
    code, out, exc = _invoke("check", "no_such_model", *flags)
    assert code != 0 and isinstance(exc, TaperpruneError)
    assert why in str(exc) and "no_such_model" not in str(exc)


def test_macs_builds_models_with_prunes_classes(attn_net: str) -> None:
    # The builder's own default is 1000 classes; prune's default data set has 10.
    code, out, exc = _invoke("macs", attn_net, "--input", "3x8x8")
    assert code == 0, exc
    text = " ".join(out.split())
    assert "│ fc │ Linear │ 16 → 10 │" in text and "--exclude '*.attn'" in text
    code, out, exc = _invoke("macs", "alexnet_bvlc", "--num-classes", "1000")
    assert code == 0, exc
    assert "724,406,816" in out  # the BVLC figure, 1000 classes at 227 px


# --- squeeze-excitation blocks ----------------------------------------------------------


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small"])
def test_squeeze_excitation_is_pruned_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = randomise(build_model(name, num_classes=10))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    graph = build_graph(model, x[:1])
    roots = {g.root for g in graph.groups}
    se = [n[: -len(".fc1")] for n, _ in model.named_modules() if n.endswith(".fc1")]
    assert se and graph.fixed_groups.keys() == {"classifier.1" if "eff" in name else "classifier.3"}
    for block in se:
        fc1, fc2 = graph.layers[f"{block}.fc1"], graph.layers[f"{block}.fc2"]
        assert f"{block}.fc1" in roots  # the squeeze width is a group of its own
        assert torch.equal(fc2.in_units, fc1.out_units)
        # The excitation's outputs stay tied to the channels they scale (the SE's input).
        assert torch.equal(fc2.out_units, fc1.in_units) and bool((fc2.out_units != FIXED).all())
    cm = build_cost_model(graph)
    keep = random_keep(graph, seed=3)
    masks = ChannelMasks(model, graph)
    masks.set_keep(keep)
    with torch.no_grad():
        masked = model(x)
    small = remove_masked(model, graph, keep).eval()
    with torch.no_grad():
        pruned = small(x)
    assert (masked - pruned).abs().max().item() <= 1e-6 * masked.abs().max().item()
    assert count_macs(small, x[:1]) == round(float(macs(cm, keep))) < cm.full_macs
    masks.remove()


# --- MACs without a channel graph: ShuffleNet-V2 ----------------------------------------


def test_hook_counter_agrees_with_the_graph_layer_by_layer() -> None:
    model = build_model("efficientnet_b0", num_classes=10)
    x = torch.zeros(1, 3, 64, 64)
    graph = build_graph(model, x)
    analytic = layer_macs(build_cost_model(graph), torch.ones(graph.num_units, dtype=torch.bool))
    hooked = {r.name: r.macs for r in hook_layer_macs(model, x)}
    assert hooked == analytic
    assert sum(hooked.values()) == count_macs(model, x)


def test_macs_counts_shufflenet_by_hooks_with_groups_unknown() -> None:
    model = build_model("shufflenet_v2_x0_5", num_classes=10)
    x = torch.zeros(1, 3, 64, 64)
    report = macs_report(model, x)
    assert report.graph is None and report.total == count_macs(model, x)
    assert {r.prunable for r in report.rows} == {"unknown"}
    code, out, exc = _invoke("macs", "shufflenet_v2_x0_5", "--input", "3x64x64")
    assert code == 0, exc
    text = " ".join(out.split())
    assert f"total: {report.total:,} MACs" in text and "channel groups unknown" in text
    assert "channel shuffle (view → transpose → view) after layer 'stage4." in text


def test_shufflenet_refusal_names_the_layer_and_why_exclude_cannot_help() -> None:
    model = build_model("shufflenet_v2_x0_5", num_classes=10)
    x = torch.zeros(1, 3, 64, 64)
    for exclude in ((), ("stage*",)):  # keeping every shuffled stage whole does not help
        with pytest.raises(GraphError, match=r"after layer 'stage4\.1\.branch2\.6'.*--exclude"):
            build_graph(model, x, exclude=exclude)
    code, out, exc = _invoke("check", "shufflenet_v2_x0_5", "--input", "3x64x64")
    assert isinstance(exc, GraphError) and "cannot help" in str(exc)
    assert f"{count_macs(model, x):,} MACs" in out  # counted all the same


# --- 80 columns ---------------------------------------------------------------------------


def test_wrap_name_keeps_every_character() -> None:
    for width in (4, 9, 13, 40):
        name = "features.10.0.block.2.fc1"
        lines = cli_inspect.wrap_name(name, width).split("\n")
        assert "".join(lines) == name and all(len(line) <= width for line in lines)


@pytest.mark.parametrize("name", ["efficientnet_b0", "shufflenet_v2_x0_5"])
def test_macs_at_80_columns_keeps_every_number_whole(name: str) -> None:
    code, out, exc = _invoke("macs", name, columns=80)
    assert code == 0, exc
    lines = out.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    shown: list[list[str]] = []  # [name, MACs] per layer, names put back together
    body = lines[next(i for i, line in enumerate(lines) if "╇" in line) + 1 :]
    for line in (line for line in body if "│" in line):
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells[4]:
            shown.append([cells[0], cells[4]])
        else:  # a layer name wrapped onto the next line
            shown[-1][0] += cells[0]
    rows = macs_report(build_model(name, num_classes=10), torch.zeros(1, 3, 224, 224)).rows
    assert shown == [[r.name, f"{r.macs:,}"] for r in rows]
    assert f"total: {sum(r.macs for r in rows):,} MACs" in out
