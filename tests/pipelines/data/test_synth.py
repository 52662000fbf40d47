"""Tests for the synthetic Rossmann-format generator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.sales_csv import COLUMNS
from pipelines.data.synth import GAP_END, GAP_START, synthesize

ROSSMANN_DTYPES = {
    "Store": "int64",
    "DayOfWeek": "int64",
    "Date": "datetime64[ns]",
    "Sales": "int64",
    "Customers": "int64",
    "Open": "int64",
    "Promo": "int64",
    "StateHoliday": "object",
    "SchoolHoliday": "int64",
}


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return synthesize(200, seed=3)


@pytest.fixture(scope="module")
def open_rows(sales: pd.DataFrame) -> pd.DataFrame:
    return sales[sales["Open"] == 1]


def test_same_seed_same_frame_other_seed_differs() -> None:
    a = synthesize(5, seed=11, start="2014-01-01", end="2014-12-31")
    b = synthesize(5, seed=11, start="2014-01-01", end="2014-12-31")
    pd.testing.assert_frame_equal(a, b)
    c = synthesize(5, seed=12, start="2014-01-01", end="2014-12-31")
    assert not a["Sales"].equals(c["Sales"])


def test_store_series_does_not_depend_on_store_count() -> None:
    five = synthesize(5, seed=4)
    ten = synthesize(10, seed=4)
    assert sorted(five["Store"].unique()) == [1, 2, 3, 4, 5]
    for k in (1, 5):
        pd.testing.assert_frame_equal(
            five[five["Store"] == k].reset_index(drop=True), ten[ten["Store"] == k].reset_index(drop=True)
        )


def test_columns_and_dtypes_match_rossmann(sales: pd.DataFrame) -> None:
    assert tuple(sales.columns) == COLUMNS
    assert {c: str(t) for c, t in sales.dtypes.items()} == ROSSMANN_DTYPES
    assert set(sales["StateHoliday"].map(type)) == {str}
    assert set(sales["StateHoliday"]) == {"0", "a", "b", "c"}
    for col in ("Open", "Promo", "SchoolHoliday"):
        assert set(sales[col].unique()) == {0, 1}, col
    assert (sales["DayOfWeek"] == sales["Date"].dt.dayofweek + 1).all()
    assert not sales.duplicated(["Store", "Date"]).any()
    assert sales["Date"].min() == pd.Timestamp("2013-01-01")
    assert sales["Date"].max() == pd.Timestamp("2015-07-31")
    assert sales.isna().sum().sum() == 0


def test_levels_look_like_rossmann(open_rows: pd.DataFrame) -> None:
    per_store = open_rows.groupby("Store")["Sales"].mean()
    assert 5_000 < per_store.median() < 8_500
    assert per_store.min() > 1_500
    assert per_store.max() < 30_000
    assert per_store.quantile(0.9) / per_store.quantile(0.1) > 1.6  # stores really differ
    ratio = open_rows["Sales"] / open_rows["Customers"]
    assert 7.5 < ratio.median() < 11.5
    assert np.corrcoef(open_rows["Sales"], open_rows["Customers"])[0, 1] > 0.8
    assert (open_rows["Sales"] > 0).all()


def test_weekly_seasonality(open_rows: pd.DataFrame) -> None:
    by_day = open_rows[open_rows["DayOfWeek"] < 7].groupby("DayOfWeek")["Sales"].mean()
    assert by_day[1] > 1.15 * by_day[6]
    assert by_day[1] > by_day[3]
    assert by_day.max() / by_day.min() > 1.2


def test_yearly_seasonality(open_rows: pd.DataFrame) -> None:
    by_month = open_rows.groupby(open_rows["Date"].dt.month)["Sales"].mean()
    assert by_month[12] > 1.1 * by_month.drop(12).mean()
    assert by_month.idxmax() == 12
    # Within December the run-up to Christmas is busier than the first days of the month.
    dec = open_rows[open_rows["Date"].dt.month == 12]
    assert dec[dec["Date"].dt.day.between(18, 24)]["Sales"].mean() > dec[dec["Date"].dt.day <= 7]["Sales"].mean()


def test_sundays_mostly_closed(sales: pd.DataFrame) -> None:
    sundays = sales[sales["DayOfWeek"] == 7]
    assert sundays["Open"].mean() < 0.1
    sunday_stores = sundays.loc[sundays["Open"] == 1, "Store"].nunique()
    assert 1 <= sunday_stores <= 0.08 * sales["Store"].nunique()
    assert 0.12 < 1 - sales["Open"].mean() < 0.25


def test_holidays_closed(sales: pd.DataFrame) -> None:
    holidays = sales[sales["StateHoliday"] != "0"]
    assert len(holidays) > 0
    assert (holidays["Open"] == 0).all()
    day = sales.set_index("Date")["StateHoliday"]
    assert set(day.loc["2013-12-25"]) == {"c"}
    assert set(day.loc["2014-01-01"]) == {"a"}
    assert set(day.loc["2014-04-21"]) == {"b"}  # Easter Monday 2014
    assert set(day.loc["2015-04-03"]) == {"b"}  # Good Friday 2015
    assert set(day.loc["2013-03-05"]) == {"0"}


def test_school_holidays(sales: pd.DataFrame, open_rows: pd.DataFrame) -> None:
    share = sales["SchoolHoliday"].mean()
    assert 0.08 < share < 0.3
    summer = sales[sales["Date"].dt.month.isin([7, 8]) & (sales["DayOfWeek"] < 6)]
    march = sales[(sales["Date"].dt.month == 3) & (sales["Date"].dt.day < 10)]
    assert summer["SchoolHoliday"].mean() > 0.5 > march["SchoolHoliday"].mean()
    by_flag = open_rows.groupby("SchoolHoliday")["Sales"].mean()
    assert by_flag[1] > by_flag[0]


def test_promo_runs_and_lift(sales: pd.DataFrame, open_rows: pd.DataFrame) -> None:
    assert 0.3 < sales["Promo"].mean() < 0.45
    assert (sales.loc[sales["Promo"] == 1, "DayOfWeek"] <= 5).all()
    by_promo = open_rows.groupby("Promo")["Sales"].mean()
    assert by_promo[1] > 1.1 * by_promo[0]
    # Promos come in whole Monday-Friday weeks, alternating with promo-free weeks.
    store = sales[sales["Store"] == sales["Store"].iloc[0]]
    weekly = store[store["DayOfWeek"] <= 5].groupby(store["Date"].dt.to_period("W"))["Promo"].agg(["min", "max"])
    assert (weekly["min"] == weekly["max"]).iloc[1:-1].all()
    flags = weekly["max"].to_numpy()
    assert 0.4 < flags.mean() < 0.65
    assert (np.diff(flags) != 0).mean() > 0.7


def test_closed_days_have_no_sales(sales: pd.DataFrame) -> None:
    closed = sales[sales["Open"] == 0]
    assert len(closed) > 0
    assert (closed["Sales"] == 0).all()
    assert (closed["Customers"] == 0).all()


def test_gap_in_2014h2_for_about_16_percent_of_stores(sales: pd.DataFrame) -> None:
    days = pd.date_range(sales["Date"].min(), sales["Date"].max(), freq="D")
    gap = pd.date_range(GAP_START, GAP_END, freq="D")
    rows = sales.groupby("Store")["Date"].agg(["size", "min", "max"])
    full = rows["size"] == len(days)
    gapped = rows["size"] == len(days) - len(gap)
    assert (full | gapped).all()
    assert (rows["max"] == sales["Date"].max()).all()
    assert 0.10 <= gapped.mean() <= 0.23
    in_gap = sales[sales["Store"].isin(rows.index[gapped]) & sales["Date"].between(gap[0], gap[-1])]
    assert in_gap.empty
    # Rows just outside the gap are still there.
    edge = sales[sales["Store"] == rows.index[gapped][0]].set_index("Date")
    assert {pd.Timestamp("2014-06-30"), pd.Timestamp("2015-01-01")} <= set(edge.index)


def _longest_closed_run(open_flags: pd.Series) -> int:
    closed = (open_flags.to_numpy() == 0).astype(int)
    edges = np.diff(np.concatenate([[0], closed, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


def test_refurbishment_closures(sales: pd.DataFrame) -> None:
    runs = sales.groupby("Store")["Open"].apply(_longest_closed_run)
    long_runs = runs[runs >= 14]
    assert 1 <= len(long_runs) <= 0.1 * len(runs)
    assert long_runs.max() <= 120 + 3  # a closure may touch a Sunday or holiday
    # Without refurbishment the longest closure is a weekend plus Christmas (a few days).
    assert runs.median() <= 3


def test_short_ranges_and_zero_stores() -> None:
    small = synthesize(3, seed=1, start="2015-07-01", end="2015-07-14")
    assert len(small) == 3 * 14
    empty = synthesize(0)
    assert empty.empty
    assert tuple(empty.columns) == COLUMNS
    with pytest.raises(ValueError):
        synthesize(-1)
