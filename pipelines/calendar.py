"""Calendar files and per-store calendars: the known-ahead inputs of the calendar model.

A calendar file has Rossmann's ``test.csv`` layout (Store, Date, Open, Promo, StateHoliday,
SchoolHoliday; extra columns ignored; CSV, CSV.gz or Parquet). Future rows of a sales file (rows
after a store's last sales figure, Sales empty) are calendar rows too. :func:`store_calendars`
puts a store's history rows and its calendar rows on one day grid (``predictor.calendar`` cells),
which is what the fit derives its regressors from and what the version serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data import PARQUET_SUFFIXES, _dates, _store_ids, weekday_open_rate
from pipelines.fitting import StoreCalendar
from predictor import calendar as cal

CALENDAR_COLUMNS = ("Store", "Date", "Open", "Promo", "StateHoliday", "SchoolHoliday")


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


def store_calendars(history: pd.DataFrame, future: pd.DataFrame | None = None) -> dict[str, StoreCalendar]:
    """Each store's calendar: its history rows, then its future rows (later rows win on the same day)."""
    parts = [history] + ([future] if future is not None and len(future) else [])
    frame = pd.concat([p[[c for c in CALENDAR_COLUMNS if c in p.columns]] for p in parts], ignore_index=True)
    frame = frame.drop_duplicates(["Store", "Date"], keep="last")
    open_rate = weekday_open_rate(history)
    c = cells(frame)
    day = frame["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    out: dict[str, StoreCalendar] = {}
    for sid, idx in frame.groupby("Store", sort=False).indices.items():
        d = day[idx]
        start, end = int(d.min()), int(d.max())
        out[str(sid)] = StoreCalendar(start, cal.store_calendar(d, c[idx], start, end),
                                      open_rate.get(str(sid), np.ones(7)))
    return out


def calendar_cells(calendar: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per store of a calendar frame: (days, cells) of its rows."""
    c = cells(calendar)
    day = calendar["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    return {str(sid): (day[idx], c[idx]) for sid, idx in calendar.groupby("Store", sort=False).indices.items()}
