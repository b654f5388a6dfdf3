"""Opening a snapshot someone sent (issue 14): `load` runs no code from it, checks every
field of its plan and every tensor, and says what is wrong on one line, naming the file
and the field, never with a traceback of an IndexError/KeyError/TypeError/ValueError."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import taperprune
from taperprune.cost import count_macs, count_params
from taperprune.errors import TaperpruneError
from taperprune.graph import build_graph
from taperprune.models import build_model, canonical_name, demo_cnn
from taperprune.plan import load, make_plan, read_plan, save_snapshot_files, save_with_plan
from taperprune.run.timing import models_to_time
from taperprune.surgery import remove_masked

SHAPE = (1, 16, 16)
KWARGS = {"num_classes": 10, "in_channels": 1, "width": 8}
USER_MODELS = Path(__file__).parent / "models" / "user_models.py"
EVIL = """
from pathlib import Path

Path(__file__).with_name("MARKER").write_text("imported")


def fn(**kwargs):
    Path(__file__).with_name("MARKER").write_text("called")
    import torch

    return torch.nn.Linear(1, 1)
"""


@dataclass(frozen=True)
class Snap:
    directory: Path
    plan: dict[str, Any]
    small: nn.Module


def _snapshot(
    directory: Path,
    net: nn.Module,
    name: str,
    kwargs: dict[str, Any],
    shape: tuple[int, ...] = SHAPE,
) -> Snap:
    """Prune `net` (the first unit of every group dropped) and save the snapshot."""
    torch.manual_seed(0)
    net.eval()
    graph = build_graph(net, torch.zeros((1, *shape)))
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    for g in range(len(graph.groups)):
        keep[graph.units_of_group(g)[0]] = False
    small = remove_masked(net, graph, keep).eval()
    example = torch.zeros((1, *shape))
    plan = make_plan(
        graph,
        keep,
        model_name=name,
        model_kwargs=kwargs,
        macs=count_macs(small, example),
        params=count_params(small),
    )
    save_snapshot_files(directory, small, plan, {})
    return Snap(directory, plan, small)


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Snap:
    return _snapshot(
        tmp_path_factory.mktemp("plan") / "snap", demo_cnn(width=8), "demo_cnn", KWARGS
    )


def _copy(snap: Snap, tmp_path: Path, plan: Any) -> Path:
    d = tmp_path / "snap"
    shutil.copytree(snap.directory, d)
    (d / "plan.json").write_text(json.dumps(plan))
    return d


def _refused(call: Callable[[], object], *needles: str) -> str:
    """The one-line TaperpruneError `call` raises; it contains every needle."""
    with pytest.raises(TaperpruneError) as info:
        call()
    assert not isinstance(info.value, IndexError | KeyError | TypeError | ValueError)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_the_fixture_snapshot_loads_and_computes_the_pruned_model(snap: Snap) -> None:
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(load(snap.directory)(x), snap.small(x))
    assert read_plan(snap.directory) == snap.plan


# ---------------------------------------------------------------- no code from artefacts


def _evil_plan(snap: Snap, name: str) -> dict[str, Any]:
    plan = copy.deepcopy(snap.plan)
    plan["model"]["name"] = name
    return plan


def _assert_not_run(d: Path) -> None:
    assert not (d / "MARKER").exists(), "the model file named in the plan was run"


def test_a_plan_naming_a_python_file_runs_nothing(snap: Snap, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(EVIL)
    d = _copy(snap, tmp_path, _evil_plan(snap, f"{tmp_path / 'evil.py'}:fn"))
    msg = _refused(
        lambda: load(d),
        "plan.json: model.name:",
        "evil.py",
        "model=MyNet()",
        "trust_model_file=True",
        "--trust-model-file",
    )
    assert str(d) in msg
    _assert_not_run(tmp_path)


def test_a_relative_model_file_in_the_current_directory_runs_nothing(
    snap: Snap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _copy(snap, tmp_path, _evil_plan(snap, "evil.py:fn"))
    (d / "evil.py").write_text(EVIL)
    monkeypatch.chdir(d)
    _refused(lambda: load("."), "plan.json: model.name:", "'evil.py'")
    _refused(lambda: taperprune.load(d), "plan.json: model.name:", "'evil.py'")
    _assert_not_run(d)


def test_a_plan_in_safetensors_metadata_naming_a_file_runs_nothing(
    snap: Snap, tmp_path: Path
) -> None:
    (tmp_path / "evil.py").write_text(EVIL)
    one = tmp_path / "one.safetensors"
    save_with_plan(one, snap.small, _evil_plan(snap, f"{tmp_path / 'evil.py'}:fn"))
    _refused(lambda: load(one), "one.safetensors: model.name:", "evil.py", "trust_model_file")
    _assert_not_run(tmp_path)


def test_bench_latency_discovery_runs_nothing(snap: Snap, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(EVIL)
    d = _copy(snap, tmp_path, _evil_plan(snap, f"{tmp_path / 'evil.py'}:fn"))
    _refused(lambda: models_to_time(str(d), None, 10), "model.name", "evil.py")
    _assert_not_run(tmp_path)


@pytest.mark.parametrize("command", ["export", "bench-latency"])
def test_cli_commands_that_open_a_snapshot_run_nothing(
    snap: Snap, tmp_path: Path, command: str
) -> None:
    (tmp_path / "evil.py").write_text(EVIL)
    d = _copy(snap, tmp_path, _evil_plan(snap, f"{tmp_path / 'evil.py'}:fn"))
    (d / "metrics.json").unlink()  # a bare snapshot: the plan and the weights
    args = [str(d)] if command == "export" else [str(d), "--runs", "1", "--warmup", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "taperprune", command, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "evil.py" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    _assert_not_run(tmp_path)


def test_the_callers_own_model_is_used_and_the_file_is_not(snap: Snap, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(EVIL)
    d = _copy(snap, tmp_path, _evil_plan(snap, f"{tmp_path / 'evil.py'}:fn"))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(load(d, model=demo_cnn(width=8))(x), snap.small(x))
    _assert_not_run(tmp_path)


def test_trust_model_file_loads_a_plan_naming_a_builder_file(tmp_path: Path) -> None:
    spec = f"{USER_MODELS}:plain_cnn"
    kwargs = {"num_classes": 4, "in_channels": 1}
    s = _snapshot(tmp_path / "snap", build_model(spec, **kwargs), canonical_name(spec), kwargs)
    _refused(lambda: load(s.directory), "model.name", "user_models.py", "trust_model_file")
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.equal(load(s.directory, trust_model_file=True)(x), s.small(x))
        items, shape = models_to_time(str(s.directory), None, 4, trust_model_file=True)
        assert shape == SHAPE and torch.equal(items[-1][1](x), s.small(x))


def test_a_torchvision_plan_loads_with_weights_none(tmp_path: Path) -> None:
    kwargs = {"num_classes": 10, "in_channels": 3}  # what a run records
    shape = (3, 32, 32)
    s = _snapshot(tmp_path / "snap", build_model("resnet18", **kwargs), "resnet18", kwargs, shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(load(s.directory)(x), s.small(x))


def test_a_model_file_given_on_the_command_line_still_builds() -> None:
    assert isinstance(build_model(f"{USER_MODELS}:plain_cnn", num_classes=4), nn.Module)


# ---------------------------------------------------------------- tampered plans


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or, with value DELETE, remove) the field at a dotted path of the plan."""

    def apply(plan: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = plan
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value(plan) if callable(value) else value

    return apply


DELETE = object()
L0 = "layers['0']"  # the first conv's entry in messages

# (id, mutation, field named in the message)
TAMPERED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("kept_units-huge", _set("kept_units", [10**6]), "kept_units: 1000000 is out of range"),
    ("kept_units-str", _set("kept_units", ["a"]), "kept_units[0]"),
    ("kept_units-empty", _set("kept_units", []), "kept_units: is empty"),
    ("kept_units-negative", _set("kept_units", [-1]), "kept_units: -1 is out of range"),
    (
        "kept_units-duplicate",
        _set("kept_units", lambda p: p["kept_units"] + p["kept_units"][:1]),
        "kept_units",
    ),
    ("kept_units-float", _set("kept_units", [1.5]), "kept_units[0]"),
    ("kept_units-10**100", _set("kept_units", [10**100]), "kept_units"),
    ("kept_units-one-dropped", _set("kept_units", lambda p: p["kept_units"][1:]), f"{L0}.out"),
    (
        "kept_units-empties-a-group",
        _set("kept_units", lambda p: [u for u in p["kept_units"] if u >= 8]),
        "kept_units: keeps no unit",
    ),
    ("input_shape-negative", _set("input_shape", [1, -16, 16]), "input_shape[1]"),
    ("input_shape-huge", _set("input_shape", [1, 10**6, 10**6]), "input_shape"),
    ("input_shape-5-dims", _set("input_shape", [1, 1, 1, 16, 16]), "input_shape"),
    ("input_shape-other-channels", _set("input_shape", [3, 16, 16]), "input_shape"),
    ("input_shape-string", _set("input_shape", "1x16x16"), "input_shape"),
    ("width-negative", _set("model.kwargs.width", -8), "model.kwargs.width: -8 is negative"),
    ("num_classes-negative", _set("model.kwargs.num_classes", -3), "model.kwargs.num_classes"),
    ("width-other", _set("model.kwargs.width", 4), f"{L0}.width"),
    ("width-huge", _set("model.kwargs.width", 10**6), f"{L0}.width"),
    ("width-10**30", _set("model.kwargs.width", 10**30), "model.kwargs"),
    ("width-float", _set("model.kwargs.width", 8.5), "model.kwargs.width"),
    ("width-bool", _set("model.kwargs.width", True), "model.kwargs.width"),
    ("width-string", _set("model.kwargs.width", "8"), "model.kwargs.width"),
    ("weights-kwarg", _set("model.kwargs.weights", "DEFAULT"), "model.kwargs.weights"),
    (
        "torchvision-weights",
        _set("model", {"name": "resnet18", "kwargs": {"weights": "DEFAULT"}}),
        "model.kwargs.weights",
    ),
    (
        "torchvision-progress",
        _set("model", {"name": "resnet18", "kwargs": {"progress": True}}),
        "model.kwargs.progress",
    ),
    (
        "torchvision-callable-kwarg",
        _set("model", {"name": "resnet18", "kwargs": {"norm_layer": "os.system"}}),
        "model.kwargs.norm_layer",
    ),
    ("kwargs-list", _set("model.kwargs", [1, 2]), "model.kwargs"),
    ("kwargs-nan", _set("model.kwargs.width", float("nan")), "model.kwargs.width"),
    ("model-string", _set("model", "demo_cnn"), "model"),
    ("model-name-unknown", _set("model.name", "no_such_net"), "model.name"),
    ("model-name-empty", _set("model.name", ""), "model.name"),
    ("layers-list", _set("layers", []), "layers"),
    ("layers-empty", _set("layers", {}), "layers"),
    ("layer-kind", _set("layers.0.kind", "attention"), f"{L0}.kind"),
    ("layer-width-negative", _set("layers.0.width", [1, -8]), f"{L0}.width[1]"),
    ("layer-width-3", _set("layers.0.width", [1, 8, 8]), f"{L0}.width"),
    ("layer-out-range", _set("layers.0.out", [0, 99]), f"{L0}.out: 99 is out of range"),
    ("layer-out-repeated", _set("layers.0.out", [1, 1]), f"{L0}.out"),
    ("layer-extra-field", _set("layers.0.bias", True), f"{L0}.bias"),
    ("num_units-zero", _set("num_units", 0), "num_units"),
    ("num_units-other", _set("num_units", lambda p: p["num_units"] + 1), "num_units"),
    ("target_macs-negative", _set("target_macs", -1), "target_macs"),
    ("macs-float", _set("macs", 1.5), "macs"),
    ("params-string", _set("params", "many"), "params"),
    ("exclude-string", _set("exclude", "0"), "exclude"),
    ("exclude-unknown-layer", _set("exclude", ["nope"]), "exclude"),
    ("exclude-a-layer", _set("exclude", ["0"]), "num_units"),
    ("schema-string", _set("schema", "1"), "schema"),
    ("schema-2", _set("schema", 2), "schema"),
    ("unknown-field", _set("comment", "hi"), "comment"),
] + [
    (f"missing-{f}", _set(f, DELETE), f.replace("layers.0", L0))
    for f in (
        "schema",
        "model",
        "model.name",
        "model.kwargs",
        "input_shape",
        "target_macs",
        "macs",
        "params",
        "kept_units",
        "num_units",
        "layers",
        "layers.0.kind",
        "layers.0.width",
        "layers.0.in",
        "layers.0.out",
    )
]


@pytest.mark.parametrize(("mutate", "field"), [pytest.param(m, f, id=i) for i, m, f in TAMPERED])
def test_a_tampered_plan_is_named_on_one_line(
    snap: Snap, tmp_path: Path, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    plan = copy.deepcopy(snap.plan)
    mutate(plan)
    d = _copy(snap, tmp_path, plan)
    _refused(lambda: load(d), f"{d / 'plan.json'}: ", field)
    one = tmp_path / "one.safetensors"
    save_with_plan(one, snap.small, plan)
    _refused(lambda: load(one), f"{one}: ", field)


def test_the_message_reads_file_field_problem_and_fix(snap: Snap, tmp_path: Path) -> None:
    plan = copy.deepcopy(snap.plan)
    plan["kept_units"][0] = 10**6
    d = _copy(snap, tmp_path, plan)
    assert _refused(lambda: load(d)) == (
        f"{d / 'plan.json'}: kept_units: 1000000 is out of range [0, {plan['num_units']}) "
        "(the plan is corrupted; re-export the snapshot)"
    )


@pytest.mark.parametrize("text", ["[1, 2]", '"plan"', "1" * 5000, "[" * 100_000, "{"])
def test_a_plan_that_is_not_a_plan_object_is_named(snap: Snap, tmp_path: Path, text: str) -> None:
    d = _copy(snap, tmp_path, {})
    (d / "plan.json").write_text(text)
    _refused(lambda: load(d), "plan.json")


# ---------------------------------------------------------------- weights


def _with_tensor(snap: Snap, tmp_path: Path, name: str, tensor: torch.Tensor) -> Path:
    d = _copy(snap, tmp_path, snap.plan)
    state = {k: v.contiguous() for k, v in snap.small.state_dict().items()}
    state[name] = tensor
    save_file(state, str(d / "model.safetensors"))
    return d


def test_non_finite_weights_are_named(snap: Snap, tmp_path: Path) -> None:
    w = snap.small.state_dict()["16.weight"]
    d = _with_tensor(snap, tmp_path, "16.weight", torch.full_like(w, float("nan")))
    _refused(lambda: load(d), "model.safetensors: tensor '16.weight' holds NaN or inf")
    bn = snap.small.state_dict()["1.running_var"].clone()
    bn[0] = float("inf")
    d = _with_tensor(snap, tmp_path / "inf", "1.running_var", bn)
    _refused(lambda: load(d), "tensor '1.running_var' holds NaN or inf")


@pytest.mark.parametrize(
    ("name", "dtype"), [("16.weight", torch.float64), ("0.weight", torch.int8)]
)
def test_weights_of_another_dtype_are_named_not_cast(
    snap: Snap, tmp_path: Path, name: str, dtype: torch.dtype
) -> None:
    d = _with_tensor(snap, tmp_path, name, snap.small.state_dict()[name].to(dtype))
    got = str(dtype).removeprefix("torch.")
    _refused(lambda: load(d), f"tensor {name!r} is {got} where the model has float32")


def test_missing_and_extra_tensors_are_named(snap: Snap, tmp_path: Path) -> None:
    d = _with_tensor(snap, tmp_path, "extra.weight", torch.zeros(2))
    _refused(lambda: load(d), "model.safetensors: tensor 'extra.weight'")
    d = _copy(snap, tmp_path / "missing", snap.plan)
    state = {k: v for k, v in snap.small.state_dict().items() if k != "16.bias"}
    save_file(state, str(d / "model.safetensors"))
    _refused(lambda: load(d), "tensor '16.bias' is missing")


# ---------------------------------------------------------------- property


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested JSON value: keys of objects, indices of lists."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
VALUES = st.one_of(
    JSON_LEAF,
    st.integers(-(10**6), 10**6),
    st.sampled_from([-1, 0, 1, 2**31, -(2**63), 2**63, 10**30, 10**100]),
    st.sampled_from(
        [
            "/tmp/evil.py:fn",
            "evil.py:fn",
            "../evil.py:build",
            "C:\\evil.py:fn",
            "file:///etc/passwd",
            "../../../../etc/passwd",
            "demo_cnn",
            "resnet20",
            "resnet18",
            "alexnet",
            "vgg11",
            "weights",
            "DEFAULT",
            "0",
            "*",
        ]
    ),
    st.lists(st.integers(-3, 70), max_size=6),
    st.recursive(
        JSON_LEAF,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=8,
    ),
)


@pytest.fixture(scope="module")
def fuzz_dir(snap: Snap, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "snap"
    shutil.copytree(snap.directory, d)
    return d


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_of_a_plan_loads_or_is_refused_on_one_line(
    snap: Snap, fuzz_dir: Path, data: st.DataObject
) -> None:
    plan: Any = copy.deepcopy(snap.plan)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        top = data.draw(st.sampled_from([None, *plan]) if isinstance(plan, dict) else st.none())
        inside = plan if top is None else plan[top]
        where = data.draw(st.sampled_from(_paths(inside, () if top is None else (top,))))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="action")
        value = data.draw(VALUES, label="value")
        if not where:
            plan = value if action == "replace" else plan
            continue
        parent: Any = plan
        for key in where[:-1]:
            parent = parent[key]
        last = where[-1]
        if action == "replace":
            parent[last] = value
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6), label="new key")] = value
        else:
            parent.insert(last, value)
    (fuzz_dir / "plan.json").write_text(json.dumps(plan))
    try:
        model = load(fuzz_dir)
    except TaperpruneError as exc:
        assert not isinstance(exc, IndexError | KeyError | TypeError | ValueError)
        assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
        assert "plan.json" in str(exc), str(exc)
        event(f"refused at {str(exc).split(': ')[1].split('[')[0]}")
    else:
        assert isinstance(model, nn.Module)
        event("loaded")
    assert not Path("MARKER").exists()
