"""The backtest's windows and data cuts: what is known at a cutoff, what is scored after it, which days are special.

A window starts on day S and lasts ``days`` days; its cutoff is S - 1. At the cutoff the trainer and the
references see the sales rows before S and the window's known-ahead calendar (the window's rows without
``Sales`` or ``Customers``: Store, Date, Open, Promo, StateHoliday, SchoolHoliday); the window's sales are
only the answers the forecasts are scored against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.calendar import CALENDAR_COLUMNS
from serving.contract import store_sort_key

# start days of the default windows, 42 days each: spring 2014, May-June 2014 (Ascension, Whitsun, Corpus
# Christi), Christmas and New Year, Easter 2015, the developers' holdout (the last 42 days of train.csv)
DEFAULT_WINDOWS = ("2014-03-17", "2014-05-19", "2014-12-01", "2015-03-16", "2015-06-20")
DEFAULT_DAYS = 42
SHARED_DATA = Path("shared") / "data" / "rossmann"  # beside the checkout, where the team keeps the real data
SPECIAL_DAYS = ("christmas_eve", "new_years_eve", "before_holiday", "before_closure", "after_christmas",
                "after_new_year")


def find_data(name: str = "train.csv.gz") -> Path | None:
    """The shared Rossmann file ``name`` beside the source checkout (``../shared/data/rossmann/``), else None."""
    path = Path(__file__).resolve().parents[2].parent / SHARED_DATA / name
    return path if path.is_file() else None


@dataclass(frozen=True)
class Window:
    """``days`` days from ``start``; the models know the data up to ``cutoff``, the day before."""

    start: np.datetime64
    days: int = DEFAULT_DAYS

    @classmethod
    def parse(cls, text: str, days: int = DEFAULT_DAYS) -> Window:
        if days < 1:
            raise ValueError(f"a window lasts at least one day; got {days}")
        try:
            start = np.datetime64(text, "D")
        except ValueError:
            raise ValueError(f"window {text!r}: give its first day as YYYY-MM-DD") from None
        return cls(start, days)

    @property
    def name(self) -> str:
        return str(self.start)

    @property
    def end(self) -> np.datetime64:
        """The last day of the window."""
        return self.start + np.timedelta64(self.days - 1, "D")

    @property
    def cutoff(self) -> np.datetime64:
        return self.start - np.timedelta64(1, "D")


@dataclass
class Cut:
    """One window's data: what the models may see (``history``, ``calendar``) and what they are scored on."""

    window: Window
    history: pd.DataFrame  # sales rows before the window's start
    calendar: pd.DataFrame  # the window's rows, calendar columns only (no Sales, no Customers)
    actual: pd.DataFrame  # the window's Store, Date, Open, Sales


def first_stores(sales: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The rows of the first ``n`` stores in natural order (all for None)."""
    if not n:
        return sales
    ids = sorted(map(str, pd.unique(sales["Store"])), key=store_sort_key)[:n]
    return sales[sales["Store"].isin(ids)].reset_index(drop=True)


def cut(sales: pd.DataFrame, window: Window) -> Cut:
    """Split ``sales`` (``pipelines.data.sales_csv.read_sales``) at the window; the window must lie in the data."""
    day = sales["Date"].to_numpy().astype("datetime64[D]")
    first, last = day.min(), day.max()
    if window.start <= first:
        raise ValueError(f"window {window.name}: no data before it (the data begins on {first})")
    if window.end > last:
        raise ValueError(f"window {window.name}: its last day {window.end} is after the data's last day {last}")
    before = day < window.start
    inside = ~before & (day <= window.end)
    rows = sales[inside]
    columns = [c for c in CALENDAR_COLUMNS if c in rows.columns]
    return Cut(window, sales[before].reset_index(drop=True), rows[columns].reset_index(drop=True),
               rows[["Store", "Date", "Open", "Sales"]].reset_index(drop=True))


def special_days(sales: pd.DataFrame, window: Window) -> pd.DataFrame:
    """Store, Date and a bool column per kind of ``SPECIAL_DAYS`` for each of the window's rows.

    Christmas Eve and New Year's Eve by date; ``before_holiday``: the store's next day is a state holiday
    (StateHoliday a, b or c) and this day is not; ``before_closure``: the store is open and closed the next day,
    which is not a Sunday; ``after_christmas`` / ``after_new_year``: the store's first two open days after
    26 December / 1 January (within ten days). The day after the window is read from ``sales`` when it has it.
    """
    day = sales["Date"].to_numpy().astype("datetime64[D]")
    near = sales[(day >= window.start) & (day <= window.end + np.timedelta64(1, "D"))]
    near = near.sort_values(["Store", "Date"]).reset_index(drop=True)
    d = near["Date"].to_numpy().astype("datetime64[D]")
    store = near["Store"].to_numpy()
    holiday = (near["StateHoliday"].astype(str).to_numpy() != "0") if "StateHoliday" in near else \
        np.zeros(len(near), bool)
    is_open = near["Open"].to_numpy() == 1
    has_next = np.r_[(store[1:] == store[:-1]) & (d[1:] - d[:-1] == np.timedelta64(1, "D")), False]
    nxt = np.r_[np.arange(1, len(near)), len(near) - 1] if len(near) else np.zeros(0, int)
    month = d.astype("datetime64[M]").astype(int) % 12 + 1
    dom = (d - d.astype("datetime64[M]")).astype(int) + 1
    weekday_next = ((d + np.timedelta64(1, "D")).astype(np.int64) + 3) % 7  # 0 Monday .. 6 Sunday
    out = pd.DataFrame({"Store": store, "Date": near["Date"].to_numpy()})
    out["christmas_eve"] = (month == 12) & (dom == 24)
    out["new_years_eve"] = (month == 12) & (dom == 31)
    out["before_holiday"] = has_next & holiday[nxt] & ~holiday
    out["before_closure"] = has_next & is_open & ~is_open[nxt] & (weekday_next != 6)
    out["after_christmas"] = _first_open_after(out, is_open, 12, 26)
    out["after_new_year"] = _first_open_after(out, is_open, 1, 1)
    keep = d <= window.end
    return out[keep].reset_index(drop=True)


def _first_open_after(rows: pd.DataFrame, is_open: np.ndarray, month: int, dom: int, first: int = 2) -> np.ndarray:
    """Rows among each store's first ``first`` open days in the ten days after ``month``/``dom`` (any year)."""
    d = rows["Date"].to_numpy().astype("datetime64[D]")
    years = np.unique(d.astype("datetime64[Y]"))
    hit = np.zeros(len(rows), bool)
    for year in years:
        for y in (year, year - np.timedelta64(1, "Y")):  # 1 January's days fall in the year after 26 December's
            anchor = (y.astype("datetime64[M]") + np.timedelta64(month - 1, "M")).astype("datetime64[D]") + \
                np.timedelta64(dom - 1, "D")
            span = is_open & (d > anchor) & (d <= anchor + np.timedelta64(10, "D"))
            if span.any():
                rank = pd.Series(span.astype(int)).groupby(rows["Store"].to_numpy()).cumsum().to_numpy()
                hit |= span & (rank <= first)
    return hit
