"""taperprune: prune whole channels of a CNN to an exact MAC budget while fine-tuning.

Names are imported on first use, so `import taperprune` (and `taperprune --help`) does not
pay for torch until something needs it. The library needs torch, torchvision,
torch-pruning and safetensors only; the `taperprune` application (`taperprune.run`, the
CLI) comes with the `cli` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name → the module that defines it
_HOMES = {
    "BudgetError": "errors",
    "DataError": "errors",
    "GraphError": "errors",
    "ModelError": "errors",
    "TaperpruneError": "errors",
    "ChannelGraph": "graph",
    "build_graph": "graph",
    "build_cost_model": "cost",
    "count_macs": "cost",
    "count_params": "cost",
    "ChannelMasks": "masks",
    "remove_masked": "surgery",
    "PrunerConfig": "settings",
    "PriceKind": "settings",
    "ScoreKind": "settings",
    "ScheduleConfig": "schedule",
    "ScheduleKind": "schedule",
    "Snapshot": "pruner",
    "StepRecord": "pruner",
    "TaperPruner": "pruner",
    "recalibrate_bn": "calibrate",
    "finetune": "finetuning",
    "load": "plan",
    "save": "saving",
}

__all__ = [
    "BudgetError",
    "ChannelGraph",
    "ChannelMasks",
    "DataError",
    "GraphError",
    "ModelError",
    "PriceKind",
    "PrunerConfig",
    "ScheduleConfig",
    "ScheduleKind",
    "ScoreKind",
    "Snapshot",
    "StepRecord",
    "TaperPruner",
    "TaperpruneError",
    "__version__",
    "build_cost_model",
    "build_graph",
    "count_macs",
    "count_params",
    "finetune",
    "load",
    "recalibrate_bn",
    "remove_masked",
    "save",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taperprune")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata costs ~0.1 s: only when asked
        globals()[name] = value = _version()
        return value
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'taperprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .calibrate import recalibrate_bn
    from .cost import build_cost_model, count_macs, count_params
    from .errors import BudgetError, DataError, GraphError, ModelError, TaperpruneError
    from .finetuning import finetune
    from .graph import ChannelGraph, build_graph
    from .masks import ChannelMasks
    from .plan import load
    from .pruner import Snapshot, StepRecord, TaperPruner
    from .saving import save
    from .schedule import ScheduleConfig, ScheduleKind
    from .settings import PriceKind, PrunerConfig, ScoreKind
    from .surgery import remove_masked
