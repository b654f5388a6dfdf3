"""Snapshots: the network when a budget was reached (`Snapshot`), and `pruner.snapshots`,
keyed by each budget's MACs and found by the budget as it was given
(`pruner.snapshots[0.5]`, `["3.87G"]`) as well."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .budget import parse_budget
from .errors import BudgetError


@dataclass
class Snapshot:
    """The network at the moment a requested budget was first reached."""

    target: int  # requested budget, MACs
    macs: int  # MACs reached
    step: int
    keep: torch.Tensor  # (N,) bool
    model: nn.Module | None  # physically pruned copy (None when restored from a state)
    widths: dict[str, int] = field(default_factory=dict)  # output channels per layer
    measured: int | None = None  # latency budgets: the snapshot's measured ns (`macs`: modelled)


class SnapshotMap(dict[int, "Snapshot"]):
    """A dict of target MACs → Snapshot that also takes budgets as users write them."""

    def __init__(self, full_macs: int, *args: Any) -> None:
        super().__init__(*args)
        self.full_macs = full_macs

    def target(self, budget: float | int | str) -> int:
        """The key of `budget`: an exact key as is, else the budget in MACs (0.5, '3.87G')."""
        if (
            isinstance(budget, int)
            and not isinstance(budget, bool)
            and dict.__contains__(self, budget)
        ):
            return budget
        return parse_budget(budget, self.full_macs)

    def __getitem__(self, budget: float | int | str) -> Snapshot:
        key = self.target(budget)
        if not dict.__contains__(self, key):
            have = ", ".join(f"{b:,}" for b in self) or "none yet"
            raise KeyError(
                f"no snapshot at budget {budget} ({key:,} MACs); snapshots taken: {have}"
            )
        return dict.__getitem__(self, key)

    def __contains__(self, budget: object) -> bool:
        try:
            return dict.__contains__(self, self.target(budget))  # type: ignore[arg-type]
        except BudgetError:
            return False

    def get(self, budget: float | int | str, default: Any = None) -> Any:
        if budget not in self:
            return default
        return self[budget]
