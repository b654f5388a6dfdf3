"""Generated tables inside hand-written docs: the text between

    <!-- bench: headline per-budget -->
    …
    <!-- /bench -->

is replaced by what the marker names, computed from the published rows, so the README
and docs/BENCHMARKS.md cannot drift from the results.csv they were published from. Kinds:
`headline VIEW` (taperprune against the best baseline per budget, with the tally),
`means NET VIEW` (every method, mean ± std, as in table.md) and `seeds NET VIEW` (every
method, mean and each seed).

A block filled from another publish than the main one (docs/bench) names it,
`<!-- bench: means resnet20 per-budget from=bench/long -->` (the path as a link from that
doc would write it); a publish regenerates only the blocks of its own directory."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .table import Row, cells, headline, means_table, seed_table

OPEN, CLOSE = "<!-- bench:", "<!-- /bench -->"
# A block's body may not hold another opener: an unterminated marker is an error, not
# a licence to swallow the prose up to the next block's end.
MARKED = re.compile(
    r"(<!-- bench: ([^>\n]*?) -->[ \t]*(\r?\n))((?:(?!<!-- bench:).)*?)(<!-- /bench -->)",
    re.DOTALL,
)


def _headline(rows: Sequence[Row], view: str) -> list[str]:
    nets = {net: per for (v, net), per in cells(rows).items() if v == view}
    if not nets:
        raise ValueError(f"no rows in the {view} view")
    without = sorted(net for net, per in nets.items() if "taperprune" not in per)
    if without:  # the headline would silently drop these nets
        raise ValueError(f"no taperprune rows for {', '.join(without)} in the {view} view")
    return headline(rows, view)


# Each kind: how many arguments it takes and what fills its block.
KINDS: dict[str, tuple[int, Callable[..., list[str]]]] = {
    "headline": (1, _headline),
    "means": (2, means_table),
    "seeds": (2, seed_table),
}


def parse(marker: str) -> tuple[str, list[str], str | None]:
    """A marker's text as (kind, arguments, its `from=` DIR or None); a ValueError names it."""
    words = marker.split()
    sources = [w.removeprefix("from=") for w in words if w.startswith("from=")]
    kind, *args = [w for w in words if not w.startswith("from=")] or [""]
    if len(sources) > 1 or "" in sources:
        raise ValueError(f"{OPEN} {marker} -->: at most one from=, naming a directory")
    if kind not in KINDS or KINDS[kind][0] != len(args):
        raise ValueError(
            f"{OPEN} {marker} -->: not 'headline VIEW', 'means NET VIEW' or 'seeds NET VIEW'"
        )
    return kind, args, sources[0] if sources else None


def render(rows: Sequence[Row], marker: str) -> list[str]:
    """The lines a marker names (a ValueError names a marker it cannot fill)."""
    kind, args, _ = parse(marker)
    try:
        return KINDS[kind][1](rows, *args)
    except ValueError as exc:
        raise ValueError(f"{OPEN} {marker} -->: {exc}") from None


def main_publish(origin: str | None) -> bool:
    return origin is None


def splice(
    text: str, rows: Sequence[Row], ours: Callable[[str | None], bool] = main_publish
) -> tuple[str, int]:
    """`text` with the marked blocks whose `from=` (None where a marker has none) is `ours`
    regenerated, and how many those were; the others are checked and left as they are."""
    count = blocks = 0

    def fill(m: re.Match[str]) -> str:
        nonlocal count, blocks
        blocks += 1
        if not ours(parse(m.group(2))[2]):
            return m.group(0)
        count += 1
        newline = m.group(3)  # a CRLF doc stays CRLF
        return m.group(1) + newline.join(render(rows, m.group(2))) + newline + m.group(5)

    out = MARKED.sub(fill, text)
    if not text.count(OPEN) == text.count(CLOSE) == blocks:
        raise ValueError(
            f"{text.count(OPEN)} '{OPEN} … -->' and {text.count(CLOSE)} '{CLOSE}' markers, "
            f"{blocks} complete block(s): each opener needs its own closer on a later line"
        )
    return out, count
