"""One `RunConfig`: every setting of a `taperprune prune` run, validated when it is built.

Settings are flat (`tolerance: 0.1`, as in config.yaml and on the command line); the
method's own settings are held as the library's `PrunerConfig`, whose checks they pass
through, so one place says what a valid setting is. Nothing here imports torch: a bad
setting fails in milliseconds, before any data is read or anything trains.
"""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..budget import budget_resource
from ..errors import BudgetError, TaperpruneError
from ..settings import PrunerConfig, method_keys

METHOD_KEYS = method_keys()
Runtime = Literal["torch", "onnxruntime"]  # latency.RUNTIMES (a test keeps them equal)


def split_csv(text: str) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c')."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


class RunConfig(BaseModel):
    """Every setting of a `taperprune prune` run (the CLI and config.yaml map onto it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str = Field("demo_cnn", min_length=1)
    data: str = Field("fashion-mnist", min_length=1)
    # CxHxW: synthetic data's shape, imagefolder's crop; None: the data's or model's own
    input: str | None = None
    budgets: tuple[str, ...] = Field(("0.5", "0.25", "0.125"), min_length=1)
    out: str = Field("runs/demo", min_length=1)
    seed: int = Field(0, ge=0, lt=2**63)
    weights: str | None = None  # a state dict to start from; else pretrain
    pretrain_epochs: float = Field(2.0, ge=0)  # used only when no weights are given
    taper_epochs: float = Field(1.0, gt=0)  # the taper reaches the last budget within this
    finetune_epochs: float = Field(1.0, ge=0)  # per snapshot, at fixed structure
    bn_recalibration_batches: int = Field(50, ge=0)  # re-estimate BN statistics per snapshot
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    finetune_lr: float = Field(0.03, gt=0)
    prune_lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # Knowledge distillation from the unpruned model during the taper and the fine-tunes:
    # the weight of its soft targets (0: off) and their temperature.
    distill: float = Field(0.0, ge=0, le=1)
    distill_temperature: float = Field(4.0, gt=0)
    method: PrunerConfig = Field(default_factory=PrunerConfig)  # flat keys: METHOD_KEYS
    exclude: tuple[str, ...] = ()  # layer names or patterns to keep whole
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")
    amp: Literal["bf16", "fp16"] | None = None
    workers: int = Field(0, ge=0)
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=1)
    skip_bad_images: bool = False  # imagefolder: train on without unreadable images
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    onnx: bool = True  # write model.onnx next to each snapshot, checked with onnxruntime
    latency_batches: tuple[Annotated[int, Field(ge=1)], ...] = (1, 32)  # () skips latency
    latency_runtimes: tuple[Runtime, ...] = ("torch", "onnxruntime")
    latency_runs: int = Field(20, ge=1)
    report: bool = True  # write report.html and the plots at the end
    checkpoint_every: int = Field(200, ge=0)  # optimizer steps between checkpoints; 0: ends

    @model_validator(mode="before")
    @classmethod
    def _nest_method_keys(cls, data: Any) -> Any:
        """Flat method settings ('tolerance') go into `method` at their path."""
        if not isinstance(data, dict):
            return data
        values = dict(data)
        method = values.pop("method", None)
        tree: dict[str, Any] = _method_tree(method) if method is not None else {}
        for key in [k for k in values if k in METHOD_KEYS]:
            *parents, leaf = METHOD_KEYS[key]
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = values.pop(key)
        if tree:
            values["method"] = tree
        return values

    @field_validator("budgets", "exclude", "latency_runtimes", mode="before")
    @classmethod
    def _text_list(cls, value: Any) -> Any:
        """'0.5,0.25' or 0.5 or [0.5, '1G'] → a tuple of strings."""
        if isinstance(value, str):
            return split_csv(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (str(value),)
        if isinstance(value, (list, tuple)):
            return tuple(str(v) if isinstance(v, (int, float, str)) else v for v in value)
        return value

    @field_validator("input")
    @classmethod
    def _shape_text(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9]\d*x[1-9]\d*x[1-9]\d*", value):
            raise ValueError("must be an input shape CxHxW, e.g. 3x224x224")
        return value

    @field_validator("model_kwargs", mode="before")
    @classmethod
    def _mapping_text(cls, value: Any) -> Any:
        """'{width: 64}' (a flag's text) → {'width': 64}."""
        if not isinstance(value, str):
            return value
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            loaded = None
        if not isinstance(loaded, dict):
            raise ValueError("must be a YAML mapping of builder arguments, e.g. '{width: 64}'")
        return loaded

    @field_validator("latency_batches", mode="before")
    @classmethod
    def _int_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return split_csv(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        return value

    @field_validator("budgets")
    @classmethod
    def _one_resource(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            budget_resource(value)
        except BudgetError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def budget_unit(self) -> str:
        """What the budgets count: 'MACs', 'params' for budgets like '1.2Mparams', or 'ns'
        (modelled latency) for budgets like '3.5ms'."""
        return {"params": "params", "latency": "ns"}.get(budget_resource(self.budgets), "MACs")

    @property
    def max_bad_steps(self) -> int:
        """Consecutive non-finite steps before a run stops (one setting for every phase)."""
        return self.method.max_bad_steps

    def pruner_config(self, taper_steps: int) -> PrunerConfig:
        """The method's settings with the taper's length in steps."""
        return replace(self.method, schedule=replace(self.method.schedule, steps=taper_steps))

    def updated(self, **changes: Any) -> RunConfig:
        """A copy with `changes` (flat keys), validated again."""
        return config_from_mapping({**self.to_mapping(), **changes}, source="settings")

    def to_mapping(self) -> dict[str, Any]:
        """Flat, YAML-ready settings in declaration order (what config.yaml holds)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name == "method":
                out.update(_flat_method(self.method))
                continue
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


def _method_tree(method: Any) -> dict[str, Any]:
    if isinstance(method, PrunerConfig):
        return asdict(method)
    if isinstance(method, dict):
        return {k: dict(v) if isinstance(v, dict) else v for k, v in method.items()}
    raise TaperpruneError(f"method must be a mapping of settings, got {method!r}")


def _flat_method(method: PrunerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, path in METHOD_KEYS.items():
        value: Any = method
        for p in path:
            value = getattr(value, p)
        out[key] = value.value if isinstance(value, Enum) else value
    return out


def _field_name(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the flat setting name a user writes."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if parts and parts[0] == "method":
        inner = tuple(parts[1:])
        for key, path in METHOD_KEYS.items():
            if path == inner:
                return key
        return ""  # a check across settings of the method: its message names them
    return parts[0] if parts else ""


def describe_error(exc: ValidationError, source: object) -> str:
    """One line: '<source>: <setting>: <what is wrong> (got <value>)' for the first error."""
    errors = exc.errors(include_url=False)
    unknown = [_field_name(tuple(e["loc"])) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        known = sorted({*RunConfig.model_fields, *METHOD_KEYS} - {"method"})
        return f"{source} has unknown settings {unknown}; known: {known}"
    err = errors[0]
    name = _field_name(tuple(err["loc"]))
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or not name else f" (got {got!r})"
    where = f"{name}: " if name else ""
    more = len(exc.errors()) - 1
    tail = f" [and {more} more]" if more > 0 else ""
    return f"{source}: {where}{msg}{shown}{tail}"


def config_from_mapping(settings: Any, *, source: object = "settings") -> RunConfig:
    """A RunConfig from YAML-like values; any bad setting raises one TaperpruneError line."""
    if not isinstance(settings, dict):
        raise TaperpruneError(
            f"{source} must be a mapping of settings, got {type(settings).__name__}"
        )
    try:
        return RunConfig.model_validate(settings)
    except ValidationError as exc:
        raise TaperpruneError(describe_error(exc, source)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a syntax error is one line 'FILE:LINE:COL: what'."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TaperpruneError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaperpruneError(f"cannot read config file {path}: {exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise TaperpruneError(f"{where}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise TaperpruneError(f"{path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise TaperpruneError(f"{path} must be a mapping of settings, got {type(loaded).__name__}")
    return loaded


def load_config(file: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Settings from a YAML file (if any), then the given overrides (None = not given)."""
    base = read_config_file(file) if file is not None else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(base, source=f"config {file}" if file else "the flags")


def dump_config(cfg: RunConfig) -> str:
    """config.yaml's text: every setting, resolved."""
    return yaml.safe_dump(cfg.to_mapping(), sort_keys=False)


__all__ = [
    "METHOD_KEYS",
    "RunConfig",
    "config_from_mapping",
    "dump_config",
    "load_config",
    "read_config_file",
    "split_csv",
]
