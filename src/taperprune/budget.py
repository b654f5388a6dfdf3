"""Budgets as users write them: fractions of the original MACs, or absolute MACs ("3.87G");
parameters ("0.5params", "1.2Mparams"); measured latency ("3.5ms", "800us", "0.5latency").

A latency budget is held in integer nanoseconds (like MACs, an integer the λ solve meets
from below); `amount` writes any budget back in its own unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import BudgetError

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


_PARAMS = re.compile(r"\s*params?$", re.IGNORECASE)
_LATENCY_SUFFIX = r"(ms|us|µs|latency)"
_LATENCY = re.compile(rf"\s*{_LATENCY_SUFFIX}$", re.IGNORECASE)
_NS = {"ms": 1e6, "us": 1e3, "µs": 1e3}
NS = "ns"  # the unit of a latency budget inside the pruner
_NAMES = {"macs": "MACs", "params": "parameters", "latency": "latency"}


def _kind(value: object) -> str:
    text = str(value).strip()
    if _PARAMS.search(text):
        return "params"
    return "latency" if _LATENCY.search(text) else "macs"


def budget_resource(values: Sequence[float | int | str] | str) -> str:
    """'macs', 'params' or 'latency': what a list of budgets limits ('1.2Mparams',
    '0.5params' are parameters; '3.5ms', '800us', '0.5latency' latency; everything else
    MACs). A list mixing kinds is an error."""
    items = values.split(",") if isinstance(values, str) else list(values)
    kinds = {_kind(v) for v in items if str(v).strip()}
    if len(kinds) > 1:
        raise BudgetError(
            f"budgets {[str(v).strip() for v in items]} mix "
            f"{' and '.join(n for k, n in _NAMES.items() if k in kinds)}; "
            "give one kind: all in MACs (0.5, 3.87G), all in parameters (0.5params, "
            "1.2Mparams) or all in latency (3.5ms, 800us, 0.5latency)"
        )
    return kinds.pop() if kinds else "macs"


def amount(value: float, unit: str) -> str:
    """A budget in its unit: '3.87G MACs', '1,200,000 params', '3.5 ms'."""
    if unit == NS:
        return f"{value / 1e6:.4g} ms"
    return f"{value:,.0f} {unit}"


def _parse_latency(text: str, full_ns: int) -> int:
    m = re.fullmatch(
        rf"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*{_LATENCY_SUFFIX}", text, re.IGNORECASE
    )
    if m is None:
        raise BudgetError(
            f"latency budget {text!r} is not a number: write milliseconds (3.5ms), "
            "microseconds (800us) or a fraction of the model's latency (0.5latency)"
        )
    number, suffix = float(m.group(1)), m.group(2).lower()
    if number <= 0:
        raise BudgetError(f"budget {text} must be > 0")
    if suffix == "latency":
        if number >= 1:
            raise BudgetError(f"budget {text}: a fraction of the latency must be in (0, 1)")
        return int(round(number * full_ns))
    ns = number * _NS[suffix]
    if ns >= full_ns:
        raise BudgetError(
            f"budget {text} is not below the model's latency {amount(full_ns, NS)} (modelled "
            "from this machine's timings); give a smaller budget"
        )
    return int(round(ns))


def parse_budget(value: float | int | str, full_macs: int, unit: str = "MACs") -> int:
    """One budget in `unit` (MACs; params for '1.2Mparams'; ns for '3.5ms'): a number in
    (0, 1) is a fraction of `full_macs` (the model's full count), else an absolute count."""
    if _kind(value) == "latency":
        if unit != NS:
            raise BudgetError(
                f"budget {str(value).strip()!r} is a latency; this list counts {unit}"
            )
        return _parse_latency(str(value).strip(), full_macs)
    text = _PARAMS.sub("", str(value).strip())
    m = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)(?:MACs?)?", text)
    if m is None:
        raise BudgetError(
            f"budget {str(value).strip()!r} is not a number: write a fraction of the original "
            "MACs (e.g. 0.25) or absolute MACs (e.g. 3.87G, 500M); parameters as 0.5params or "
            "1.2Mparams"
        )
    number, suffix = float(m.group(1)), m.group(2).upper()
    if number <= 0:  # "0G" and "-0.5" included
        raise BudgetError(f"budget {text} must be > 0")
    if suffix == "" and number < 1:
        return int(round(number * full_macs))
    macs = number * _SUFFIX[suffix]
    if suffix == "" and number < 1000:
        raise BudgetError(
            f"budget {text} is neither a fraction below 1 (e.g. 0.5 for half the {unit}) nor "
            f"absolute {unit} (e.g. 3.87G or 500M); fractions must be in (0, 1)"
        )
    if macs >= full_macs:
        raise BudgetError(
            f"budget {text} ({macs:,.0f} {unit}) is not below the model's {full_macs:,} "
            f"{unit}; give a smaller budget"
        )
    return int(round(macs))


def parse_budgets(
    values: Sequence[float | int | str] | str, full_macs: int, minimum: float, unit: str = "MACs"
) -> list[int]:
    """A strictly decreasing list of budgets in `unit`, each reachable (≥ `minimum`)."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if not values:
        raise BudgetError("give at least one budget, e.g. --budgets 0.5,0.25")
    out = [parse_budget(v, full_macs, unit) for v in values]
    for a, b in zip(out, out[1:], strict=False):
        if b >= a:
            raise BudgetError(
                f"budgets must be strictly decreasing, got {list(values)} "
                f"({amount(a, unit)} then {amount(b, unit)}); list them from largest to smallest"
            )
    if out[-1] < minimum:
        raise BudgetError(
            f"budget {values[-1]} ({amount(out[-1], unit)}) is below the least this model can "
            f"reach with one channel left in every prunable group: {amount(minimum, unit)} "
            f"({minimum / full_macs:.2%} of {amount(full_macs, unit)}); choose a budget ≥ that"
        )
    return out


def format_macs(macs: float) -> str:
    """Human-readable MACs: 15.47G, 724.4M, 1.2K."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.4g}{suffix}"
    return f"{macs:.0f}"
