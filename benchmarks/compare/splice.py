"""Generated tables inside hand-written docs: the text between

    <!-- bench: headline per-budget -->
    …
    <!-- /bench -->

is replaced by what the marker names, computed from the published rows, so the README
and docs/BENCHMARKS.md cannot drift from docs/bench/results.csv. Kinds:
`headline VIEW` (taperprune against the best baseline per budget, with the tally) and
`seeds NET VIEW` (every method, mean and each seed)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .table import Row, headline, seed_table

MARKED = re.compile(r"(<!-- bench: ([^>]*?) -->\n)(.*?)(<!-- /bench -->)", re.DOTALL)


def render(rows: Sequence[Row], what: str) -> list[str]:
    """The lines a marker's `what` names (a ValueError names a marker it cannot fill)."""
    kind, *args = what.split()
    if kind == "headline" and len(args) == 1:
        return headline(rows, args[0])
    if kind == "seeds" and len(args) == 2:
        return seed_table(rows, args[0], args[1])
    raise ValueError(f"<!-- bench: {what} -->: not 'headline VIEW' or 'seeds NET VIEW'")


def splice(text: str, rows: Sequence[Row]) -> tuple[str, int]:
    """`text` with every marked block regenerated, and how many blocks there were."""
    count = 0

    def fill(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return m.group(1) + "\n".join(render(rows, m.group(2))) + "\n" + m.group(4)

    return MARKED.sub(fill, text), count
