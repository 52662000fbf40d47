"""A derived version never loses the default calendar or the stores' holiday habits its parent carried."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.public_holidays import default_calendar
from pipelines.training.fitting import FitConfig
from pipelines.versions.lineage import Parent, derive
from pipelines.versions.registry import MODELS_FILE, VersionFiles
from predictor import calendar as cal
from predictor.table import ParamTable, _row
from tests.support import days_of, random_table

FIRST, LAST = (int(d) for d in days_of(["2013-01-01", "2015-07-31"]))
CHRISTMAS = int(days_of(["2015-12-25"])[0])


def table(stores: list[str], habit: float, holidays: cal.HolidayTable | None, seed: int = 0) -> ParamTable:
    rows = []
    for i, sid in enumerate(stores):
        row = _row(random_table(len(stores), seed=seed), i)
        row.update(store_id=sid, cal_start=LAST - 30, calendar=np.tile(np.array([1, 0, 0, 0], np.int8), (31, 1)),
                   holiday_open=np.array([1.0, habit, habit, habit]),
                   holiday_kind_open=np.full(len(cal.HOLIDAY_KINDS), habit))
        rows.append(row)
    return ParamTable.from_rows(rows, random_table(1).iv_days, 0.95, {"data_end": "2015-07-31"},
                                holidays=holidays)


def parent(tmp_path: Path, t: ParamTable) -> Parent:
    with zipfile.ZipFile(tmp_path / MODELS_FILE, "w") as zf:
        for sid in t.store_id.tolist():
            zf.writestr(f"{sid}.json.gz", b"")
    return Parent("1", t, tmp_path)


def christmas(t: ParamTable, store: str) -> cal.Days:
    rows = t.index(np.array([store]))
    return cal.resolve(t.calendar, t.cal_start, t.open_rate, rows, np.array([CHRISTMAS]), holidays=t.holidays)[1]


def test_a_calendar_push_and_a_refit_keep_the_default_calendar_and_the_habits(tmp_path: Path) -> None:
    hol = default_calendar(FIRST, LAST)
    base = parent(tmp_path, table(["1", "2", "3"], 0.0, hol))
    push = pd.DataFrame({"Store": ["2"], "Date": pd.to_datetime(["2015-08-10"]), "Promo": [1.0]})
    pushed = derive(base, change="calendar", calendar=push, calendar_source="test").table
    for name in ("hol_days", "hol_codes", "hol_kinds", "holiday_open", "holiday_kind_open"):
        assert np.array_equal(getattr(pushed, name), getattr(base.table, name)), name
    assert christmas(pushed, "2").holiday.tolist() == [3] and not christmas(pushed, "2").open.any()

    # store 3 refitted on newer data: now open on holidays; its job's default calendar starts later
    newer = table(["3"], 1.0, default_calendar(LAST - 200, LAST + 31), seed=1)
    refit = VersionFiles(newer, {"3": b""}, pd.DataFrame({"store_id": ["3"]}), {}, [], [], "2015-08-31",
                         FitConfig.preset("seed"))
    derived = derive(base, refit, change="refit").table
    assert np.array_equal(derived.hol_days, hol.days)  # the parent's early days kept, the span the same
    assert christmas(derived, "3").open.tolist() == [True] and christmas(derived, "1").open.tolist() == [False]
    assert derived.holiday_open[derived.index(np.array(["1", "2", "3"]))][:, 3].tolist() == [0, 0, 1]

    # a parent without a default calendar (an older version) gains the refit's on derivation
    (tmp_path / "old").mkdir()
    old = parent(tmp_path / "old", table(["1", "2", "3"], 0.0, None))
    assert old.table.holidays is None
    gained = derive(old, refit, change="refit").table
    assert np.array_equal(gained.hol_days, newer.hol_days) and christmas(gained, "1").holiday.tolist() == [3]
