"""`save`: a model pruned in your own loop, written as the snapshot files `load` reads
(plan.json + model.safetensors), so it is opened the same way as a run's snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .cost import count_params
from .errors import TaperpruneError
from .files import save_weights, write_json
from .graph import COUNTED_TYPES, NORM_TYPES, _channels
from .plan import make_plan

if TYPE_CHECKING:
    from .pruner import TaperPruner


def save(
    module: nn.Module,
    directory: str | Path,
    *,
    pruner: TaperPruner,
    budget: float | int | str | None = None,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write `module` — `pruner.export(budget)`, or `pruner.export()` of the masks now — as
    DIRECTORY/plan.json + model.safetensors; returns DIRECTORY.

    `taperprune.load(DIRECTORY, model=MyNet())` rebuilds it from an unpruned instance;
    with `model_name` (a built-in or torchvision name, and `model_kwargs` its builder's
    arguments) `taperprune.load(DIRECTORY)` needs nothing else. The plan is checked against
    `module`'s widths before anything is written.
    """
    if module is pruner.model:
        raise TaperpruneError(
            "save() writes a physically pruned model: pass pruner.export(budget) (a snapshot) "
            "or pruner.export() (the masks now), not the masked model the pruner trains"
        )
    snap = pruner.snapshots[budget] if budget is not None else None
    if snap is None:  # the snapshot this module was cut from, else the masks now
        snap = next((s for s in pruner.snapshots.values() if s.model is module), None)
    keep = snap.keep if snap is not None else pruner.keep
    plan = make_plan(
        pruner.graph,
        keep,
        model_name=model_name or type(pruner.model).__qualname__,
        model_kwargs=dict(model_kwargs or {}),
        macs=snap.macs if snap is not None else int(round(pruner.macs)),
        params=count_params(module),
        target=snap.target if snap is not None else None,
        exclude=tuple(getattr(pruner, "exclude", ())),
    )
    _check_pruned_widths(plan, module)
    out = Path(directory)
    save_weights(out / "model.safetensors", module)
    write_json(out / "plan.json", plan)
    return out


def _check_pruned_widths(plan: dict[str, Any], module: nn.Module) -> None:
    """Each layer of `module` has the widths the plan keeps (else it is another model)."""
    have = {
        name: _channels(m)
        for name, m in module.named_modules()
        if isinstance(m, COUNTED_TYPES + NORM_TYPES)
    }
    for name, entry in plan["layers"].items():
        want = (len(entry["in"]), len(entry["out"]))
        if have.get(name) != want:
            raise TaperpruneError(
                f"layer {name!r} of the module has {have.get(name, 'no')} channels (in, out) "
                f"where the pruner's plan keeps {want}: pass the model pruner.export(budget) "
                "returned for this budget (or pruner.export() for the masks now)"
            )
