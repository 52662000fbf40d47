"""What a fit adds beyond Prophet's parameters: a reopening after a gap, the best day, the plausible band.

Real fits (prophet-batch, the trainer's own path) on small synthetic stores.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipelines.data.synth import synthesize
from pipelines.training.fitting import AFTER_GAP, CALENDAR_REGRESSORS, FitConfig
from pipelines.training.train import train
from predictor.forecast import forecast
from predictor.table import NO_GAP
from predictor.validate import PLAUSIBLE_BAND, horizon_problem

DAYS = pd.date_range("2013-01-01", "2015-07-31", freq="D")


def store(sid: str, gap: tuple[str, str] | None, after: float, seed: int) -> pd.DataFrame:
    """A store open Monday to Saturday with a weekly pattern and noise; no sales inside ``gap``, and sales
    ``after`` times as high once it reopens."""
    rng = np.random.default_rng(seed)
    wd = DAYS.dayofweek.to_numpy()
    level = np.log(6000) + np.array([0.15, 0.0, -0.05, -0.05, 0.0, -0.15, 0.0])[wd] + rng.normal(0, 0.05, len(DAYS))
    frame = pd.DataFrame({"Store": sid, "Date": DAYS, "Open": (wd != 6).astype(int), "Promo": 0,
                          "StateHoliday": "0", "SchoolHoliday": 0})
    if gap is not None:
        first, last = pd.Timestamp(gap[0]), pd.Timestamp(gap[1])
        level = level + np.log(after) * np.asarray(DAYS.to_numpy() > last.to_datetime64())
        frame = frame[~DAYS.to_series().between(first, last).to_numpy()]
        level = level[frame.index]
    frame["Sales"] = np.where(frame["Open"] == 1, np.round(np.exp(level)), 0.0)
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def gap_stores() -> pd.DataFrame:
    return pd.concat([store("1", None, 1.0, 1),
                      store("2", ("2014-10-01", "2014-12-31"), 1.5, 2),  # months of refurbishment, then 1.5 x
                      store("3", ("2015-03-01", "2015-06-11"), 0.7, 3)],  # back 50 days before the end, 0.7 x
                     ignore_index=True)


def test_a_store_after_a_gap_is_forecast_at_its_new_level(gap_stores: pd.DataFrame) -> None:
    with_level = train(gap_stores, FitConfig.preset("calendar"), workers=1, progress=False)
    without = train(gap_stores, FitConfig.preset("calendar", regressors=tuple(
        r for r in CALENDAR_REGRESSORS if r not in ("reopened", "reopening_week"))), workers=1, progress=False)
    t = with_level.table
    assert t.level_day.tolist() == [NO_GAP, _day("2015-01-01"), _day("2015-06-12")]
    ahead = np.arange(_day("2015-08-03"), _day("2015-08-29"))
    ahead = ahead[(ahead + 3) % 7 != 6]  # open days
    for sid, true_level in (("2", 1.5), ("3", 0.7)):
        rows = np.full(len(ahead), int(t.index(np.array([sid]))[0]))
        truth = np.exp(np.log(6000) + np.array([0.15, 0.0, -0.05, -0.05, 0.0, -0.15, 0.0])[(ahead + 3) % 7]
                       ) * true_level
        err = np.abs(forecast(t, rows, ahead)[0] / truth - 1).mean()
        err_without = np.abs(forecast(without.table, rows, ahead)[0] / truth - 1).mean()
        assert err < 0.06 and err < err_without, (sid, err, err_without)
    # the gate judges store 3 on its data after the gap: the holdout fit saw AFTER_GAP days of it
    m = with_level.metrics.set_index("store_id")
    after_gap = pd.date_range(pd.Timestamp("2015-06-12") + pd.Timedelta(days=AFTER_GAP), "2015-07-31")
    assert m.loc["3", "holdout_n"] == int((after_gap.dayofweek != 6).sum()) < 42
    assert m.loc["1", "holdout_n"] == int((pd.date_range("2015-06-20", "2015-07-31").dayofweek != 6).sum())


def test_the_best_day_is_recorded(gap_stores: pd.DataFrame) -> None:
    t = train(gap_stores, FitConfig.preset("calendar", holdout_days=0), workers=1, progress=False).table
    best = gap_stores.groupby("Store")["Sales"].max()
    assert t.best_day.tolist() == [float(best[s]) for s in t.store_id]


@pytest.fixture(scope="module")
def short_history() -> pd.DataFrame:
    """Ten months of history: a yearly shape fitted on them runs away in the months never seen."""
    sales = synthesize(8, seed=3, start="2014-10-01", end="2015-07-31")
    sales["Store"] = sales["Store"].astype(str)
    return sales


def test_no_served_forecast_leaves_the_band_over_the_horizon(short_history: pd.DataFrame) -> None:
    default = train(short_history, FitConfig.preset("calendar", holdout_days=0), workers=1, progress=False)
    assert not default.failed and "fit" not in default.metrics  # too short a history for a yearly shape
    assert horizon_problem(default.table) is None
    cfg = FitConfig.preset("calendar", holdout_days=0, yearly_min_days=0)  # a yearly shape whatever the history
    result = train(short_history, cfg, workers=1, progress=False)
    assert not result.failed and len(result.table) == 8
    assert horizon_problem(result.table) is None  # what the predictor checks before it serves
    refitted = result.metrics[result.metrics["fit"].fillna("").str.startswith("without yearly seasonality")]
    assert len(refitted) >= 1, "the fixture no longer has a store that runs away"
    assert refitted["fit"].str.contains(rf"outside \[-1, {PLAUSIBLE_BAND:g}\] x the store's best day").all()
    # a band no fit can stay in: every store is refused, naming its day
    strict = train(short_history, cfg.replace(band=0.5), workers=1, progress=False)
    assert strict.failed
    for failure in strict.failed:
        assert re.fullmatch(rf"refused by the gate: implausible forecast: store '{failure['store_id']}' on "
                            r"\d{4}-\d\d-\d\d \(\d+ days after its data\) forecasts [\d,]+, outside \[-1, 0.5\] x .*",
                            failure["reason"]), failure
    assert set(strict.table.store_id) == {r.store_id for r in strict.results if not r.error}


def _day(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))
