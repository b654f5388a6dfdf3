"""The comparison harness behind `taperprune bench`.

Every method starts from the same pretrained weights (one pretraining per net and seed),
targets the same MAC budgets and gets the same optimizer steps, and each (view, net,
method, seed, budget) becomes one row of `results.csv`. Views:

- ``per-budget``: a baseline at budget b gets the steps taperprune spent on its snapshot
  at b (taper steps up to the snapshot + its fine-tune).
- ``curve``: a baseline gets taperprune's whole run (all budgets) divided by the number of
  budgets, since taperprune makes the whole curve in one run and a baseline needs k runs.
- ``steps``: one budget, several step budgets (users pay for fine-tuning).

A run whose rows are already in `results.csv` is skipped, so an interrupted bench resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from .baselines import BASELINES, UNIFORM, prune_to_macs, taylor_gradients, tp_pruner, uniform_width
from .cost import build_cost_model, count_macs, macs_and_marginals
from .data import BatchStream, DataBundle, load_data
from .errors import BudgetError, TaperpruneError
from .export import count_params, load, load_weights, save_weights, write_atomic, write_json
from .graph import build_graph
from .latency import torch_latency
from .models import build_model
from .pipeline import run_prune
from .pretrained import resolve_weights
from .train import (
    RunConfig,
    evaluate,
    make_optimizer,
    recalibrate_bn,
    resolve_device,
    seed_everything,
)

# taperprune and its ablations: RunConfig overrides (everything else is the default).
TAPERPRUNE: dict[str, dict[str, Any]] = {
    "taperprune": {},
    "taperprune_linear": {"schedule": "linear"},
    "taperprune_uniform_price": {"price": "uniform"},
    "taperprune_bn_gamma": {"score": "bn_gamma"},
    "taperprune_oneshot": {"schedule": "oneshot"},
    "taperprune_soft_price": {"price_power": 0.5},  # orders by s / d**0.5
    "taperprune_marginal_price": {"price": "macs"},  # the marginal MACs of the moment
}
METHODS: tuple[str, ...] = (*TAPERPRUNE, *BASELINES, UNIFORM)
VIEWS = ("per-budget", "curve", "steps")
FIELDS = (
    "view",
    "net",
    "method",
    "seed",
    "budget",
    "target_macs",
    "macs",
    "budget_error_macs",
    "budget_error_pct",
    "one_channel_macs",
    "full_macs",
    "params",
    "steps",
    "step_budget",
    "acc_before_finetune",
    "acc",
    "base_acc",
    "latency_ms",
    "run_seconds",
    "run_id",
)


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one `taperprune bench` (the CLI maps onto it)."""

    nets: tuple[str, ...] = ("demo_cnn", "resnet20")  # name or name:key=value,…
    data: str = "fashion-mnist"
    budgets: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625, 0.03125)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    views: tuple[str, ...] = ("per-budget", "curve")
    curve_methods: tuple[str, ...] = ("tp_l1_global", UNIFORM)
    sweep_steps: tuple[int, ...] = (400, 1000, 2000)
    sweep_budget: float = 0.03125
    sweep_methods: tuple[str, ...] = ("taperprune", "tp_l1_global")
    out: str = "runs/bench"
    train: RunConfig = field(default_factory=RunConfig)  # steps, learning rates, batch size
    latency_batch: int = 32
    latency_runs: int = 10

    def __post_init__(self) -> None:
        for name, given, known in (
            ("methods", self.methods, METHODS),
            ("curve methods", self.curve_methods, (*BASELINES, UNIFORM)),
            ("sweep methods", self.sweep_methods, ("taperprune", *BASELINES, UNIFORM)),
            ("views", self.views, VIEWS),
        ):
            bad = [m for m in given if m not in known]
            if bad:
                raise TaperpruneError(f"unknown {name} {bad}; choose from {list(known)}")
        if not self.budgets or any(not 0 < b < 1 for b in (*self.budgets, self.sweep_budget)):
            raise TaperpruneError(
                f"budgets are fractions of the full MACs in (0, 1), got {list(self.budgets)} "
                f"and sweep budget {self.sweep_budget}"
            )
        if not self.seeds or not self.nets:
            raise TaperpruneError("bench needs at least one net and one seed")
        if any(n < 2 for n in self.sweep_steps):
            raise TaperpruneError(f"sweep steps must be ≥ 2, got {list(self.sweep_steps)}")


def parse_net(spec: str) -> tuple[str, dict[str, Any]]:
    """'demo_cnn:width=8' → ('demo_cnn', {'width': 8})."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise TaperpruneError(f"net {spec!r}: expected name:key=value,…")
        try:
            kwargs[key] = int(value)
        except ValueError:
            try:
                kwargs[key] = float(value)
            except ValueError:
                kwargs[key] = value
    return name, kwargs


def net_dir(spec: str) -> str:
    return spec.replace(":", "_").replace("=", "").replace(",", "_")


# ------------------------------------------------------------------ results file
_INTS = {
    "seed",
    "target_macs",
    "macs",
    "budget_error_macs",
    "one_channel_macs",
    "full_macs",
    "params",
    "steps",
    "step_budget",
}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results.csv (numbers as float/int); [] when it does not exist."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict[str, Any] = {}
        for k, v in r.items():
            if k in ("view", "net", "method", "run_id"):
                row[k] = v
            elif k in _INTS:
                row[k] = int(float(v or 0))
            else:
                row[k] = float(v)
        out.append(row)
    return out


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_atomic(path, buf.getvalue())


# ------------------------------------------------------------------ training
def train_steps(
    model: nn.Module,
    stream: BatchStream,
    steps: int,
    lr: float,
    cfg: RunConfig,
    device: torch.device,
    *,
    cosine: bool = True,
    after_backward: Callable[[nn.Module], None] | None = None,
) -> None:
    """Plain SGD (the run's optimizer settings) for `steps` batches of `stream`."""
    if steps <= 0:
        return
    opt = make_optimizer(cfg, model, lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    loss_f = nn.CrossEntropyLoss()
    model.train()
    for x, y in stream.batches(steps):
        loss = loss_f(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        opt.step()
        if sched is not None:
            sched.step()


@dataclass
class _Net:
    spec: str
    name: str
    kwargs: dict[str, Any]
    weights: Path
    base_acc: float
    full_macs: int
    one_channel: int  # the largest MAC cost of one unit at full width


class Bench:
    """One bench: data, pretrained nets, and the runs of every view."""

    def __init__(self, cfg: BenchConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.out = Path(cfg.out)
        self.csv = self.out / "results.csv"
        self.rows = read_rows(self.csv)
        self.done_ids = {r["run_id"] for r in self.rows}
        self.unreachable: list[str] = []  # baseline runs that could not reach their budget
        self.device = resolve_device(cfg.train.device)
        t = cfg.train
        self.data: DataBundle = load_data(
            cfg.data,
            batch_size=t.batch_size,
            seed=0,
            workers=t.workers,
            image_size=t.image_size,
            train_limit=t.train_limit,
            test_limit=t.test_limit,
        )
        self.example = torch.zeros((1, *self.data.input_shape))
        self.per_epoch = len(self.stream(0))  # batches per epoch, the same for every seed
        self.finetune_steps = int(t.finetune_epochs * self.per_epoch)  # per snapshot

    # -------------------------------------------------------------- helpers
    def stream(self, seed: int) -> BatchStream:
        assert self.data.train_set is not None
        return BatchStream(self.data.train_set, self.cfg.train.batch_size, seed)

    def epochs(self, steps: int) -> float:
        """An epoch count that `int(epochs × len(stream))` turns back into `steps`."""
        return (steps + 0.5) / self.per_epoch

    def _add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.done_ids.update(r["run_id"] for r in rows)
        write_rows(self.csv, self.rows)

    def _latency(self, model: nn.Module) -> float:
        lat = torch_latency(
            model.cpu(),
            tuple(self.data.input_shape),
            self.cfg.latency_batch,
            runs=self.cfg.latency_runs,
        )
        return lat.median_ms

    def _row(
        self,
        net: _Net,
        view: str,
        method: str,
        seed: int,
        budget: float,
        model: nn.Module,
        **values: Any,
    ) -> dict[str, Any]:
        target = int(budget * net.full_macs)
        macs = count_macs(model.cpu(), self.example)
        return {
            "view": view,
            "net": net.spec,
            "method": method,
            "seed": seed,
            "budget": budget,
            "target_macs": target,
            "macs": macs,
            "budget_error_macs": macs - target,
            "budget_error_pct": 100.0 * (macs - target) / target,
            "one_channel_macs": net.one_channel,
            "full_macs": net.full_macs,
            "params": count_params(model),
            "base_acc": net.base_acc,
            "latency_ms": self._latency(model),
            "step_budget": 0,  # the steps view's nominal budget; 0 elsewhere
            **values,
        }

    # -------------------------------------------------------------- pretraining
    def pretrained(self, spec: str, seed: int) -> _Net:
        """The net's pretrained weights for `seed` (trained once, then read from disk)."""
        name, kwargs = parse_net(spec)
        kwargs = {
            "num_classes": self.data.num_classes,
            "in_channels": self.data.input_shape[0],
            **kwargs,
        }
        directory = self.out / "pretrained" / net_dir(spec) / f"seed{seed}"
        weights = directory / "model.safetensors"
        seed_everything(seed)
        model = build_model(name, **kwargs).to(self.device)
        if weights.exists():
            model.load_state_dict(load_weights(weights))
        elif self.cfg.train.weights:  # the user's starting point (file or torchvision name)
            given = resolve_weights(self.cfg.train.weights, name)
            try:
                model.load_state_dict(load_weights(given))
            except RuntimeError as exc:
                raise TaperpruneError(f"weights {given} do not fit net {spec}: {exc}") from exc
            save_weights(weights, model)
        else:
            stream = self.stream(seed)
            steps = int(self.cfg.train.pretrain_epochs * len(stream))
            self.console.print(f"pretraining {spec} (seed {seed}) for {steps} steps")
            train_steps(model, stream, steps, self.cfg.train.lr, self.cfg.train, self.device)
            save_weights(weights, model)
        base_acc = evaluate(model, self.data.test, self.device)
        write_json(directory / "base.json", {"base_acc": base_acc})
        model = model.cpu().eval()
        cm = build_cost_model(build_graph(model, self.example))
        _, marginals = macs_and_marginals(cm, torch.ones(cm.num_units, dtype=torch.bool))
        return _Net(
            spec,
            name,
            kwargs,
            weights,
            base_acc,
            count_macs(model, self.example),
            int(math.ceil(float(marginals.max()))),
        )

    # -------------------------------------------------------------- taperprune
    def run_taperprune(
        self,
        net: _Net,
        view: str,
        method: str,
        seed: int,
        budgets: Sequence[float],
        step_budget: int = 0,
        **overrides: Any,
    ) -> list[dict[str, Any]]:
        """One taperprune run over `budgets`; one row per budget (steps: up to that snapshot)."""
        run_id = f"{view}/{net.spec}/{method}/seed{seed}" + "".join(
            f"/{k}={v}" for k, v in sorted(overrides.items())
        )
        if run_id in self.done_ids:
            return [r for r in self.rows if r["run_id"] == run_id]
        out = run_dir(self.out, run_id)
        cfg = dataclasses.replace(
            self.cfg.train,
            model=net.name,
            model_kwargs={
                k: v for k, v in net.kwargs.items() if k not in ("num_classes", "in_channels")
            },
            data=self.cfg.data,
            budgets=tuple(str(b) for b in budgets),
            out=str(out),
            seed=seed,
            weights=str(net.weights),
            onnx=False,
            latency_batches=(),
            report=False,
            checkpoint_every=0,
            **TAPERPRUNE[method],
            **overrides,
        )
        quiet = Console(quiet=True)
        result = run_prune(cfg, console=quiet, overwrite=True)
        ft_steps = int(cfg.finetune_epochs * self.per_epoch)  # the steps view changes it
        rows = []
        for budget, snap in zip(budgets, result.snapshots, strict=True):
            small = load(out / "snapshots" / snap.label)
            rows.append(
                self._row(
                    net,
                    view,
                    method,
                    seed,
                    budget,
                    small,
                    steps=snap.step + ft_steps,
                    acc_before_finetune=snap.acc_at_snapshot,
                    acc=snap.acc_finetuned,
                    run_seconds=result.seconds,
                    run_id=run_id,
                    step_budget=step_budget,
                )
            )
        self._add(rows)
        return rows

    # -------------------------------------------------------------- baselines
    def run_baseline(
        self,
        net: _Net,
        view: str,
        method: str,
        seed: int,
        budget: float,
        steps: int,
        pre_steps: int,
        step_budget: int = 0,
    ) -> dict[str, Any] | None:
        """Prune a copy of the pretrained net to `budget` and fine-tune: `steps` in all.

        `pre_steps` (≤ steps) of them train before pruning, with the sparsity regulariser
        for network slimming; other methods prune at step 0 and fine-tune all `steps`.
        """
        run_id = f"{view}/{net.spec}/{method}/seed{seed}/budget={budget}/steps={steps}"
        if run_id in self.done_ids:
            return next(r for r in self.rows if r["run_id"] == run_id)
        t0 = time.perf_counter()
        t = self.cfg.train
        seed_everything(seed)
        stream = self.stream(seed)
        model = build_model(net.name, **net.kwargs)
        model.load_state_dict(load_weights(net.weights))
        model.to(self.device)
        target = int(budget * net.full_macs)
        example = self.example.to(self.device)
        try:
            if method == UNIFORM:
                model, _ = uniform_width(model, example, target)
            else:
                spec = BASELINES[method]
                pruner = tp_pruner(model, example, spec)
                if spec.sparsity > 0:
                    pre = min(pre_steps, steps)
                    train_steps(
                        model,
                        stream,
                        pre,
                        t.prune_lr,
                        t,
                        self.device,
                        cosine=False,
                        after_backward=lambda m: pruner.regularize(m),
                    )
                    steps -= pre
                grads = (
                    taylor_gradients(stream.batches(10**9), self.device)
                    if spec.importance == "taylor"
                    else None
                )
                prune_to_macs(model, example, target, pruner, gradients=grads)
        except BudgetError as exc:  # e.g. uniform width cannot thin a tiny net that far
            self.console.print(f"[yellow]skipped[/yellow] {run_id}: {exc}")
            self.unreachable.append(run_id)
            return None
        n = t.bn_recalibration_batches
        recalibrate_bn(model, stream.batches(n), self.device, n)
        acc0 = evaluate(model, self.data.test, self.device)
        train_steps(model, stream, steps, t.finetune_lr, t, self.device)
        if steps > 0:
            recalibrate_bn(model, stream.batches(n), self.device, n)
        acc1 = evaluate(model, self.data.test, self.device) if steps > 0 else acc0
        row = self._row(
            net,
            view,
            method,
            seed,
            budget,
            model,
            steps=run_id_steps(run_id),
            acc_before_finetune=acc0,
            acc=acc1,
            run_seconds=time.perf_counter() - t0,
            run_id=run_id,
            step_budget=step_budget,
        )
        self._add([row])
        return row

    # -------------------------------------------------------------- views
    def _taper_steps_at(self, rows: Sequence[dict[str, Any]], budget: float) -> int:
        return next(int(r["steps"]) for r in rows if r["budget"] == budget)

    def per_budget(self, net: _Net, seed: int, tick: Callable[[], None]) -> None:
        cfg = self.cfg
        ft = self.finetune_steps
        reference: list[dict[str, Any]] = []
        for method in (m for m in cfg.methods if m in TAPERPRUNE):
            rows = self.run_taperprune(net, "per-budget", method, seed, cfg.budgets)
            if method == "taperprune":
                reference = rows
            tick()
        for method in (m for m in cfg.methods if m not in TAPERPRUNE):
            for budget in cfg.budgets:
                if reference:
                    steps = self._taper_steps_at(reference, budget)
                else:  # no taperprune run to match: its nominal step count
                    taper = max(1, int(cfg.train.taper_epochs * self.per_epoch))
                    steps = cfg.train.warmup_steps + taper + ft
                self.run_baseline(net, "per-budget", method, seed, budget, steps, steps - ft)
                tick()

    def curve(self, net: _Net, seed: int, tick: Callable[[], None]) -> None:
        cfg = self.cfg
        rows = self.run_taperprune(net, "per-budget", "taperprune", seed, cfg.budgets)
        total = _optimizer_steps(run_dir(self.out, rows[0]["run_id"]), rows)
        each = total // len(cfg.budgets)
        ft = self.finetune_steps
        for method in cfg.curve_methods:
            for budget in cfg.budgets:
                self.run_baseline(net, "curve", method, seed, budget, each, max(0, each - ft))
                tick()

    def steps_sweep(self, net: _Net, seed: int, tick: Callable[[], None]) -> None:
        cfg = self.cfg
        for n in cfg.sweep_steps:
            half = n // 2
            taper = max(1, half - cfg.train.warmup_steps)
            steps = n
            if "taperprune" in cfg.sweep_methods:
                rows = self.run_taperprune(
                    net,
                    "steps",
                    "taperprune",
                    seed,
                    [cfg.sweep_budget],
                    step_budget=n,
                    taper_epochs=round(self.epochs(taper), 6),
                    finetune_epochs=round(self.epochs(n - half), 6),
                )
                steps = int(rows[0]["steps"])
                tick()
            for method in (m for m in cfg.sweep_methods if m != "taperprune"):
                self.run_baseline(
                    net,
                    "steps",
                    method,
                    seed,
                    cfg.sweep_budget,
                    steps,
                    steps - (n - half),
                    step_budget=n,
                )
                tick()

    def count_runs(self) -> int:
        cfg = self.cfg
        k = len(cfg.budgets)
        taper = sum(m in TAPERPRUNE for m in cfg.methods)
        per = taper + k * (len(cfg.methods) - taper)
        n = 0
        if "per-budget" in cfg.views:
            n += per
        if "curve" in cfg.views:
            n += k * len(cfg.curve_methods)
        if "steps" in cfg.views:
            n += len(cfg.sweep_steps) * len(cfg.sweep_methods)
        return n * len(cfg.nets) * len(cfg.seeds)

    def run(self) -> list[dict[str, Any]]:
        """Every view for every net and seed; returns all rows (also in results.csv)."""
        from .train import progress

        self.out.mkdir(parents=True, exist_ok=True)
        with progress(self.console) as prog:
            task = prog.add_task("bench", total=self.count_runs(), info="")

            def tick() -> None:
                prog.advance(task)

            for spec in self.cfg.nets:
                for seed in self.cfg.seeds:
                    prog.update(task, info=f"{spec} seed {seed}")
                    net = self.pretrained(spec, seed)
                    if "per-budget" in self.cfg.views:
                        self.per_budget(net, seed, tick)
                    if "curve" in self.cfg.views:
                        self.curve(net, seed, tick)
                    if "steps" in self.cfg.views:
                        self.steps_sweep(net, seed, tick)
        return self.rows


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """Tiny data and steps, one net and one seed, every view: checks the harness runs."""
    train = dataclasses.replace(
        cfg.train,
        train_limit=1024,
        test_limit=256,
        pretrain_epochs=1.0,
        taper_epochs=1.0,
        finetune_epochs=1.0,
        warmup_steps=5,
        bn_recalibration_batches=2,
    )
    return dataclasses.replace(
        cfg,
        nets=cfg.nets[:1],
        budgets=(0.5, 0.125),
        seeds=cfg.seeds[:1],
        views=VIEWS,
        sweep_steps=(40, 80),
        latency_runs=2,
        train=train,
    )


def run_id_steps(run_id: str) -> int:
    """The step count a baseline's run id records (its total optimizer steps)."""
    return int(run_id.rsplit("steps=", 1)[1])


def run_dir(root: Path, run_id: str) -> Path:
    """The directory of the taperprune run `run_id` (view/net/method/seedN[/key=value…])."""
    parts = run_id.split("/")
    last = max(i for i, p in enumerate(parts) if re.fullmatch(r"seed\d+", p))
    view, *net, method, seed = parts[: last + 1]
    overrides = parts[last + 1 :]
    out = root / "runs" / view / net_dir("/".join(net)) / method / seed
    return out / "_".join(o.replace("=", "") for o in overrides) if overrides else out


def _optimizer_steps(run_dir: Path, rows: Sequence[dict[str, Any]]) -> int:
    """Optimizer steps of a whole taperprune run (its summary.json, else its rows' largest)."""
    from .export import read_json

    summary = run_dir / "summary.json"
    if summary.exists():
        return int(read_json(summary)["optimizer_steps"])
    return max(int(r["steps"]) for r in rows)
