"""Germany's national holidays as the default calendar, and each store's habit on them learned from its history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.calendar import store_calendars
from pipelines.data.public_holidays import default_calendar, german_holidays
from pipelines.data.sales_csv import holiday_open_rate, read_sales
from predictor import calendar as cal
from predictor.table import ParamTable, _row
from serving.contract import MAX_DAYS_AHEAD
from tests.support import days_of, random_table, shared_rossmann

KINDS = cal.HOLIDAY_KINDS
# Rossmann's train.csv: the days every store carries a StateHoliday code (the national holidays), as coded there
ROSSMANN_NATIONAL = {
    "2013-01-01": "a", "2013-03-29": "b", "2013-04-01": "b", "2013-05-01": "a", "2013-05-09": "a", "2013-05-20": "a",
    "2013-10-03": "a", "2013-12-25": "c", "2013-12-26": "c",
    "2014-01-01": "a", "2014-04-18": "b", "2014-04-21": "b", "2014-05-01": "a", "2014-05-29": "a", "2014-06-09": "a",
    "2014-10-03": "a", "2014-12-25": "c", "2014-12-26": "c",
    "2015-01-01": "a", "2015-04-03": "b", "2015-04-06": "b", "2015-05-01": "a", "2015-05-14": "a", "2015-05-25": "a",
    "2015-10-03": "a", "2015-12-25": "c", "2015-12-26": "c",
}


def as_dict(table: cal.HolidayTable) -> dict[str, str]:
    return {str(np.datetime64(int(d), "D")): "0abc"[c] for d, c in zip(table.days, table.codes, strict=True)}


def test_the_national_holidays_are_coded_as_rossmann_codes_them() -> None:
    table = german_holidays(2013, 2015)
    assert as_dict(table) == ROSSMANN_NATIONAL  # Easter Sunday and Whit Sunday carry no code, as in train.csv
    assert [KINDS[k] for k in table.kinds[:9]] == ["new_year", "good_friday", "easter_monday", "labour_day",
                                                   "ascension", "whit_monday", "unity_day", "christmas", "st_stephen"]
    y2017 = as_dict(german_holidays(2017, 2017))
    assert y2017["2017-10-31"] == "a"  # Reformation Day's 500th anniversary was national once...
    reformation = german_holidays(2017, 2017)
    assert reformation.kinds[reformation.days == days_of(["2017-10-31"])[0]].tolist() == [cal.NO_KIND]  # ...no kind


def test_the_default_calendar_reaches_decades_past_the_horizon() -> None:
    first, last = days_of(["2013-01-01", "2015-07-31"])
    table = default_calendar(int(first), int(last))
    assert table.days[0] == first and (np.diff(table.days) > 0).all()
    assert table.days[-1] > last + MAX_DAYS_AHEAD + 40 * 365
    assert as_dict(table)["2045-12-25"] == "c" and as_dict(table)["2040-10-03"] == "a"
    assert table.days.nbytes + table.codes.nbytes + table.kinds.nbytes < 8000  # decades cost a few kilobytes
    later = default_calendar(int(days_of(["2013-06-01"])[0]), int(last))
    assert later.days[0] == days_of(["2013-10-03"])[0]  # nothing before the first history day


def frame(rows: list[tuple[str, str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["Store", "Date", "Open", "StateHoliday"]).assign(
        Date=lambda f: pd.to_datetime(f["Date"]), Sales=lambda f: f["Open"] * 1000.0)


def test_habits_per_code_and_per_holiday_with_the_fleets_share_where_a_store_has_no_evidence() -> None:
    days = pd.date_range("2014-12-20", "2015-01-10").strftime("%Y-%m-%d")
    hol = {"2014-12-25": "c", "2014-12-26": "c", "2015-01-01": "a", "2015-01-06": "a"}  # Epiphany: regional
    rows = []
    for d in days:
        code = hol.get(d, "0")
        rows.append(("closer", d, int(code == "0"), code))
        rows.append(("opener", d, 1, code))
        rows.append(("epiphany", d, int(code == "0" or d == "2015-01-06"), code))
    rows += [("new", "2015-01-08", 1, "0"), ("new", "2015-01-09", 1, "0")]  # no holiday in its history
    table = default_calendar(int(days_of(["2014-01-01"])[0]), int(days_of(["2015-01-10"])[0]))
    h = holiday_open_rate(frame(rows), table)
    assert h["closer"][0].tolist() == [1, 0, 0, 0] and h["opener"][0].tolist() == [1, 1, 0, 1]
    # code b: nobody has evidence, so 0 (closed); code a: the share of the store's a-days (New Year, Epiphany)
    assert h["epiphany"][0].tolist() == [1, 0.5, 0, 0]
    by_kind = dict(zip(KINDS, h["epiphany"][1].tolist(), strict=True))
    assert by_kind["new_year"] == 0 and by_kind["christmas"] == 0 and by_kind["ascension"] == -1
    assert h["new"][0].tolist() == pytest.approx([1, 1 / 6 + 1 / 3, 0, 1 / 3])  # the fleet's shares
    assert (h["new"][1] == -1).all()


def test_a_missing_row_on_a_holiday_is_a_closed_day_and_the_default_codes_fill_a_file_without_them() -> None:
    days = pd.date_range("2014-12-20", "2015-01-10")
    keep = ~days.strftime("%m-%d").isin(["12-25", "12-26", "01-01"])  # a file of open days only
    rows = [("s", d, 1, "0") for d in days[keep].strftime("%Y-%m-%d")]
    table = default_calendar(int(days_of(["2014-01-01"])[0]), int(days_of(["2015-01-10"])[0]))
    h = holiday_open_rate(frame(rows).drop(columns="StateHoliday"), table)
    assert h["s"][0].tolist() == [1, 0, 0, 0]
    rows = [("s", d, 1, "0") for d in days.strftime("%Y-%m-%d")]  # open on every day, holidays included
    h = holiday_open_rate(frame(rows).drop(columns="StateHoliday"), table)
    assert h["s"][0].tolist() == [1, 1, 0, 1]  # the codes came from the default calendar
    assert holiday_open_rate(frame(rows).drop(columns="StateHoliday"))["s"][0].tolist() == [1, 0, 0, 0]  # none


def test_store_calendars_carry_the_habits_and_the_default_calendar() -> None:
    days = pd.date_range("2014-12-01", "2015-01-31").strftime("%Y-%m-%d")
    rows = [(s, d, int(s == "opener" or d[5:] not in ("12-25", "12-26", "01-01")), "0") for s in ("opener", "closer")
            for d in days]
    sales = frame(rows)
    sales.loc[sales["Date"].dt.strftime("%m-%d").isin(["12-25", "12-26"]), "StateHoliday"] = "c"
    sales.loc[sales["Date"].dt.strftime("%m-%d") == "01-01", "StateHoliday"] = "a"
    table = default_calendar(int(days_of(["2014-12-01"])[0]), int(days_of(["2015-01-31"])[0]))
    calendars = store_calendars(sales, holidays=table)
    christmas = days_of(["2015-12-25"])
    for sid, is_open in (("opener", True), ("closer", False)):
        sc = calendars[sid]
        assert sc.default_holidays is table and sc.habits["holiday_open"] is sc.holiday_open
        _, r = cal.resolve(sc.cells[None], sc.start, sc.open_rate[None], np.zeros(1, np.int64), christmas,
                           holidays=sc.holidays)
        assert r.holiday.tolist() == [3] and r.open.tolist() == [is_open] and not r.known.any()
    # a job's rows carry the habits and the default calendar into the version's table (from_rows)
    rows = [{**_row(random_table(2), i), "store_id": sid, "cal_start": sc.start, "calendar": sc.cells, **sc.habits}
            for i, (sid, sc) in enumerate(sorted(calendars.items()))]
    version = ParamTable.from_rows(rows, random_table(1).iv_days, 0.95)
    assert np.array_equal(version.hol_days, table.days) and np.array_equal(version.hol_kinds, table.kinds)
    assert version.holiday_open[:, 3].tolist() == [0.0, 1.0]  # closer, opener
    _, r = cal.resolve(version.calendar, version.cal_start, version.open_rate, np.array([0, 1]),
                       np.repeat(christmas, 2), holidays=version.holidays)
    assert r.open.tolist() == [False, True]
    plain = store_calendars(sales)["closer"]  # no default calendar given: the habits still learned
    assert len(plain.default_holidays.days) == 0 and plain.holiday_open.tolist() == [1, 0, 0, 0]


@pytest.mark.skipif(shared_rossmann() is None, reason="real Rossmann data not found beside the repository")
def test_real_stores_habits() -> None:
    """Store 1 closes on every holiday, 85 opens on all of them, 122 opens on Easter Monday, Ascension, Whit
    Monday and Unity Day but not on New Year's Day, Good Friday, Labour Day or Christmas: per code its shares
    (0.57 on ``a``, 0.5 on ``b``) would open it on all of them."""
    sales = read_sales(shared_rossmann())
    sales = sales[sales["Store"].isin(["1", "85", "122", "1081"])]
    day = days_of(sales["Date"])
    h = holiday_open_rate(sales, default_calendar(int(day.min()), int(day.max())))
    assert h["1"][0].tolist() == [1, 0, 0, 0] and (h["1"][1] == 0).all()
    assert h["85"][0].tolist() == [1, 1, 1, 1] and (h["85"][1] == 1).all()
    assert h["122"][0].round(2).tolist() == [1, 0.57, 0.5, 0]
    opens = {k for k, v in zip(KINDS, h["122"][1], strict=True) if v >= cal.OPEN_THRESHOLD}
    assert opens == {"easter_monday", "ascension", "whit_monday", "unity_day"}
    assert h["1081"][1][KINDS.index("christmas")] == 1  # opened in 2013 and open on Christmas since
