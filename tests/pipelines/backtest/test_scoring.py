"""The backtest's scores and data cuts on small frames worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.backtest import scoring
from pipelines.backtest.reference import lag_floor, seasonal_naive_rows
from pipelines.backtest.windows import Window, cut, special_days


def test_wape_rmspe_bias_coverage_by_hand() -> None:
    y = np.array([100.0, 200.0, 50.0])
    p = np.array([110.0, 150.0, 50.0])
    assert scoring.wape(y, p) == pytest.approx((10 + 50 + 0) / 350)
    assert scoring.rmspe(y, p) == pytest.approx(np.sqrt((0.1**2 + 0.25**2 + 0) / 3))
    assert scoring.bias(y, p) == pytest.approx((10 - 50) / 350)
    assert scoring.coverage(y, np.array([90, 210, 40.0]), np.array([120, 250, 50.0])) == pytest.approx(2 / 3)
    assert np.isnan(scoring.wape(np.zeros(2), np.ones(2)))
    assert np.isnan(scoring.rmspe(np.zeros(2), np.ones(2)))


def _rows() -> pd.DataFrame:
    """Two stores over three days; store 2 misses a LightGBM forecast on day 3, store 1 is closed on day 2."""
    dates = pd.to_datetime(["2015-01-05", "2015-01-06", "2015-01-07"] * 2)
    return pd.DataFrame({
        "Store": ["1"] * 3 + ["2"] * 3, "Date": dates, "Open": [1, 0, 1, 1, 1, 1],
        "Sales": [100.0, 0.0, 120.0, 200.0, 0.0, 220.0], "best_day": [150.0] * 3 + [250.0] * 3, "why": [""] * 6,
        "served": [110.0, 0.0, 100.0, 260.0, 30.0, 900.0], "served_lower": [90.0, 0, 90, 150, 0, 100],
        "served_upper": [130.0, 0, 110, 250, 50, 1000], "lightgbm": [100.0, 0, 120, 200, 0, np.nan],
        "naive": [120.0, 0, 120, 200, 210, 200], "christmas_eve": [True, False, False, True, False, False],
    })


def test_every_method_is_scored_on_the_same_rows() -> None:
    rows = _rows()
    mask = scoring.scored_mask(rows)
    # closed, no sales, and a row without a LightGBM forecast are out, for every method
    assert mask.tolist() == [True, False, True, True, False, False]
    out = scoring.score_window(rows)
    assert out["rows_scored"] == 3 and out["stores_scored"] == 2
    y = np.array([100.0, 120, 200])
    assert out["methods"]["served"]["wape"] == pytest.approx((10 + 20 + 60) / 420)
    assert out["methods"]["lightgbm"]["wape"] == pytest.approx(0.0)
    assert out["methods"]["naive"]["wape"] == pytest.approx(20 / 420)
    assert out["methods"]["served"]["bias"] == pytest.approx((10 - 20 + 60) / y.sum())
    assert out["methods"]["served"]["coverage"] == pytest.approx(2 / 3)  # 120 lies above its band's 110
    lo = out["left_out"]
    assert lo["rows_closed"] == 1 and lo["rows_open_without_sales"] == 1
    assert lo["rows_without_a_reference"]["lightgbm"] == 1


def test_gate_failures_worst_lists_special_days_and_the_largest_forecast() -> None:
    out = scoring.score_window(_rows())
    # store 1: served 30/220 vs naive 20/220 -> 0.136 > 1.1 x 0.091; store 2: 60/200 vs 0 -> fails too
    assert out["stores_failing"] == 2 and out["stores_failing_list"] == ["1", "2"]
    assert [r["store"] for r in out["worst_stores"]] == ["2", "1"]
    assert out["worst_days"][0]["date"] == "2015-01-05"  # 70 / 300 beats 20 / 120
    eve = out["special_days"]["christmas_eve"]
    assert eve["rows"] == 2 and eve["served_bias"] == pytest.approx(70 / 300)
    big = out["largest_forecast"]["served"]
    # every answered open day counts, scored or not: store 2's 900 on day 3 is 3.6 x its best day of 250
    assert (big["store"], big["date"], big["ratio"], big["above_3x"]) == ("2", "2015-01-07", pytest.approx(3.6), 1)
    daily = out["daily"]
    assert daily.loc[pd.Timestamp("2015-01-05"), "served"] == pytest.approx(370.0)


def test_rows_without_a_served_answer_are_counted_with_their_reason() -> None:
    rows = _rows()
    rows.loc[rows["Store"] == "2", "why"] = "refused by the predictor"
    out = scoring.score_window(rows)
    assert out["stores_scored"] == 1 and out["rows_scored"] == 2
    assert out["left_out"]["served_model_without_answer"]["refused by the predictor"] == {"rows": 2, "stores": ["2"]}


def _sales() -> pd.DataFrame:
    days = pd.date_range("2014-12-01", "2015-01-10", freq="D")
    frames = []
    for store in ("1", "2"):
        sales = 1000.0 + np.arange(len(days)) * (10 if store == "1" else 20)
        holiday = np.where(days.strftime("%m-%d").isin(["12-25", "12-26", "01-01"]), "a", "0")
        holiday = np.where((store == "2") & (days == "2015-01-06"), "a", holiday)  # Epiphany in store 2's state
        is_open = ((days.dayofweek != 6) & (holiday == "0")).astype(int)
        frames.append(pd.DataFrame({"Store": store, "Date": days, "Sales": sales * is_open, "Open": is_open,
                                    "Promo": 0, "StateHoliday": holiday, "SchoolHoliday": 0, "Customers": 1}))
    return pd.concat(frames, ignore_index=True)


def test_a_cut_gives_the_models_no_window_sales() -> None:
    sales = _sales()
    c = cut(sales, Window.parse("2014-12-20", 14))
    assert c.history["Date"].max() == pd.Timestamp("2014-12-19")
    assert "Sales" not in c.calendar and "Customers" not in c.calendar
    assert len(c.calendar) == len(c.actual) == 28 and c.calendar["Date"].min() == pd.Timestamp("2014-12-20")
    with pytest.raises(ValueError, match="after the data"):
        cut(sales, Window.parse("2015-01-01", 14))
    with pytest.raises(ValueError, match="no data before"):
        cut(sales, Window.parse("2014-12-01", 3))
    assert lag_floor(42) == 42 and lag_floor(14) == 14 and lag_floor(43) == 49


def test_the_seasonal_naive_is_the_last_open_day_on_the_same_weekday() -> None:
    sales = _sales()
    c = cut(sales, Window.parse("2014-12-20", 14))
    naive = seasonal_naive_rows(c)
    one = c.calendar["Store"].to_numpy() == "1"
    # 2014-12-22 (Monday) -> store 1's last Monday before the cutoff, 2014-12-15: 1000 + 14 x 10
    monday = one & (c.calendar["Date"].to_numpy() == np.datetime64("2014-12-22"))
    assert naive[monday] == pytest.approx([1140.0])
    # Christmas Day is closed in the calendar: 0; a Sunday (closed every week) too
    closed = c.calendar["Open"].to_numpy() == 0
    assert (naive[closed] == 0).all() and closed.sum() >= 4


def test_special_days() -> None:
    sales = _sales()
    flags = special_days(sales, Window.parse("2014-12-20", 20)).set_index(["Store", "Date"])

    def kinds(store: str, day: str) -> set[str]:
        row = flags.loc[(store, pd.Timestamp(day))]
        return {k for k, v in row.items() if v}

    assert kinds("1", "2014-12-24") == {"christmas_eve", "before_holiday", "before_closure"}
    assert kinds("1", "2014-12-31") == {"new_years_eve", "before_holiday", "before_closure"}
    assert kinds("1", "2014-12-27") == {"after_christmas"}  # closed on the 28th, a Sunday: no pre-closure day
    assert kinds("1", "2014-12-29") == {"after_christmas"}
    assert kinds("1", "2015-01-02") == {"after_new_year"} and kinds("1", "2015-01-03") == {"after_new_year"}
    assert kinds("1", "2015-01-05") == set()
    assert kinds("2", "2015-01-05") == {"before_holiday", "before_closure"}  # Epiphany: store 2 only
    assert kinds("1", "2014-12-25") == set()  # a holiday itself is no day before one


def test_the_lightgbm_lags_read_a_gap_as_the_stores_typical_weekday() -> None:
    """A month missing from the data is neither trained on nor read as zero sales by the lags."""
    from pipelines.backtest.reference import _grid, _target

    sales = _sales()
    sales = sales[~((sales["Store"] == "1") & sales["Date"].between("2014-12-08", "2014-12-14"))]
    c = cut(sales, Window.parse("2014-12-20", 14))
    grid = _grid(c)
    past = (grid["Date"] < pd.Timestamp("2014-12-20")).to_numpy()
    y = _target(grid, past)
    gap = (grid["Store"] == "1").to_numpy() & grid["Date"].between("2014-12-08", "2014-12-14").to_numpy()
    assert grid["missing"].to_numpy()[gap].all() and (grid["Open"].to_numpy()[gap] == 0).all()
    monday = gap & (grid["Date"] == "2014-12-08").to_numpy()
    # store 1's open Mondays before the cutoff: 1 and 15 December (1000 and 1140): the median is 1070
    assert y[monday] == pytest.approx([1070.0])
    assert y[gap & (grid["Date"] == "2014-12-14").to_numpy()] == pytest.approx([0.0])  # a Sunday: closed
    assert (y[~gap & past] == grid["Sales"].fillna(0).to_numpy()[~gap & past]).all()
