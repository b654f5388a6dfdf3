"""taperprune: prune whole channels of a CNN to an exact MAC budget while fine-tuning."""

from importlib.metadata import PackageNotFoundError, version

from .cost import build_cost_model, count_macs
from .errors import BudgetError, DataError, GraphError, ModelError, TaperpruneError
from .export import load
from .graph import ChannelGraph, build_graph
from .masks import ChannelMasks, remove_masked
from .pruner import PrunerConfig, Snapshot, StepRecord, TaperPruner
from .schedule import ScheduleConfig, ScheduleKind

try:
    __version__ = version("taperprune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "BudgetError",
    "ChannelGraph",
    "ChannelMasks",
    "DataError",
    "GraphError",
    "ModelError",
    "PrunerConfig",
    "ScheduleConfig",
    "ScheduleKind",
    "Snapshot",
    "StepRecord",
    "TaperPruner",
    "TaperpruneError",
    "__version__",
    "build_cost_model",
    "build_graph",
    "count_macs",
    "load",
    "remove_masked",
]
