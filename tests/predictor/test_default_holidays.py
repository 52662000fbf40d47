"""The default calendar beyond the known one: public holidays decades ahead and each store's habit on them.

A version carries Germany's national holidays (``hol_days``/``hol_codes``/``hol_kinds``) and every store's
share of open days per StateHoliday code and per holiday (``holiday_open``, ``holiday_kind_open``). A day
beyond the known calendar gets the holiday's code, and is open only if the store's habit says so; it still
counts as ``default``. Older tables load without them (no default holidays, as before).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.data.public_holidays import default_calendar
from predictor import calendar as cal
from predictor.table import NO_HABIT, ParamTable, _row
from tests.support import random_table

KINDS = cal.HOLIDAY_KINDS


def day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


CAL_START, CAL_END = day("2015-07-01"), day("2015-09-17")  # the known-ahead calendar ends 17 September
CHRISTMAS, ST_STEPHEN, UNITY, NEW_YEAR = day("2015-12-25"), day("2015-12-26"), day("2015-10-02") + 1, day("2016-01-01")
ASCENSION_2016 = day("2016-05-05")
CLOSED, OPEN, MIXED, UNKNOWN = range(4)  # the stores' habits, rows of the table below


def kinds(**shares: float) -> np.ndarray:
    out = np.full(len(KINDS), -1.0)
    for name, share in shares.items():
        out[KINDS.index(name)] = share
    return out


def habit_rows() -> list[dict]:
    """Four stores: always closed on holidays, always open (a station store), a store open on Ascension and Unity
    Day but closed on New Year's Day (its share on code ``a`` is 0.57), one nothing is known of."""
    rows = [_row(random_table(4, seed=3), i) for i in range(4)]
    habits = [
        (np.array([1.0, 0.0, 0.0, 0.0]), kinds(new_year=0, unity_day=0, christmas=0, st_stephen=0)),
        (np.array([1.0, 1.0, 1.0, 1.0]), kinds(new_year=1, unity_day=1, christmas=1, st_stephen=1)),
        (np.array([1.0, 0.57, 0.5, 0.0]), kinds(new_year=0, ascension=1, unity_day=1, christmas=0)),
        None,
    ]
    for i, (row, habit) in enumerate(zip(rows, habits, strict=True)):
        row["store_id"] = str(i + 1)
        row["open_rate"] = np.array([1, 1, 1, 1, 1, 1, 0.0])  # closed on Sundays
        row["cal_start"] = CAL_START
        row["calendar"] = np.tile(np.array([1, 0, 0, 0], np.int8), (CAL_END - CAL_START + 1, 1))
        if habit is not None:
            row["holiday_open"], row["holiday_kind_open"] = habit
        else:
            row.pop("holiday_open", None), row.pop("holiday_kind_open", None)
    return rows


@pytest.fixture(scope="module")
def table() -> ParamTable:
    rows = habit_rows()
    return ParamTable.from_rows(rows, random_table(1).iv_days, 0.95, {"data_end": "2015-07-31"},
                                holidays=default_calendar(day("2013-01-01"), day("2015-07-31")))


def resolved(table: ParamTable, store: int, days: list[int]) -> cal.Days:
    d = np.asarray(days, dtype=np.int64)
    rows = np.full(len(d), store, np.int64)
    return cal.resolve(table.calendar, table.cal_start, table.open_rate, rows, d, holidays=table.holidays)[1]


def test_christmas_unity_day_and_new_year_beyond_the_calendar_are_holidays_closed_as_the_store_closes(
        table: ParamTable) -> None:
    days = [CHRISTMAS, ST_STEPHEN, UNITY, NEW_YEAR]
    assert CHRISTMAS > CAL_END
    for store in (CLOSED, OPEN, MIXED, UNKNOWN):
        r = resolved(table, store, days)
        assert r.holiday.tolist() == [3, 3, 1, 1], store
        assert not r.known.any() and not r.what_if.any()  # still the default calendar, not the known one
    assert not resolved(table, CLOSED, days).open.any()
    assert resolved(table, OPEN, days).open.all()
    # open on holidays, but not on a Sunday: Christmas Day 2016 is one
    assert resolved(table, OPEN, [day("2016-12-25"), day("2016-12-26")]).open.tolist() == [False, True]
    # MIXED: the holiday's own habit wins over its code's share (0.57 on code a, closed on New Year's Day)
    assert resolved(table, MIXED, [NEW_YEAR, ASCENSION_2016, CHRISTMAS]).open.tolist() == [False, True, False]
    # nothing known of the store: closed on public holidays
    assert not resolved(table, UNKNOWN, days).open.any()
    assert table.holiday_open[UNKNOWN].tolist() == NO_HABIT.tolist()


def test_ordinary_days_and_the_known_calendar_are_as_before(table: ParamTable) -> None:
    ordinary = [day("2015-12-22"), day("2015-12-23")]  # Tuesday, Wednesday
    for store in (CLOSED, OPEN):
        r = resolved(table, store, ordinary)
        assert r.holiday.tolist() == [0, 0] and r.open.all() and not r.known.any()
    # a known calendar day keeps its cells: a holiday the calendar does not name stays no holiday
    inside = [day("2015-08-03")]
    assert resolved(table, CLOSED, inside).holiday.tolist() == [0] and resolved(table, CLOSED, inside).known.all()
    # without a default calendar (an older version): no holiday, open as the weekday pattern says
    bare = ParamTable.from_rows(habit_rows(), table.iv_days, 0.95)
    assert bare.holidays is None and len(bare.hol_days) == 0
    r = resolved(bare, CLOSED, [CHRISTMAS, NEW_YEAR])
    assert r.holiday.tolist() == [0, 0] and r.open.all()


def test_the_default_holidays_reach_the_regressors_of_their_neighbours(table: ParamTable) -> None:
    days = np.array([day("2015-12-23"), day("2015-12-24"), day("2015-12-28")], np.int64)
    rows = np.full(3, CLOSED, np.int64)
    cells, _ = cal.resolve(table.calendar, table.cal_start, table.open_rate, rows, days, holidays=table.holidays)
    x = dict(zip(cal.REGRESSORS, cal.features(cells, days).T, strict=True))
    assert x["holiday_before_2"].tolist() == [1, 1, 0] and x["holiday_before_1"].tolist() == [0, 1, 0]
    assert x["closed_before"].tolist() == [0, 0, 0]  # Christmas Eve: closed tomorrow for the holiday (its own)
    assert x["holiday_after_2"].tolist() == [0, 0, 1]  # the Monday after St Stephen's Day (Saturday)
    open_cells, _ = cal.resolve(table.calendar, table.cal_start, table.open_rate, np.full(3, OPEN, np.int64), days,
                                holidays=table.holidays)
    assert cal.features(open_cells, days)[:, cal.REGRESSORS.index("closed_before")].tolist() == [0, 0, 0]


def test_a_what_if_still_wins_over_the_habit(table: ParamTable) -> None:
    days = np.array([CHRISTMAS], np.int64)
    _, r = cal.resolve(table.calendar, table.cal_start, table.open_rate, np.array([CLOSED]), days,
                       open_=np.array([1], np.int8), holidays=table.holidays)
    assert r.open.tolist() == [True] and r.what_if.tolist() == [True] and r.holiday.tolist() == [3]


def test_the_table_carries_the_default_calendar_through_every_derivation(table: ParamTable, tmp_path: Path) -> None:
    def same(a: ParamTable, b: ParamTable) -> None:
        for name in ("hol_days", "hol_codes", "hol_kinds"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        for name in ("holiday_open", "holiday_kind_open"):
            ia, ib = a.index(b.store_id), np.arange(len(b))
            assert np.array_equal(getattr(a, name)[ia], getattr(b, name)[ib]), name

    assert len(table.hol_days) > 400 and table.hol_days[-1] >= day("2015-07-31") + 3 * 365 + 40 * 365
    back = ParamTable.load(table.save(tmp_path / "params.npz"))
    same(table, back)
    same(table, table.take(np.array([1, 3])))
    same(table, table.shard(0, 2))
    pushed = table.with_calendar({"1": (CHRISTMAS - 3, np.tile(np.array([1, 0, 0, 0], np.int8), (5, 1)))})
    same(table, pushed)
    assert resolved(pushed, CLOSED, [CHRISTMAS]).known.all()  # the pushed calendar wins where it speaks
    # a refit of one store merged into its parent: the refitted store's habits, the parent's days outside its span
    rows = habit_rows()[:1]
    rows[0]["holiday_open"] = np.array([1.0, 1.0, 1.0, 1.0])
    newer = ParamTable.from_rows(rows, table.iv_days, 0.95, holidays=default_calendar(day("2014-01-01"),
                                                                                       day("2015-08-31")))
    merged = table.merged_with(newer)
    assert np.array_equal(merged.hol_days, table.hol_days) and np.array_equal(merged.hol_codes, table.hol_codes)
    assert merged.holiday_open[merged.index(np.array(["1"]))[0]].tolist() == [1.0, 1.0, 1.0, 1.0]
    same(table.take(np.array([1, 2, 3])), merged.take(np.array([1, 2, 3])))
    # a parent without a default calendar gains the refit's
    old = ParamTable.from_rows(habit_rows(), table.iv_days, 0.95)
    assert np.array_equal(old.merged_with(newer).hol_days, newer.hol_days)
    assert np.array_equal(newer.merged_with(old).hol_days, newer.hol_days)  # and never loses it


def test_older_tables_load_without_a_default_calendar(table: ParamTable, tmp_path: Path) -> None:
    path = table.save(tmp_path / "params.npz")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files if k not in ("hol_days", "hol_codes", "hol_kinds", "holiday_open",
                                                      "holiday_kind_open")}
    old = tmp_path / "old.npz"
    with open(old, "wb") as fh:
        np.savez(fh, **data)
    loaded = ParamTable.load(old)
    assert loaded.holidays is None and loaded.holiday_open.shape == (4, 4)
    assert loaded.holiday_kind_open.shape == (4, len(KINDS)) and (loaded.holiday_kind_open == -1).all()
    r = resolved(loaded, CLOSED, [CHRISTMAS])
    assert r.holiday.tolist() == [0] and r.open.tolist() == [True]  # as before: no default holiday


def test_the_holiday_table_is_sorted_one_entry_a_day_and_checked() -> None:
    t = cal.holiday_table([20, 10, 10, 30], [1, 3, 2, 0], [0, 7, 1, -1])
    assert t.days.tolist() == [10, 20] and t.codes.tolist() == [2, 1] and t.kinds.tolist() == [1, 0]
    with pytest.raises(ValueError, match="codes must be"):
        cal.holiday_table([1], [4], [0])
    with pytest.raises(ValueError, match="1 days, 2 codes"):
        cal.holiday_table([1], [1, 2], [0])
    rule = cal.Holidays(t, np.zeros((1, 4)), np.zeros((1, 0)))
    code, kind = rule.on(np.array([[9, 10], [20, 10**7]]))  # any shape; a span too wide for a dense table too
    assert code.tolist() == [[0, 2], [1, 0]] and kind.tolist() == [[-1, 1], [0, -1]]
