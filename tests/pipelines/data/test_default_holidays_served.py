"""A trained version serves Germany's public holidays beyond its known calendar, closed as each store closes.

The trainer gives the version its default calendar (``pipelines.data.public_holidays``) and each store's habit
learned from its history; the predictor answers Christmas Day, 3 October and New Year's Day beyond the calendar
as holidays, closed for a store that always closed on them and open for one that opened, still as ``default``
days; the numbers stay stock Prophet's on the exported future frame.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from prophet.serialize import model_from_json

from pipelines.data.calendar import read_calendar
from pipelines.data.sales_csv import read_sales
from pipelines.data.synth import synthesize_with_calendar
from pipelines.training.fitting import FitConfig
from pipelines.training.train import train
from predictor.forecast import calendar_days, calendar_outputs, forecast
from serving.contract import closed_days
from tests.support import days_of, shared_rossmann, stock_forecast

DAYS = days_of(["2015-10-02", "2015-10-03", "2015-12-24", "2015-12-25", "2015-12-26", "2015-12-28", "2016-01-01"])
CODES = [0, 1, 0, 3, 3, 0, 1]


def test_synthetic_stores_close_on_public_holidays_beyond_the_calendar() -> None:
    sales, calendar = synthesize_with_calendar(4, seed=5, start="2013-01-01", end="2015-07-31", calendar_days=30)
    result = train(sales.assign(Store=sales["Store"].astype(str)), FitConfig.preset("calendar"),
                   calendar=calendar.assign(Store=calendar["Store"].astype(str)), workers=1, progress=False)
    table = result.table
    assert table.holidays is not None and table.meta["calendar_end"] == "2015-08-30"
    assert (table.holiday_open[:, 1:] == 0).all()  # the synthetic stores close on every public holiday
    for r in result.results:
        i = int(table.index(np.array([r.store_id]))[0])
        rows = np.full(len(DAYS), i)
        d = calendar_days(table, rows, DAYS)
        assert d.holiday.tolist() == CODES and not d.known.any()
        assert d.open.tolist() == [c == 0 for c in CODES]
        flags = calendar_outputs(table, rows, DAYS, names=("calendar", "day_flags"))
        assert flags["calendar"].tolist() == ["default"] * len(DAYS)
        assert closed_days(flags["day_flags"]).tolist() == [c > 0 for c in CODES]
        # the served numbers are stock Prophet's on the future frame, across the holidays beyond the calendar
        stock = model_from_json(gzip.decompress(r.model_json_gz).decode())
        days = np.arange(DAYS[0] - 5, DAYS[-1] + 5)
        np.testing.assert_allclose(forecast(table, np.full(len(days), i), days)[0],
                                   stock_forecast(stock, table, r.store_id, days)["yhat"], rtol=1e-6)


@pytest.mark.skipif(shared_rossmann() is None, reason="real Rossmann data not found beside the repository")
def test_real_stores_keep_their_own_habit_beyond_the_calendar() -> None:
    """Store 1 always closed on holidays, store 85 always opened; beyond test.csv (17 September 2015)."""
    sales = read_sales(shared_rossmann())
    sales = sales[sales["Store"].isin(["1", "85"])]
    calendar = read_calendar(shared_rossmann().parent / "test.csv.gz")
    result = train(sales, FitConfig.preset("calendar"), calendar=calendar, workers=1, progress=False)
    table = result.table
    assert table.meta["calendar_end"] == "2015-09-17"
    for sid, opens in (("1", False), ("85", True)):
        i = int(table.index(np.array([sid]))[0])
        d = calendar_days(table, np.full(len(DAYS), i), DAYS)
        assert d.holiday.tolist() == CODES and not d.known.any()
        holiday = np.array(CODES) > 0
        assert d.open[holiday].tolist() == [opens] * int(holiday.sum()), sid
        yhat = forecast(table, np.full(len(DAYS), i), DAYS)[0]
        assert np.isfinite(yhat).all()
