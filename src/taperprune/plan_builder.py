"""Building the model a plan names without running what the plan says: a built-in or
torchvision builder only (a file only when the caller trusts it), its arguments checked
against the builder's signature and types before the call, nothing that downloads."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .models import (
    BUILTIN,
    BuilderArgumentError,
    UntrustedModelFile,
    _load_user_builder,
    _torchvision_names,
    _unknown_model,
    is_file_spec,
)

_ALWAYS_PASSED = ("num_classes", "in_channels")
_FETCHING = ("weight", "progress", "pretrain", "url", "download", "hub", "cache", "path", "file")
# Integers above this are refused where a model cannot first be built on the meta device
# (which allocates nothing), so that a plan cannot make taperprune allocate without bound.
MAX_UNCHECKED_INT = 100_000


@dataclass(frozen=True)
class PlanBuilder:
    """A model builder resolved from a name and arguments read from a file (a plan)."""

    name: str
    fn: Callable[..., nn.Module]
    kwargs: dict[str, Any]
    from_file: bool  # a `file.py:function` the caller chose to trust

    def build(self, device: str = "cpu") -> nn.Module:
        """Call the builder; on device "meta" nothing is allocated or initialised."""
        with torch.device(device):
            model = self.fn(**self.kwargs)
        if not isinstance(model, nn.Module):
            raise ModelError(f"builder {self.name!r} returned {type(model).__name__}")
        return model


def plan_builder(
    name: str, kwargs: Mapping[str, Any], *, trust_model_file: bool = False
) -> PlanBuilder:
    """The builder of a model name and arguments read from a file, checked before any call.

    Built-in and torchvision names only: a `file.py:function` raises UntrustedModelFile
    unless `trust_model_file`. The arguments (JSON values, checked by `plan.load`) must be
    named by the builder's signature and of its annotated types; torchvision builders get
    none that could fetch weights, and always `weights=None`. Raises ModelError (unknown
    name) or BuilderArgumentError.
    """
    kwargs = dict(kwargs)
    if is_file_spec(name):
        if not trust_model_file:
            raise UntrustedModelFile(name)
        fn = _load_user_builder(name)
        return PlanBuilder(name, fn, _fit_signature(name, fn, kwargs, open_ended=True), True)
    if name in BUILTIN:
        return PlanBuilder(name, BUILTIN[name], _fit_signature(name, BUILTIN[name], kwargs), False)
    if name not in _torchvision_names():
        raise _unknown_model(name)
    import torchvision

    for key in kwargs:
        if any(word in key.lower() for word in _FETCHING):
            raise BuilderArgumentError(
                (key,), "could fetch weights or read files: never from a plan"
            )
    channels = kwargs.pop("in_channels", 3)
    if type(channels) is not int or channels != 3:
        raise BuilderArgumentError(
            ("in_channels",), f"torchvision model {name!r} takes 3 input channels, not {channels!r}"
        )
    if name in ("googlenet", "inception_v3"):  # as in build_model
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", False)
    try:  # the model class: its __init__ names what the builder's **kwargs take
        cls = typing.get_type_hints(torchvision.models.get_model_builder(name)).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations
        cls = None
    init = cls.__init__ if inspect.isclass(cls) else (lambda self, num_classes=1000: None)

    def tv_fn(**kw: Any) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, **kw)

    return PlanBuilder(name, tv_fn, _fit_signature(name, init, kwargs), from_file=False)


def _fit_signature(
    name: str, sig_of: Callable[..., Any], kwargs: dict[str, Any], *, open_ended: bool = False
) -> dict[str, Any]:
    """`kwargs` checked against the parameters and annotations of `sig_of`; with
    `open_ended`, a `**kwargs` parameter takes any other name."""
    params = [p for p in inspect.signature(sig_of).parameters.values() if p.name != "self"]
    var_kw = open_ended and any(p.kind == p.VAR_KEYWORD for p in params)
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    try:
        hints = typing.get_type_hints(sig_of)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the builder checks its own
        hints = {}
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in hints and key in named:
            _check_type(key, hints[key], value)
        if key in named or var_kw:
            out[key] = value
        elif key not in _ALWAYS_PASSED:
            takes = ", ".join(named) or "nothing"
            raise BuilderArgumentError(
                (key,), f"{name} takes no argument {key!r} (it takes {takes})"
            )
    return out


def _check_type(key: str, annotation: Any, value: Any) -> None:
    """BuilderArgumentError unless `value` is, as it stands, of type `annotation`."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    try:
        adapter: TypeAdapter[Any] = TypeAdapter(
            annotation, config=ConfigDict(arbitrary_types_allowed=True)
        )
    except Exception:  # noqa: BLE001 - an annotation pydantic cannot check
        return
    try:
        ok = _same(adapter.validate_python(value), value)
    except ValidationError:
        ok = False
    if not ok:
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        kind = kind.replace("typing.", "").replace("torch.nn.modules.module.", "nn.")
        raise BuilderArgumentError((key,), f"{short_repr(value)} is not of type {kind}")


def _same(got: Any, value: Any) -> bool:
    """Whether validation left `value` as it was (no "1" → 1, 1.5 → 1, True → 1); a list
    may become a tuple and an int a float."""
    if isinstance(got, bool) or isinstance(value, bool):
        return type(got) is type(value) and got == value
    if isinstance(got, float) and type(value) is int:
        return got == value
    if isinstance(got, list | tuple) and isinstance(value, list):
        return len(got) == len(value) and all(map(_same, got, value))
    if isinstance(got, dict) and isinstance(value, dict):
        return got.keys() == value.keys() and all(_same(got[k], value[k]) for k in value)
    return type(got) is type(value) and bool(got == value)


def short_repr(value: Any) -> str:
    """repr(value), cut to 40 characters."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."
