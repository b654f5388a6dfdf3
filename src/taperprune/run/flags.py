"""Every setting of `RunConfig` as a `taperprune prune` flag, with its help and default.

The flags are made from the config itself, so a setting added to `RunConfig` or to the
method's `PrunerConfig` becomes a flag (a test checks every setting has help text). A
flag left out is `None`: the config file's value, else the default, holds.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Union

import typer

from .config import METHOD_KEYS, RunConfig

# Help panels in `prune --help`, and what each setting does. The method's settings are
# documented in docs/METHOD.md; one line each here.
RUN, TRAIN, METHOD, OUTPUTS = "Run", "Training", "Method (λ solve and taper)", "Outputs"
SETTING_HELP: dict[str, tuple[str, str]] = {
    "model": (RUN, "Built-in or torchvision name, or path/to/file.py:function (see README)."),
    "data": (
        RUN,
        "fashion-mnist[:DIR] | cifar10:DIR | imagefolder:DIR | synthetic[:CxHxW:K] "
        "(synthetic: the model's usual input shape unless --input or CxHxW is given).",
    ),
    "input": (
        RUN,
        "Input shape CxHxW: the shape of synthetic data, the crop of imagefolder data; "
        "must match fashion-mnist/cifar10.",
    ),
    "budgets": (
        RUN,
        "Decreasing budgets: MACs as fractions of the unpruned model (0.5,0.25) or absolute "
        "(3.87G, 500M); parameters (0.5params, 1.2Mparams); or measured latency (3.5ms, "
        "800us, 0.5latency: see --latency-runtime). One kind per list.",
    ),
    "out": (RUN, "Run directory (snapshots, trace, report)."),
    "seed": (RUN, "Seed of weights, data order and pruning: same seed, same run."),
    "weights": (
        RUN,
        "Start from these weights (no pretraining): a .safetensors or weights-only .pth file, "
        "or a torchvision weights name (IMAGENET1K_V1, DEFAULT), downloaded once.",
    ),
    "model_kwargs": (RUN, "More builder arguments, a YAML mapping: '{width: 64}'."),
    "exclude": (
        RUN,
        "Layers to keep whole: names or glob patterns, comma-separated ('*.se.*').",
    ),
    "device": (RUN, "cpu | cuda | cuda:N | auto."),
    "amp": (RUN, "Mixed precision on CUDA: bf16 | fp16 (default: off)."),
    "workers": (RUN, "Data-loading worker processes."),
    "train_limit": (RUN, "Use only N training examples."),
    "test_limit": (RUN, "Use only N test examples, evenly spaced (the same for every seed)."),
    "image_size": (RUN, "imagefolder: crop size in pixels (default 224, or --input's)."),
    "skip_bad_images": (RUN, "imagefolder: train on without unreadable images."),
    "checkpoint_every": (RUN, "Optimizer steps between checkpoints (0: only at phase ends)."),
    "pretrain_epochs": (TRAIN, "Epochs of pretraining when no --weights are given."),
    "taper_epochs": (
        TRAIN,
        "Epochs within which the taper reaches the last budget; the warm-up's "
        "--warmup-steps come first.",
    ),
    "finetune_epochs": (TRAIN, "Epochs of fine-tuning per snapshot, at fixed structure."),
    "bn_recalibration_batches": (TRAIN, "Batches that re-estimate BN statistics per snapshot."),
    "batch_size": (TRAIN, "Training batch size (per process under torchrun)."),
    "lr": (TRAIN, "Learning rate of pretraining."),
    "finetune_lr": (TRAIN, "Learning rate of each snapshot's fine-tune."),
    "prune_lr": (TRAIN, "Learning rate while the taper prunes."),
    "momentum": (TRAIN, "SGD momentum (AdamW: beta1)."),
    "weight_decay": (TRAIN, "Weight decay."),
    "optimizer": (TRAIN, "sgd | adamw."),
    "schedule": (METHOD, "How the budget tapers: adaptive|linear|exponential|cubic|oneshot."),
    "tolerance": (METHOD, "Adaptive: relative loss rise above the reference that is allowed."),
    "pause_factor": (METHOD, "Adaptive: a rise above tolerance × this pauses the taper."),
    "reference": (
        METHOD,
        "Adaptive: the loss it compares with: warmup (before pruning) | trailing (a slow "
        "average of the loss: follows the rise a smaller net settles at).",
    ),
    "reference_beta": (METHOD, "Adaptive, trailing: EMA rate of the reference loss."),
    "max_speed": (METHOD, "Adaptive: fastest rate, as a multiple of the even rate."),
    "min_speed": (METHOD, "Adaptive: slowest rate, as a multiple of the even rate."),
    "grow": (METHOD, "Adaptive: rate × grow per step while the loss is within tolerance."),
    "shrink": (METHOD, "Adaptive: rate × shrink per step while it is above."),
    "loss_beta": (METHOD, "EMA rate of the training loss the controller sees."),
    "warmup_steps": (
        METHOD,
        "Steps before pruning that only collect scores and the reference loss.",
    ),
    "score_beta": (METHOD, "EMA rate of the Taylor scores."),
    "score": (METHOD, "What ranks channels: taylor | bn_gamma."),
    "price": (METHOD, "A unit's price in the λ solve: static | macs | uniform."),
    "price_power": (METHOD, "Order units by score / price**p (1: the Lagrangian rule)."),
    "width_floor": (
        METHOD,
        "Each group keeps ≥ this share of its uniform-width allocation (0: off; round_to 1).",
    ),
    "max_pruning_ratio": (
        METHOD,
        "No group loses more than this share of its channels (1: down to one; round_to 1).",
    ),
    "round_to": (
        METHOD,
        "Keep every prunable group's width a multiple of N channels (or full), for "
        "hardware-friendly shapes.",
    ),
    "max_bad_steps": (METHOD, "Consecutive non-finite steps before the run stops."),
    "distill": (
        TRAIN,
        "Distil from the unpruned model during the taper and fine-tunes: the weight of its "
        "soft targets in the loss (0: off, plain cross-entropy).",
    ),
    "distill_temperature": (TRAIN, "Temperature of the distillation's soft targets."),
    "latency_runtime": (
        METHOD,
        "Latency budgets: the runtime they are measured in (onnxruntime | torch); each layer "
        "is timed here once, cached.",
    ),
    "latency_batch": (METHOD, "Latency budgets: the batch size they are measured at."),
    "latency_threads": (
        METHOD,
        "Latency budgets: the CPU threads they are measured with (0: torch's default here).",
    ),
    "onnx": (OUTPUTS, "Write model.onnx next to each snapshot, checked with onnxruntime."),
    "latency_batches": (OUTPUTS, "Batch sizes to time each snapshot at ('' to skip timing)."),
    "latency_runtimes": (OUTPUTS, "Runtimes to time: torch, onnxruntime (comma-separated)."),
    "latency_runs": (OUTPUTS, "Timed runs per latency measurement (and at least 0.5 s of them)."),
    "report": (OUTPUTS, "Write report.html and its plots at the end."),
}
FIRST = ("model", "data", "input", "budgets", "out")  # shown first in --help


def setting_names() -> list[str]:
    """Every flat setting of a run, in the order `prune --help` shows them."""
    flat = [n for n in RunConfig.model_fields if n != "method"] + list(METHOD_KEYS)
    return [*FIRST, *[n for n in flat if n not in FIRST]]


def _scalar_type(name: str, default: Any) -> type:
    """The flag's Python type: bool, int, float or (for lists, mappings, names) str."""
    if name in RunConfig.model_fields and name != "method":
        hint = RunConfig.model_fields[name].annotation
        args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else ()
        for t in (bool, int, float):
            if hint is t or t in args:
                return t
        return str
    return type(default) if type(default) in (bool, int, float) else str


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "''"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def setting_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per setting, annotated for typer; every default is None."""
    defaults = RunConfig().to_mapping()
    params = []
    for name in setting_names():
        panel, help_text = SETTING_HELP[name]
        flag = "--" + name.replace("_", "-")
        kind = _scalar_type(name, defaults[name])
        # A setting on by default is turned off with --no-…; one off by default, with its name.
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool and defaults[name] else [flag]
        option = typer.Option(
            *decls, help=help_text, show_default=_shown(defaults[name]), rich_help_panel=panel
        )
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, option],
            )
        )
    return params


def with_setting_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(**given)` with its own parameters plus one flag per setting (for typer)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
        for p in inspect.signature(fn).parameters.values()
        if p.kind != inspect.Parameter.VAR_KEYWORD
    ]
    params = [*own, *setting_parameters()]

    def command(**given: Any) -> Any:
        return fn(**given)

    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
