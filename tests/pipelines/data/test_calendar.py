"""The calendar model: features from the calendar alone, fits and serves exactly as stock Prophet, what-ifs,
calendar pushes without a refit, interval calibration."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prophet.serialize import model_from_json

from pipelines.data.calendar import read_calendar, split_future, store_calendars
from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.data.synth import synthesize_with_calendar
from pipelines.training.fitting import FitConfig
from pipelines.training.train import train
from predictor import calendar as cal
from predictor.forecast import calendar_days, fitted_scale, forecast
from predictor.table import ParamTable
from tests.support import days_of, run_cli, shared_rossmann, stock_forecast

MONDAY = int(np.datetime64("2015-08-03", "D").astype(np.int64))


def _cells(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=np.int8).reshape(1, len(rows), 4)


def test_features_come_from_the_calendar_and_its_neighbours() -> None:
    # Mon..Sun then Mon, Tue: promo Mon-Fri, a holiday ('a', closed) on Thursday, Sunday closed
    week = [(1, 1, 0, 0), (1, 1, 0, 1), (1, 1, 0, 0), (0, 0, 1, 0), (1, 1, 0, 0), (1, 0, 0, 0), (0, 0, 0, 0),
            (1, 0, 0, 0), (1, 0, 0, 0)]
    calendar = _cells(week)
    days = MONDAY + np.arange(9)
    cells, resolved = cal.resolve(calendar, MONDAY, np.ones((1, 7)), np.zeros(9, np.int64), days)
    x = dict(zip(cal.REGRESSORS, cal.features(cells, days).T, strict=True))
    assert x["promo"].tolist() == [1, 1, 1, 0, 1, 0, 0, 0, 0]
    assert x["promo_start"].tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 0]  # Friday restarts after the holiday
    assert x["promo_mon"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0] and x["promo_fri"][4] == 1
    assert x["holiday_before_1"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert x["holiday_before_2"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert x["holiday_after_1"][4] == 1 and x["holiday_after_2"][5] == 1
    # Thursday's closure is the holiday's: the holiday regressors carry it, not "closed_before"/"closed_after"
    # (else history could not tell their effects apart); Sunday's closure counts for neither Saturday nor Monday
    assert x["closed_before"].tolist() == [0] * 9 and x["closed_after"].tolist() == [0] * 9
    assert x["school_holiday"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert resolved.known.all() and resolved.open.tolist() == [True, True, True, False, True, True, False, True,
                                                                True]
    assert resolved.holiday[3] == 1


def test_days_beyond_the_calendar_get_the_defaults() -> None:
    calendar = _cells([(1, 1, 0, 0)])
    rate = np.array([[1, 1, 1, 1, 1, 0.9, 0.1]])  # usually closed on Sundays
    days = MONDAY + np.arange(-3, 10)
    _, r = cal.resolve(calendar, MONDAY, rate, np.zeros(len(days), np.int64), days)
    assert r.known.tolist() == [d == MONDAY for d in days]
    assert not r.promo[days != MONDAY].any() and (r.holiday == 0).all()
    assert r.open.tolist() == [cal.weekday(d) != 6 for d in days]


def test_what_if_overrides_the_day_and_its_neighbours() -> None:
    calendar = _cells([(1, 0, 0, 0)] * 7)
    days = MONDAY + np.arange(7)
    rows = np.zeros(7, np.int64)
    open_ = np.full(7, -1, np.int8)
    open_[2] = 0  # Wednesday closed in the what-if
    promo = np.full(7, -1, np.int8)
    promo[0] = 1
    cells, r = cal.resolve(calendar, MONDAY, np.ones((1, 7)), rows, days, promo, open_)
    x = dict(zip(cal.REGRESSORS, cal.features(cells, days).T, strict=True))
    assert x["closed_before"].tolist() == [0, 1, 0, 0, 0, 0, 0] and x["closed_after"][3] == 1
    assert x["promo"].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert r.what_if.tolist() == [True, False, True, False, False, False, False]
    assert not r.open[2] and r.promo[0]


def test_holiday_codes_and_bad_values_are_named(tmp_path: Path) -> None:
    assert cal.holiday_codes(np.array(["0", "a", "b", "c", 0], dtype=object)).tolist() == [0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="'x'"):
        cal.holiday_codes(np.array(["x"]))
    bad = tmp_path / "cal.csv"
    bad.write_text("Store,Date,Open,Promo\n1,2015-08-01,1,0\n1,2015-08-02,2,0\n")
    with pytest.raises(ValueError, match="'Open' must hold 0 or 1, row 3"):
        read_calendar(bad)
    (tmp_path / "none.csv").write_text("Store,Date\n1,2015-08-01\n")
    with pytest.raises(ValueError, match="no calendar column"):
        read_calendar(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="no such calendar file"):
        read_calendar(tmp_path / "missing.csv")


def test_fit_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = FitConfig.preset("calendar", seed=3)
    assert FitConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert FitConfig.preset("seed").regressors == () and FitConfig.preset("seed").transform == "none"
    with pytest.raises(ValueError, match="unknown fit configuration key"):
        FitConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown regressors"):
        FitConfig(regressors=("sales_yesterday",))


@pytest.fixture(scope="module")
def synthetic() -> dict:
    sales, calendar = synthesize_with_calendar(5, seed=11, start="2013-01-01", end="2015-07-31", calendar_days=30)
    return {"sales": sales.assign(Store=sales["Store"].astype(str), StateHoliday=sales["StateHoliday"].astype(str)),
            "calendar": calendar.assign(Store=calendar["Store"].astype(str))}


@pytest.mark.parametrize("model", ["calendar", "calendar-linear"])
def test_served_numbers_equal_stock_prophet_on_the_future_frame(synthetic: dict, model: str) -> None:
    """History days, calendar days and days beyond the calendar: yhat to 1e-6 of stock Prophet."""
    result = train(synthetic["sales"], FitConfig.preset(model), calendar=synthetic["calendar"], workers=1,
                   progress=False)
    table = result.table
    assert table.transform == ("log1p" if model == "calendar" else "none")
    assert table.meta["calendar_end"] == "2015-08-30"
    for r in result.results[:3]:
        stock = model_from_json(gzip.decompress(r.model_json_gz).decode())
        days = np.arange(table.last_day[0] - 60, table.last_day[0] + 90)
        rows = np.full(len(days), int(table.index(np.array([r.store_id]))[0]))
        yhat, lo, hi = forecast(table, rows, days)
        ref = stock_forecast(stock, table, r.store_id, days)
        np.testing.assert_allclose(yhat, ref["yhat"], rtol=1e-6)
        assert (lo <= yhat).all() and (yhat <= hi).all()


def test_calendar_closed_days_promotions_and_what_ifs(synthetic: dict) -> None:
    result = train(synthetic["sales"], FitConfig.preset("calendar"), calendar=synthetic["calendar"], workers=1,
                   progress=False)
    table = result.table
    cal_rows = synthetic["calendar"][synthetic["calendar"]["Store"] == "1"]
    days = days_of(cal_rows["Date"])
    rows = np.zeros(len(days), np.int64) + int(table.index(np.array(["1"]))[0])
    resolved = calendar_days(table, rows, days)
    assert resolved.known.all()
    assert resolved.open.tolist() == (cal_rows["Open"] == 1).tolist()
    assert resolved.promo.tolist() == (cal_rows["Promo"] == 1).tolist()
    # a what-if promotion on a calendar day without one raises the forecast
    day = int(days[(cal_rows["Promo"].to_numpy() == 0) & (cal_rows["Open"].to_numpy() == 1)][0])
    base = forecast(table, rows[:1], np.array([day]))[0][0]
    promo = forecast(table, rows[:1], np.array([day]), promo=np.array([1], np.int8))[0][0]
    assert promo > base * 1.05


def test_calibrated_intervals_and_metrics_are_reported(synthetic: dict) -> None:
    result = train(synthetic["sales"], FitConfig.preset("calendar"), calendar=synthetic["calendar"], workers=1,
                   progress=False)
    s = result.summary
    for key in ("holdout_wape", "holdout_rmspe", "median_store_mape", "holdout_coverage",
                "holdout_coverage_calibrated", "holdout_coverage_crossfit", "interval_calibration"):
        assert np.isfinite(s[key]), key
    assert (result.table.iv_scale == s["interval_calibration"]).all()
    # the factor is the conformal quantile: applying it covers >= 95% of the holdout scores
    assert s["holdout_coverage_calibrated"] >= 0.95
    # served bounds = expm1(yhat + factor * simulated offset), on the fitted (log) scale
    table, rows = result.table, np.zeros(3, np.int64)
    days = table.last_day[0] + np.arange(1, 4)
    f_yhat, _, f_hi = fitted_scale(table, rows, days)
    yhat, _, hi = forecast(table, rows, days)
    np.testing.assert_allclose(np.log1p(hi) - np.log1p(yhat), f_hi * table.iv_scale[0], rtol=1e-9)
    np.testing.assert_allclose(np.log1p(yhat), f_yhat, rtol=1e-12)


def test_future_rows_of_the_sales_file_are_the_calendar(synthetic: dict) -> None:
    sales, calendar = synthetic["sales"], synthetic["calendar"]
    both = pd.concat([sales, calendar.assign(Sales=np.nan)], ignore_index=True)
    history, future = split_future(both)
    assert len(history) == len(sales) and len(future) == len(calendar)
    a = store_calendars(sales, calendar)["2"]
    b = store_calendars(history, future)["2"]
    assert a.start == b.start and np.array_equal(a.cells, b.cells)


def test_calendar_push_is_served_without_a_refit(synthetic: dict, tmp_path: Path) -> None:
    data = write_sales(synthetic["sales"], tmp_path / "sales.csv.gz")
    write_sales(synthetic["calendar"], tmp_path / "cal.csv")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    run_cli("train", "--data", str(data), "--calendar", str(tmp_path / "cal.csv"), "--alias", "champion",
            "--workers", "1", "--no-progress", cwd=tmp_path, env=env)
    changed = pd.read_csv(tmp_path / "cal.csv")
    target = (changed["Store"] == 3) & (changed["Date"] == "2015-08-12")  # a Wednesday
    assert target.sum() == 1
    changed.loc[target, "Promo"] = 1 - changed.loc[target, "Promo"]
    changed.to_csv(tmp_path / "cal2.csv", index=False)
    out = json.loads(run_cli("calendar", "push", "--calendar", str(tmp_path / "cal2.csv"), "--json",
                             cwd=tmp_path, env=env).stdout)
    assert out["parent_version"] == "1" and out["version"] == "2" and out["stores"] == 5
    from pipelines.versions.registry import download

    old = ParamTable.load(download("models:/storecast/1", tmp_path / "v1", "params.npz", uri=uri))
    new = ParamTable.load(download("models:/storecast/2", tmp_path / "v2", "params.npz", uri=uri))
    for name in ("beta", "reg_beta", "delta", "k", "m", "iv_lower", "iv_upper", "iv_scale"):
        assert np.array_equal(getattr(old, name), getattr(new, name)), name  # no refit
    day = int(np.datetime64("2015-08-12", "D").astype(np.int64))
    rows = np.array([int(old.index(np.array(["3"]))[0])])
    before, after = forecast(old, rows, np.array([day]))[0][0], forecast(new, rows, np.array([day]))[0][0]
    went_up = changed.loc[target, "Promo"].iloc[0] == 1
    assert (after > before) if went_up else (after < before)
    other = np.array([day + 7])
    assert forecast(old, rows, other)[0][0] == forecast(new, rows, other)[0][0]


@pytest.mark.skipif(shared_rossmann() is None, reason="real Rossmann data not found beside the repository")
def test_real_stores_with_their_calendar_match_stock_prophet() -> None:
    """Several real stores (Sunday openings, the 2014 gap, long closures) with test.csv as the calendar."""
    sales = read_sales(shared_rossmann())
    stores = ["1", "13", "85", "103", "262", "1097"]
    sales = sales[sales["Store"].isin(stores)]
    calendar = read_calendar(shared_rossmann().parent / "test.csv.gz")
    result = train(sales, FitConfig.preset("calendar"), calendar=calendar, workers=1, progress=False)
    table = result.table
    assert table.meta["calendar_end"] == "2015-09-17"
    for r in result.results:
        assert r.error is None, r.error
        stock = model_from_json(gzip.decompress(r.model_json_gz).decode())
        i = int(table.index(np.array([r.store_id]))[0])
        days = np.arange(table.last_day[i] - 30, table.last_day[i] + 80)
        got = forecast(table, np.full(len(days), i), days)[0]
        np.testing.assert_allclose(got, stock_forecast(stock, table, r.store_id, days)["yhat"], rtol=1e-6)
    assert result.summary["holdout_wape"] < 0.8 * result.summary["baseline_wape"]
