"""Calendar files and per-store calendars: the known-ahead inputs of the calendar model.

A calendar file has Rossmann's ``test.csv`` layout (Store, Date, Open, Promo, StateHoliday,
SchoolHoliday; extra columns ignored; CSV, CSV.gz or Parquet). Future rows of a sales file (rows
after a store's last sales figure, Sales empty) are calendar rows too. :func:`store_calendars`
puts a store's history rows and its calendar rows on one day grid (``predictor.calendar`` cells),
which is what the fit derives its regressors from and what the version serves.

The one calendar rule (:func:`lay`, applied by ``pipelines.versions.lineage.derive`` and by the fit): a store's
calendar is what its parent version knew, with newer information written over it field by field (the
store's actual history rows, then calendar rows given to this version, newest last); a sales file's own
future rows only fill days nothing else knows. A ``-1`` (unknown) never overwrites a known field.

Beyond the calendar a version serves its default holidays (``pipelines.data.public_holidays``, given to
:func:`store_calendars` by the trainer) and each store's habit on them, learned here from its history
(``pipelines.data.sales_csv.holiday_open_rate``); a :class:`StoreCalendar` carries both, so the fit derives
its regressors exactly as the version serves them (``StoreCalendar.holidays``, ``StoreCalendar.habits``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data.sales_csv import PARQUET_SUFFIXES, _dates, _store_ids, holiday_open_rate, weekday_open_rate
from predictor import calendar as cal
from predictor.table import NO_HABIT

CALENDAR_COLUMNS = ("Store", "Date", "Open", "Promo", "StateHoliday", "SchoolHoliday")
Grid = tuple[int, np.ndarray]  # one store's calendar: (first day since epoch, (D, 4) int8 cells, -1 unknown)


@dataclass
class StoreCalendar:
    """One store's calendar cells on the day grid from ``start`` (history and known-ahead days)."""

    start: int
    cells: np.ndarray  # (D, 4) int8, predictor.calendar layout
    open_rate: np.ndarray  # (7,) weekday open rates (the defaults beyond the calendar)
    # (4,) open share by StateHoliday code
    holiday_open: np.ndarray = dataclasses.field(default_factory=lambda: NO_HABIT.copy())
    holiday_kind_open: np.ndarray = dataclasses.field(  # (K,) open share by holiday kind, -1: no evidence
        default_factory=lambda: np.full(len(cal.HOLIDAY_KINDS), -1.0))
    default_holidays: cal.HolidayTable = cal.NO_HOLIDAYS  # the version's default calendar (fleet-wide)

    @property
    def holidays(self) -> cal.Holidays:
        """This store's default holidays and habits, for ``predictor.calendar.resolve`` (its row 0)."""
        return cal.Holidays(self.default_holidays, self.holiday_open[None], self.holiday_kind_open[None])

    @property
    def habits(self) -> dict[str, Any]:
        """The table-row fields of the store's habits and the default calendar they are on
        (``predictor.table.ParamTable.from_rows``)."""
        return {"open_rate": self.open_rate, "holiday_open": self.holiday_open,
                "holiday_kind_open": self.holiday_kind_open, "default_holidays": self.default_holidays}


def read_calendar(path: str | Path) -> pd.DataFrame:
    """Read a calendar file into a frame (Store str, Date, Open/Promo/SchoolHoliday float with NaN, StateHoliday)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such calendar file")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={"StateHoliday": str}, low_memory=False)
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise ValueError(f"{path}: not a readable calendar file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("Store", "Date") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}")
    if not any(c in df.columns for c in CALENDAR_COLUMNS[2:]):
        raise ValueError(f"{path}: no calendar column (need one of {', '.join(CALENDAR_COLUMNS[2:])})")
    out = pd.DataFrame({"Store": _store_ids(df["Store"], path), "Date": _dates(df["Date"], path)})
    for c in CALENDAR_COLUMNS[2:]:
        if c in df.columns:
            out[c] = df[c].to_numpy()
    cells(out, path)  # validate now: a bad value is named with its file
    dup = out.duplicated(["Store", "Date"])
    if dup.any():
        row = out[dup].iloc[0]
        raise ValueError(f"{path}: duplicate (Store, Date) row, e.g. Store {row['Store']!r} on {row['Date']:%Y-%m-%d}")
    return out


def cells(df: pd.DataFrame, where: str | Path = "calendar") -> np.ndarray:
    """The (n, 4) int8 calendar cells of a frame's rows (-1 where a column is absent or empty)."""
    n = len(df)
    out = np.full((n, len(cal.FIELDS)), cal.UNKNOWN, dtype=np.int8)
    for field, column in ((cal.OPEN, "Open"), (cal.PROMO, "Promo"), (cal.SCHOOL, "SchoolHoliday")):
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
        raw = df[column].to_numpy()
        bad = (np.isnan(values) & pd.notna(raw)) | (~np.isnan(values) & ~np.isin(values, (0.0, 1.0)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: column {column!r} must hold 0 or 1, row {i + 2} has {raw[i]!r}")
        out[:, field] = np.where(np.isnan(values), cal.UNKNOWN, values).astype(np.int8)
    if "StateHoliday" in df.columns:
        raw = df["StateHoliday"]
        known = raw.notna().to_numpy()
        codes = np.full(n, cal.UNKNOWN, dtype=np.int8)
        try:
            codes[known] = cal.holiday_codes(raw[known].to_numpy())
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        out[:, cal.HOLIDAY] = codes
    return out


def split_future(sales: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, future): rows after a store's last sales figure with no Sales are calendar rows."""
    has_sales = sales["Sales"].notna().to_numpy()
    if has_sales.all():
        return sales, sales.iloc[:0]
    day = sales["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    codes, _ = pd.factorize(sales["Store"])
    last = np.full(codes.max() + 1 if len(codes) else 0, np.iinfo(np.int64).min)
    np.maximum.at(last, codes[has_sales], day[has_sales])
    future = ~has_sales & (day > last[codes])
    return sales[~future], sales[future]


def store_calendars(history: pd.DataFrame, future: pd.DataFrame | None = None, given: pd.DataFrame | None = None,
                    known: dict[str, Grid] | None = None, holidays: cal.HolidayTable | None = None
                    ) -> dict[str, StoreCalendar]:
    """Each store's calendar by the rule of :func:`lay`: ``known`` (a parent version's cells), its ``history``
    rows and then the ``given`` calendar rows written over it, the ``future`` rows (a sales file's) filling
    only days still unknown; with the store's weekday pattern and its habits on ``holidays`` (the version's
    default calendar) learned from its history."""
    frames = [f for f in (history, future, given) if f is not None and len(f)]
    if not frames:
        return {}
    hist, fut, over = grids(history), grids(future), grids(given)
    known = known or {}
    open_rate = weekday_open_rate(history)
    habits = holiday_open_rate(history, holidays)
    table = holidays if holidays is not None else cal.NO_HOLIDAYS
    out: dict[str, StoreCalendar] = {}
    for sid in dict.fromkeys(str(s) for f in frames for s in pd.unique(f["Store"])):
        laid = lay(known.get(sid), over=(hist.get(sid), over.get(sid)), fill=(fut.get(sid),),
                   keep_from=hist[sid][0] if sid in hist else None)
        if laid is not None:
            by_code, by_kind = habits.get(sid, (NO_HABIT, np.full(len(cal.HOLIDAY_KINDS), -1.0)))
            out[sid] = StoreCalendar(laid[0], laid[1], open_rate.get(sid, np.ones(7)), by_code, by_kind, table)
    return out


def grids(calendar: pd.DataFrame | None) -> dict[str, Grid]:
    """Per store of a calendar (or sales) frame: its rows on a day grid (-1 on days and fields not given)."""
    if calendar is None or not len(calendar):
        return {}
    frame = calendar[[c for c in CALENDAR_COLUMNS if c in calendar.columns]]
    return {sid: (int(days.min()), cal.store_calendar(days, cells_, int(days.min()), int(days.max())))
            for sid, (days, cells_) in calendar_cells(frame).items()}


def lay(base: Grid | None, over: Sequence[Grid | None] = (), fill: Sequence[Grid | None] = (),
        keep_from: int | None = None) -> Grid | None:
    """The calendar rule: ``base`` with each of ``over`` written over it in turn (its known fields win), then
    each of ``fill`` where a field is still unknown; days before ``keep_from`` dropped, unknown days trimmed
    at both ends. None when nothing is known."""
    parts = [g for g in (base, *over, *fill) if g is not None and len(g[1])]
    if not parts:
        return None
    start = min(s for s, _ in parts)
    end = max(s + len(c) for s, c in parts)
    if keep_from is not None:
        start = max(start, int(keep_from))
    if end <= start:
        return None
    grid = np.full((end - start, len(cal.FIELDS)), cal.UNKNOWN, dtype=np.int8)

    def window(g: Grid) -> tuple[np.ndarray, np.ndarray]:
        s, c = g
        a, b = max(s, start), min(s + len(c), end)
        return grid[a - start: max(a, b) - start], np.asarray(c[a - s: max(a, b) - s], dtype=np.int8)

    for g, only_unknown in [(g, False) for g in (base, *over)] + [(g, True) for g in fill]:
        if g is None or not len(g[1]):
            continue
        dst, src = window(g)
        take = (src >= 0) & (dst < 0) if only_unknown else src >= 0
        dst[take] = src[take]
    used = np.flatnonzero((grid >= 0).any(axis=1))
    if not len(used):
        return None
    return start + int(used[0]), grid[used[0]: used[-1] + 1].copy()


def split(grid: Grid | None, end: int) -> tuple[Grid | None, Grid | None]:
    """(days up to ``end``, days after it) of a store's calendar."""
    if grid is None:
        return None, None
    start, c = grid
    cut = max(0, min(len(c), end - start + 1))
    return (start, c[:cut]), (start + cut, c[cut:])


def changed(new: Grid, old: Grid | None) -> Grid | None:
    """The fields ``new`` knows and ``old`` says otherwise (a three-way merge's side); None when none."""
    was = np.full_like(new[1], cal.UNKNOWN)
    if old is not None:
        a, b = max(old[0], new[0]), min(old[0] + len(old[1]), new[0] + len(new[1]))
        if b > a:
            was[a - new[0]: b - new[0]] = old[1][a - old[0]: b - old[0]]
    diff = np.where((new[1] >= 0) & (new[1] != was), new[1], cal.UNKNOWN).astype(np.int8)
    return (new[0], diff) if (diff >= 0).any() else None


def calendar_cells(calendar: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per store of a calendar frame: (days, cells) of its rows."""
    c = cells(calendar)
    day = calendar["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    return {str(sid): (day[idx], c[idx]) for sid, idx in calendar.groupby("Store", sort=False).indices.items()}
