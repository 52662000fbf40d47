"""Read and write daily sales in the Kaggle Rossmann ``train.csv`` layout.

Store ids are strings everywhere in storecast ("4", not 4). :func:`read_sales` normalises a file
(CSV, gzip CSV or Parquet) into a typed frame sorted by (Store, Date); :func:`open_days` turns that
frame into the ``store_id``/``ds``/``y`` input that Prophet trains on.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from predictor import calendar as cal
from predictor.calendar import weekday
from serving.contract import store_id_problem

COLUMNS = (
    "Store",
    "DayOfWeek",
    "Date",
    "Sales",
    "Customers",
    "Open",
    "Promo",
    "StateHoliday",
    "SchoolHoliday",
)
REQUIRED = ("Store", "Date", "Sales", "Open")
PARQUET_SUFFIXES = (".parquet", ".pq")
DATE_FORMAT = "%Y-%m-%d"


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _store_ids(col: pd.Series, path: Path) -> pd.Series:
    """Store ids as stripped strings; integer-like numbers (4, 4.0, "4.0") become "4"."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(f"{path}: column 'Store' has missing values")
    labels = []
    for value in uniques:
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            text = str(int(value))
        else:
            text = str(value).strip()
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if number.is_integer() and "." in text and text.split(".", 1)[1].strip("0") == "":
                    text = str(int(number))
        if not text:
            raise ValueError(f"{path}: column 'Store' has empty values")
        problem = store_id_problem(text)
        if problem:
            raise ValueError(f"{path}: column 'Store': store id {problem}")
        labels.append(text)
    return pd.Series(np.asarray(labels, dtype=object)[codes], index=col.index, name="Store")


def _dates(col: pd.Series, path: Path) -> pd.Series:
    """Dates as datetime64[ns] at midnight (timezones dropped)."""
    try:
        out = col if pd.api.types.is_datetime64_any_dtype(col) else pd.to_datetime(col, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column 'Date' has unparsable dates ({exc})") from None
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_localize(None)
    if out.isna().any():
        raise ValueError(f"{path}: column 'Date' has missing or unparsable dates")
    return out.astype("datetime64[ns]").dt.normalize()


def _numeric(col: pd.Series, name: str, path: Path) -> pd.Series:
    try:
        return pd.to_numeric(col)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column {name!r} is not numeric ({exc})") from None


def read_sales(path: str | Path) -> pd.DataFrame:
    """Read Rossmann-format sales from CSV, CSV.gz or Parquet into a typed frame sorted by (Store, Date).

    Store is str, Date datetime64[ns] (midnight), Sales float64, Open int8 (missing -> 1). Optional
    columns are kept when present (StateHoliday as str). Raises ValueError on a missing required column,
    unparsable dates or duplicate (Store, Date) rows.
    """
    path = Path(path)
    if _is_parquet(path):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, dtype={"StateHoliday": str}, low_memory=False)
    missing = [c for c in REQUIRED if c not in df.columns and c != "Open"]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}")

    df["Store"] = _store_ids(df["Store"], path)
    df["Date"] = _dates(df["Date"], path)
    df["Sales"] = _numeric(df["Sales"], "Sales", path).astype("float64")
    infinite = np.isinf(df["Sales"].to_numpy())
    if infinite.any():  # the contract's rule: a version is fitted on finite sales only
        rows = np.flatnonzero(infinite)[:5].tolist()
        raise ValueError(f"{path}: column 'Sales' holds {int(infinite.sum())} infinite value(s) (rows {rows})")
    if "Open" in df.columns:
        is_open = _numeric(df["Open"], "Open", path).fillna(1)
        if not is_open.isin([0, 1]).all():
            raise ValueError(f"{path}: column 'Open' must hold 0 or 1")
        df["Open"] = is_open.astype("int8")
    else:
        df["Open"] = np.ones(len(df), dtype="int8")
    if "StateHoliday" in df.columns:
        holiday = df["StateHoliday"]
        df["StateHoliday"] = holiday.where(holiday.notna(), "0").astype(str).str.strip()

    # Sort by (Store as string, Date) without a slow multi-column object sort.
    store_codes, store_uniques = pd.factorize(df["Store"])
    rank = np.empty(len(store_uniques), dtype=np.int64)
    rank[np.argsort(np.asarray(store_uniques, dtype=str), kind="stable")] = np.arange(len(store_uniques))
    store_rank = rank[store_codes]
    day = df["Date"].to_numpy().view("int64")
    order = np.lexsort((day, store_rank))
    store_rank, day = store_rank[order], day[order]
    dup = np.flatnonzero((store_rank[1:] == store_rank[:-1]) & (day[1:] == day[:-1]))
    df = df.iloc[order].reset_index(drop=True)
    if len(dup):
        row = df.iloc[dup[0]]
        raise ValueError(
            f"{path}: {len(dup)} duplicate (Store, Date) row(s), e.g. Store {row['Store']!r} on {row['Date']:%Y-%m-%d}"
        )
    ordered = [c for c in COLUMNS if c in df.columns]
    return df[ordered + [c for c in df.columns if c not in COLUMNS]]


def write_sales(df: pd.DataFrame, path: str | Path) -> Path:
    """Write sales as ``.csv``, ``.csv.gz`` or Parquet (by suffix); same frame -> same bytes."""
    path = Path(path)
    name = path.name.lower()
    out = df[[c for c in COLUMNS if c in df.columns]]
    if not (name.endswith((".csv", ".csv.gz")) or _is_parquet(path)):
        raise ValueError(f"{path}: unsupported suffix (use .csv, .csv.gz, .parquet or .pq)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if _is_parquet(path):
            out.to_parquet(tmp, index=False)
        elif name.endswith(".csv.gz"):
            with (
                open(tmp, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
                io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
            ):
                out.to_csv(text, index=False, date_format=DATE_FORMAT, lineterminator="\n")
        else:
            out.to_csv(tmp, index=False, date_format=DATE_FORMAT, lineterminator="\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def open_days(df: pd.DataFrame) -> pd.DataFrame:
    """Open days only, as Prophet training input: columns ``store_id`` (str), ``ds``, ``y`` (float)."""
    rows = df[df["Open"] == 1] if "Open" in df.columns else df
    return pd.DataFrame(
        {
            "store_id": rows["Store"].astype(str).to_numpy(),
            "ds": pd.to_datetime(rows["Date"]).to_numpy(),
            "y": rows["Sales"].astype("float64").to_numpy(),
        }
    )


def weekday_open_rate(df: pd.DataFrame, weeks: int = 52) -> dict[str, np.ndarray]:
    """Per store, the share of each weekday (Monday first) it was open in its last ``weeks`` weeks of rows.

    A weekday without rows in that window (data holding open days only) counts as open: nothing says
    otherwise.
    """
    store_codes, stores = pd.factorize(df["Store"].astype(str))
    day = df["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    is_open = (df["Open"].to_numpy() == 1) if "Open" in df.columns else np.ones(len(df), dtype=bool)
    last = np.full(len(stores), np.iinfo(np.int64).min)
    np.maximum.at(last, store_codes, day)
    recent = day > last[store_codes] - 7 * weeks
    cell = store_codes[recent] * 7 + weekday(day[recent])
    rows = np.bincount(cell, minlength=7 * len(stores))
    opened = np.bincount(cell, weights=is_open[recent], minlength=7 * len(stores))
    rate = np.where(rows > 0, opened / np.maximum(rows, 1), 1.0).reshape(len(stores), 7)
    return {str(s): rate[i] for i, s in enumerate(stores)}


def holiday_open_rate(df: pd.DataFrame, holidays: cal.HolidayTable | None = None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per store, its habit on public holidays: (by code (4,), by kind (K,)), the share of its history days with
    each StateHoliday code (and of each holiday of ``predictor.calendar.HOLIDAY_KINDS``) on which it was open.

    A row's code is its ``StateHoliday`` where given, else the default calendar's (``holidays``); a day of the
    default calendar inside a store's history span without a row counts as closed (data that hold open days
    only). By code, NaN-free: no evidence -> the fleet's share, nothing known -> 0 (closed; column 0 is 1); by
    kind, no evidence -> -1 (the code's share applies, ``predictor.calendar.Holidays``).
    """
    k_kinds = len(cal.HOLIDAY_KINDS)
    store_codes, stores = pd.factorize(df["Store"].astype(str))
    n = len(stores)
    day = df["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    is_open = (df["Open"].to_numpy() == 1) if "Open" in df.columns else np.ones(len(df), dtype=bool)
    code = np.full(len(df), cal.UNKNOWN, dtype=np.int8)
    if "StateHoliday" in df.columns:
        raw = df["StateHoliday"]
        given = raw.notna().to_numpy() & ~np.isin(raw.astype(str).str.strip().to_numpy(), ("", "nan", "None"))
        code[given] = cal.holiday_codes(raw[given].to_numpy())
    kind = np.full(len(df), cal.NO_KIND, dtype=np.int8)
    if holidays is not None and len(holidays.days):
        rule = cal.Holidays(holidays, np.zeros((0, 4)), np.zeros((0, 0)))
        default_code, default_kind = rule.on(day)
        code = np.where(code < 0, default_code, code)
        kind = np.where(code > 0, default_kind, cal.NO_KIND)
        # days of the default calendar inside a store's span without a row: closed
        first = np.full(n, np.iinfo(np.int64).max)
        last = np.full(n, np.iinfo(np.int64).min)
        np.minimum.at(first, store_codes, day)
        np.maximum.at(last, store_codes, day)
        hd = holidays.days
        s_idx, h_idx = np.nonzero((hd[None, :] >= first[:, None]) & (hd[None, :] <= last[:, None]))
        have = np.sort(store_codes.astype(np.int64) * (1 << 32) + day)
        probe = s_idx.astype(np.int64) * (1 << 32) + hd[h_idx]
        missing = np.zeros(len(probe), bool)
        if len(probe):
            missing = have[np.minimum(np.searchsorted(have, probe), len(have) - 1)] != probe
        store_codes = np.r_[store_codes, s_idx[missing]]
        code = np.r_[code, holidays.codes[h_idx[missing]]]
        kind = np.r_[kind, holidays.kinds[h_idx[missing]]]
        is_open = np.r_[is_open, np.zeros(int(missing.sum()), bool)]
    code = np.maximum(code, 0)
    cell = store_codes * 4 + code
    days_by_code = np.bincount(cell, minlength=4 * n).reshape(n, 4)
    open_by_code = np.bincount(cell, weights=is_open, minlength=4 * n).reshape(n, 4)
    fleet_days, fleet_open = days_by_code.sum(axis=0), open_by_code.sum(axis=0)
    fleet = np.where(fleet_days > 0, fleet_open / np.maximum(fleet_days, 1), 0.0)
    by_code = np.where(days_by_code > 0, open_by_code / np.maximum(days_by_code, 1), fleet[None, :])
    by_code[:, 0] = 1.0
    has_kind = kind >= 0
    cell = store_codes[has_kind] * k_kinds + kind[has_kind]
    days_by_kind = np.bincount(cell, minlength=k_kinds * n).reshape(n, k_kinds)
    open_by_kind = np.bincount(cell, weights=is_open[has_kind], minlength=k_kinds * n).reshape(n, k_kinds)
    by_kind = np.where(days_by_kind > 0, open_by_kind / np.maximum(days_by_kind, 1), -1.0)
    return {str(s): (by_code[i], by_kind[i]) for i, s in enumerate(stores)}
