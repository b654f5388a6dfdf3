"""Generated tables inside hand-written docs: the text between

    <!-- bench: headline per-budget -->
    …
    <!-- /bench -->

is replaced by what the marker names, computed from the published rows, so the README
and docs/BENCHMARKS.md cannot drift from docs/bench/results.csv. Kinds:
`headline VIEW` (taperprune against the best baseline per budget, with the tally),
`means NET VIEW` (every method, mean ± std, as in table.md) and `seeds NET VIEW` (every
method, mean and each seed).

A block filled from another publish than the main one (docs/bench) names it,
`<!-- bench: means resnet20 per-budget from=bench/long -->` (the path as a link from that
doc would write it); a publish regenerates only the blocks of its own directory."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .table import Row, cells, headline, means_table, seed_table

OPEN, CLOSE = "<!-- bench:", "<!-- /bench -->"
# A block's body may not hold another opener: an unterminated marker is an error, not
# a licence to swallow the prose up to the next block's end.
MARKED = re.compile(
    r"(<!-- bench: ([^>\n]*?) -->\r?\n)((?:(?!<!-- bench:).)*?)(<!-- /bench -->)", re.DOTALL
)


def _headline(rows: Sequence[Row], view: str) -> list[str]:
    nets = {net: per for (v, net), per in cells(rows).items() if v == view}
    if not nets:
        raise ValueError(f"no rows in the {view} view")
    without = sorted(net for net, per in nets.items() if "taperprune" not in per)
    if without:  # the headline would silently drop these nets
        raise ValueError(f"no taperprune rows for {', '.join(without)} in the {view} view")
    return headline(rows, view)


def render(rows: Sequence[Row], what: str) -> list[str]:
    """The lines a marker's `what` names (a ValueError names a marker it cannot fill)."""
    kind, *args = what.split()
    try:
        if kind == "headline" and len(args) == 1:
            return _headline(rows, args[0])
        if kind == "seeds" and len(args) == 2:
            return seed_table(rows, args[0], args[1])
        if kind == "means" and len(args) == 2:
            return means_table(rows, args[0], args[1])
    except ValueError as exc:
        raise ValueError(f"{OPEN} {what} -->: {exc}") from None
    raise ValueError(
        f"{OPEN} {what} -->: not 'headline VIEW', 'means NET VIEW' or 'seeds NET VIEW'"
    )


def source_of(what: str) -> tuple[str, str | None]:
    """A marker's `what` without its `from=DIR`, and that DIR (None: the main publish)."""
    words = what.split()
    sources = [w.removeprefix("from=") for w in words if w.startswith("from=")]
    if len(sources) > 1:
        raise ValueError(f"{OPEN} {what} -->: more than one from=")
    rest = " ".join(w for w in words if not w.startswith("from="))
    return rest, sources[0] if sources else None


def splice(text: str, rows: Sequence[Row], source: str | None = None) -> tuple[str, int]:
    """`text` with the marked blocks of `source` (a marker's `from=`; None: those without)
    regenerated, and how many those were; the other blocks are left as they are."""
    count = blocks = 0

    def fill(m: re.Match[str]) -> str:
        nonlocal count, blocks
        blocks += 1
        what, origin = source_of(m.group(2))
        if origin != source:
            return m.group(0)
        count += 1
        return m.group(1) + "\n".join(render(rows, what)) + "\n" + m.group(4)

    out = MARKED.sub(fill, text)
    if not text.count(OPEN) == text.count(CLOSE) == blocks:
        raise ValueError(
            f"{text.count(OPEN)} '{OPEN} … -->' and {text.count(CLOSE)} '{CLOSE}' markers, "
            f"{blocks} complete block(s): each opener needs its own closer on a later line"
        )
    return out, count
