"""Floors per group: the width floor (a share of what uniform width would leave a group at a
budget) and the cap of `max_pruning_ratio` (a share of the group's own width).

Uniform width keeps the same share x of every group's units, round(x · units) (at least
one); the largest x that fits a budget B decides each group's allocation, and the floor is
a share of that. round(x · units) only changes where x crosses some (k + ½) / units, so x
lives on finitely many intervals: the answer is the last interval whose allocation fits,
found by a search over them. A taper asks for a slightly lower budget every step, so the
search gallops from the last answer and remembers every R it has evaluated: most steps
cost one or two evaluations of R instead of a bisection's 24 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .constraint import _rank_within

if TYPE_CHECKING:
    from .resource import Resource


class UniformWidths:
    """Uniform width's allocation per group at any budget of one resource model."""

    def __init__(self, cm: Resource, unit_group: torch.Tensor, num_groups: int) -> None:
        self.cm = cm
        self.unit_group = unit_group
        self.units = torch.bincount(unit_group, minlength=num_groups).to(torch.float64)
        self.rank = _rank_within(unit_group)
        steps = torch.cat([(torch.arange(int(n)) + 0.5) / n for n in self.units.tolist() if n])
        edges = torch.cat([torch.zeros(1), torch.unique(steps[steps < 1]), torch.ones(1)])
        self.mids = ((edges[:-1] + edges[1:]) / 2).to(torch.float64)  # one x per interval
        self._cost: dict[int, float] = {}
        self._last = len(self.mids) - 1

    def kept(self, x: float) -> torch.Tensor:
        """(G,) units each group keeps when every group keeps the share x."""
        return (x * self.units).round().clamp(min=1).long()

    def _fits(self, i: int, budget: float) -> bool:
        if i not in self._cost:
            keep = self.rank < self.kept(float(self.mids[i]))[self.unit_group]
            self._cost[i] = self.cm.total_and_marginals(keep)[0]
        return self._cost[i] <= budget

    def _largest_fitting(self, budget: float) -> int:
        """The last interval whose allocation fits `budget` (0 when none does)."""
        n, i = len(self.mids), self._last
        if self._fits(i, budget):
            lo, hi, step = i, n, 1
            while i + step < n and self._fits(i + step, budget):
                lo, step = i + step, step * 2
            hi = min(i + step, n)
        else:
            lo, hi, step = -1, i, 1
            while i - step >= 0:
                if self._fits(i - step, budget):
                    lo = i - step
                    break
                hi, step = i - step, step * 2
        while hi - lo > 1:  # lo fits (or is -1), hi does not (or is n)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._fits(mid, budget) else (lo, mid)
        self._last = max(lo, 0)
        return self._last

    def widths(self, budget: float) -> torch.Tensor:
        """(G,) uniform width's allocation at `budget` (one unit each when nothing fits)."""
        return self.kept(float(self.mids[self._largest_fitting(budget)]))

    def floors(self, budget: float, share: float) -> torch.Tensor:
        """(G,) the units each group keeps at least: `share` of its allocation at `budget`.

        With share < 1 the floors fit the budget, so they never make it unreachable."""
        return (share * self.widths(budget)).floor().long().clamp(min=1)


def uniform_floor(
    cm: Resource, unit_group: torch.Tensor, num_groups: int, budget: float, share: float
) -> torch.Tensor:
    """(G,) `share` of uniform width's allocation at `budget`, for one budget (no search
    state kept: a taper holds a `UniformWidths` instead)."""
    return UniformWidths(cm, unit_group, num_groups).floors(budget, share)


def ratio_floors(unit_group: torch.Tensor, num_groups: int, max_ratio: float) -> torch.Tensor:
    """(G,) the units each group keeps when it may lose at most `max_ratio` of them (≥ 1)."""
    units = torch.bincount(unit_group, minlength=num_groups).to(torch.float64)
    return torch.ceil((1 - max_ratio) * units - 1e-9).long().clamp(min=1)


class GroupFloors:
    """What every group keeps at least at a budget: the cap's floors (fixed: `least`) or
    the width floor's (they follow the budget); one unit each when neither is set."""

    def __init__(
        self, cm: Resource, unit_group: torch.Tensor, num_groups: int, share: float, cap: float
    ) -> None:
        self.least = ratio_floors(unit_group, num_groups, cap) if cap < 1 else None
        self._widths = UniformWidths(cm, unit_group, num_groups) if share else None
        self._share = share

    def at(self, budget: float) -> torch.Tensor | None:
        """(G,) the floors for `budget`, or None for one unit each."""
        if self._widths is None:
            return self.least
        return self._widths.floors(budget, self._share)
