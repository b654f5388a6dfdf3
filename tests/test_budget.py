"""Budgets as users write them: fractions, absolute MACs with suffixes, and the errors."""

from __future__ import annotations

import pytest

from taperprune.budget import format_macs, parse_budget, parse_budgets
from taperprune.errors import BudgetError, TaperpruneError

FULL = 15_470_000_000  # VGG-16 at 224 px


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0.5, FULL // 2),
        ("0.25", FULL // 4),
        (" 0.125 ", FULL // 8),
        (".5", FULL // 2),
        ("2.5e-1", FULL // 4),
        ("3.87G", 3_870_000_000),
        ("3.87g", 3_870_000_000),
        ("500M", 500_000_000),
        ("500m", 500_000_000),
        ("1.5K", 1_500),
        ("0.5G", 500_000_000),
        ("3.87 GMAC", 3_870_000_000),
        ("2000MACs", 2_000),
        ("2000 MACs", 2_000),
        (1_000_000, 1_000_000),
        ("1000", 1_000),
        (1e9, 1_000_000_000),
    ],
)
def test_parse_budget_values(value, want):
    got = parse_budget(value, FULL)
    assert isinstance(got, int)
    assert got == want


def test_fraction_rounds_to_nearest_mac():
    assert parse_budget(1 / 3, 1000) == 333
    assert parse_budget(2 / 3, 1000) == 667


@pytest.mark.parametrize("value", [0, 0.0, "0", "0.0", "0G", "0M MACs", "0e5"])
def test_zero_budget_is_rejected(value):
    with pytest.raises(BudgetError, match="> 0|not a number"):
        parse_budget(value, FULL)


@pytest.mark.parametrize("value", [0, "0G", -0.5, -5, "-0.25", "-3G", "-2000"])
def test_nonpositive_budget_says_it_must_be_positive(value):
    with pytest.raises(BudgetError, match="must be > 0"):
        parse_budget(value, FULL)


@pytest.mark.parametrize("value", [1, 1.0, "1", "1.5", 999])
def test_fraction_of_one_or_more_is_rejected(value):
    with pytest.raises(BudgetError, match=r"fraction"):
        parse_budget(value, FULL)


@pytest.mark.parametrize("value", [FULL, FULL + 1, "15.47G", "16G", "1T", "15T"])
def test_budget_not_below_full_is_rejected(value):
    with pytest.raises(BudgetError, match="not below"):
        parse_budget(value, FULL)


@pytest.mark.parametrize(
    "value", ["abc", "", "   ", "0.5x", "1/2", "50%", "3.87GG", "nan", "inf", "G", "5 5"]
)
def test_garbage_is_rejected(value):
    with pytest.raises(BudgetError, match="not a number"):
        parse_budget(value, FULL)


def test_budget_error_is_a_taperprune_value_error():
    with pytest.raises(TaperpruneError):
        parse_budget("abc", FULL)
    with pytest.raises(ValueError):
        parse_budget("abc", FULL)


def test_parse_budgets_list_and_string():
    assert parse_budgets([0.5, 0.25], 1000, 10) == [500, 250]
    assert parse_budgets("0.5,0.25", 1000, 10) == [500, 250]
    assert parse_budgets(" 0.5 , 0.25 ,", 1000, 10) == [500, 250]
    assert parse_budgets(["7.5G", "3.87G", 0.1], FULL, 1e6) == [
        7_500_000_000,
        3_870_000_000,
        1_547_000_000,
    ]
    assert parse_budgets([0.5], 1000, 500) == [500]  # at the minimum is fine


@pytest.mark.parametrize("values", [[0.25, 0.5], [0.5, 0.5], ["500M", 0.5], "0.1,0.2"])
def test_parse_budgets_must_decrease(values):
    with pytest.raises(BudgetError, match="strictly decreasing"):
        parse_budgets(values, FULL, 1)


@pytest.mark.parametrize("values", [[], "", " , "])
def test_parse_budgets_empty(values):
    with pytest.raises(BudgetError, match="at least one budget"):
        parse_budgets(values, FULL, 1)


def test_parse_budgets_below_minimum_states_it():
    minimum = 123_456_789.0
    with pytest.raises(BudgetError) as info:
        parse_budgets([0.5, "100M"], FULL, minimum)
    msg = str(info.value)
    assert "123,456,789" in msg
    assert "one channel" in msg
    assert f"{minimum / FULL:.2%}" in msg


def test_parse_budgets_tiny_fraction_hits_minimum():
    with pytest.raises(BudgetError, match="least this model can reach"):
        parse_budgets([1e-9], 1000, 1)


def test_parse_budgets_propagates_single_errors():
    with pytest.raises(BudgetError, match="not a number"):
        parse_budgets([0.5, "abc"], FULL, 1)


@pytest.mark.parametrize(
    ("macs", "text"),
    [
        (15.47e9, "15.47G"),
        (724.4e6, "724.4M"),
        (1200, "1.2K"),
        (1000, "1K"),
        (999, "999"),
        (0, "0"),
        (2.5e12, "2.5T"),
        (14_700_000, "14.7M"),
        (123_456_789, "123.5M"),
    ],
)
def test_format_macs(macs, text):
    assert format_macs(macs) == text
