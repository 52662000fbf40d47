"""Deterministic synthetic daily store sales in the Kaggle Rossmann ``train.csv`` layout.

The generator imitates the statistics of the real data (see ``shared/data/README.md``): log-normal
store levels, per-store trends, weekly and yearly seasonality (December peak), closed Sundays and
public holidays, school holidays, alternating promotion weeks, a six-month gap in history for about
16% of stores and months-long refurbishment closures for a few. Store ``k`` draws all its randomness
from ``np.random.default_rng([seed, k])``, so its series does not depend on how many stores are made.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.data.sales_csv import COLUMNS
from serving.contract import HOLIDAY_CODES as CODES

GAP_START = dt.date(2014, 7, 1)
GAP_END = dt.date(2014, 12, 31)
GAP_SHARE = 180 / 1115  # stores without rows for GAP_START..GAP_END, as in Rossmann
SUNDAY_SHARE = 0.03  # stores open on Sundays
REFURB_SHARE = 0.04  # stores with a 14..120 day refurbishment closure
REFURB_DAYS = (14, 120)
HOLIDAY_CODES = np.array(CODES, dtype=object)

# Synthetic German states: (name, share of stores, regional public holidays).
_STATES: tuple[tuple[str, float, frozenset[str]], ...] = (
    ("NW", 0.25, frozenset({"corpus_christi", "all_saints"})),
    ("BY", 0.15, frozenset({"epiphany", "corpus_christi", "assumption", "all_saints"})),
    ("BE", 0.08, frozenset()),
    ("HE", 0.10, frozenset({"corpus_christi"})),
    ("SN", 0.07, frozenset({"reformation", "repentance"})),
    ("BW", 0.10, frozenset({"epiphany", "corpus_christi", "all_saints"})),
    ("NI", 0.08, frozenset()),
    ("SH", 0.05, frozenset()),
    ("TH", 0.04, frozenset({"reformation"})),
    ("ST", 0.04, frozenset({"epiphany", "reformation"})),
    ("RP", 0.04, frozenset({"corpus_christi", "all_saints"})),
)
_STATE_SHARES = np.array([share for _, share, _ in _STATES])
_STATE_CUM = np.cumsum(_STATE_SHARES) / _STATE_SHARES.sum()

# Mean open-day sales by weekday relative to the week (Rossmann: Monday high, Saturday low).
_WEEKLY = np.log(np.array([1.17, 1.01, 0.96, 0.96, 1.01, 0.85, 1.10]))
_LEVEL_MEDIAN = 5_900.0  # before promo/seasonal lifts; open-day store means end up near 6,500
_TREND_EPOCH = np.datetime64("2014-04-15")
_PROMO_EPOCH = dt.date(2000, 1, 3)  # a Monday; the promo week sequence starts here


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (Meeus/Jones/Butcher)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    w = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * w) // 451
    month, day = divmod(h + w - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def _state_holidays(first: dt.date, n_days: int, years: range) -> np.ndarray:
    """StateHoliday codes (0 none, 1 'a', 2 'b' Easter, 3 'c' Christmas) per state and day."""
    codes = np.zeros((len(_STATES), n_days), dtype=np.int8)

    def mark(rows: slice | int, day: dt.date, code: int) -> None:
        idx = (day - first).days
        if 0 <= idx < n_days:
            codes[rows, idx] = code

    for year in years:
        easter = _easter(year)
        nov22 = dt.date(year, 11, 22)
        regional = {
            "epiphany": dt.date(year, 1, 6),
            "corpus_christi": easter + dt.timedelta(days=60),
            "assumption": dt.date(year, 8, 15),
            "reformation": dt.date(year, 10, 31),
            "all_saints": dt.date(year, 11, 1),
            "repentance": nov22 - dt.timedelta(days=(nov22.weekday() - 2) % 7),
        }
        national = (
            (dt.date(year, 1, 1), 1),
            (easter - dt.timedelta(days=2), 2),
            (easter + dt.timedelta(days=1), 2),
            (dt.date(year, 5, 1), 1),
            (easter + dt.timedelta(days=39), 1),
            (easter + dt.timedelta(days=50), 1),
            (dt.date(year, 10, 3), 1),
            (dt.date(year, 12, 25), 3),
            (dt.date(year, 12, 26), 3),
        )
        for day, code in national:
            mark(slice(None), day, code)
        for s, (_, _, names) in enumerate(_STATES):
            for name in names:
                mark(s, regional[name], 1)
    return codes


def _school_holidays(seed: int, first: dt.date, n_days: int, years: range, weekday: np.ndarray) -> np.ndarray:
    """School holiday flags per state and day: Christmas, Easter, Whitsun, summer and autumn blocks."""
    flags = np.zeros((len(_STATES), n_days), dtype=bool)
    for s, (name, _, _) in enumerate(_STATES):
        for year in range(years.start - 1, years.stop):
            rng = np.random.default_rng([seed, 0, 1, s, year])
            easter = _easter(year)
            jitter = rng.integers(0, 8, size=6)
            blocks = [
                (dt.date(year, 12, 21) + dt.timedelta(days=int(jitter[0] % 4)), 14 + int(jitter[1] % 4)),
                (easter - dt.timedelta(days=int(7 + jitter[2])), 12 + int(jitter[3] % 4)),
                (dt.date(year, 6, 20) + dt.timedelta(days=int(rng.integers(0, 40))), 42 + int(jitter[4] % 3)),
                (dt.date(year, 10, 1) + dt.timedelta(days=int(rng.integers(0, 24))), 7 + int(jitter[5])),
            ]
            if name in ("BY", "BW"):
                blocks.append((easter + dt.timedelta(days=51), 11))
            for start, length in blocks:
                lo = max((start - first).days, 0)
                hi = min((start - first).days + length, n_days)
                if lo < hi:
                    flags[s, lo:hi] = True
    # Like Rossmann, the flag is set on school days (Monday..Friday) only.
    return flags & (weekday < 5)


def _promo_days(seed: int, first: dt.date, n_days: int, weekday: np.ndarray) -> np.ndarray:
    """Global promo flag: Mon-Fri of alternating weeks, now and then two promo weeks in a row."""
    epoch = min(_PROMO_EPOCH, first - dt.timedelta(days=first.weekday()))
    offset = (first - epoch).days
    n_weeks = (offset + n_days) // 7 + 1
    draws = np.random.default_rng([seed, 0, 2]).random(n_weeks)
    weeks = np.zeros(n_weeks, dtype=bool)
    for w in range(1, n_weeks):
        repeat = weeks[w - 1] and not (w > 1 and weeks[w - 2]) and draws[w] < 0.2
        weeks[w] = repeat or not weeks[w - 1]
    week_of_day = (offset + np.arange(n_days)) // 7
    return weeks[week_of_day] & (weekday < 5)


def _bump(doy: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump over day of year (wrapping around New Year)."""
    dist = (doy - centre + 182.5) % 365.25 - 182.5
    return np.exp(-0.5 * (dist / width) ** 2)


def synthesize(stores: int, seed: int = 0, start: str = "2013-01-01", end: str = "2015-07-31") -> pd.DataFrame:
    """Synthetic daily sales for stores 1..``stores`` from ``start`` to ``end`` in the Rossmann layout.

    Columns are ``COLUMNS``: Store, DayOfWeek (1=Monday), Sales, Customers, Open, Promo and
    SchoolHoliday as int64, Date as datetime64[ns], StateHoliday as str ('0', 'a', 'b', 'c').
    Rows are sorted by (Store, Date). The same arguments always give the same frame.
    """
    if stores < 0:
        raise ValueError(f"stores must be >= 0, got {stores}")
    dates = pd.date_range(start, end, freq="D")
    if len(dates) == 0:
        raise ValueError(f"empty date range {start}..{end}")
    n_days = len(dates)
    first = dates[0].date()
    years = range(dates[0].year, dates[-1].year + 1)
    weekday = dates.dayofweek.to_numpy()
    doy = dates.dayofyear.to_numpy().astype(float)
    t_years = (dates.to_numpy() - _TREND_EPOCH) / np.timedelta64(1, "D") / 365.25

    holidays = _state_holidays(first, n_days, years)
    school = _school_holidays(seed, first, n_days, years, weekday)
    promo = _promo_days(seed, first, n_days, weekday)
    closed_holiday = holidays > 0
    # Shopping around closures: the day before a holiday and the first day after are busier.
    around = np.zeros_like(closed_holiday, dtype=float)
    around[:, :-1] += 0.08 * (closed_holiday[:, 1:] & ~closed_holiday[:, :-1])
    around[:, 1:] += 0.05 * (closed_holiday[:, :-1] & ~closed_holiday[:, 1:])

    # Yearly shape (log scale): pre-Christmas run-up, January dip, spring high, autumn low.
    christmas = np.exp(-0.5 * ((doy - 357.0) / 11.0) ** 2) * (doy <= 358) + 0.10 * ((doy >= 361) | (doy <= 2))
    yearly_base = 0.035 * np.cos(2 * np.pi * (doy - 135) / 365.25) - 0.04 * _bump(doy, 30.0, 25.0) + 0.38 * christmas
    summer = _bump(doy, 215.0, 22.0)
    fourier = np.stack([np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)])
    gap_days = (dates >= pd.Timestamp(GAP_START)) & (dates <= pd.Timestamp(GAP_END))
    gap_idx = np.flatnonzero(gap_days)

    n = stores
    level = np.empty(n)
    slope = np.empty(n)
    turn = np.empty(n)
    dslope = np.empty(n)
    weekly = np.empty((n, 7))
    yearly_coef = np.empty((n, 4))  # christmas scale, summer, sin, cos
    promo_lift = np.empty(n)
    school_lift = np.empty(n)
    spend = np.empty(n)
    state = np.empty(n, dtype=np.intp)
    sunday_open = np.zeros(n, dtype=bool)
    present = np.ones((n, n_days), dtype=bool)
    refurb = np.zeros((n, n_days), dtype=bool)
    noise = np.empty((n, n_days))
    customer_noise = np.empty((n, n_days))

    for i in range(n):
        rng = np.random.default_rng([seed, i + 1])
        u = rng.random(6)  # state, Sunday opening, gap, refurbishment, changepoint, refurb start
        state[i] = min(int(np.searchsorted(_STATE_CUM, u[0], side="right")), len(_STATES) - 1)
        level[i] = np.clip(0.25 * rng.standard_t(5), -1.0, 1.2)
        slope[i] = rng.normal(0.0, 0.035)
        turn[i] = rng.uniform(-1.0, 1.0) if u[4] < 0.35 else np.inf
        dslope[i] = rng.normal(0.0, 0.05)
        weekly[i] = _WEEKLY + rng.normal(0.0, 0.03, 7)
        weekly[i, 6] += rng.uniform(0.0, 0.2)
        yearly_coef[i] = rng.normal([1.0, -0.02, 0.0, 0.0], [0.2, 0.04, 0.015, 0.015])
        promo_lift[i] = np.log1p(rng.uniform(0.18, 0.32))
        school_lift[i] = np.log1p(rng.uniform(0.0, 0.06))
        spend[i] = np.clip(rng.normal(9.5, 1.2), 6.0, 14.0)
        refurb_days = int(rng.integers(REFURB_DAYS[0], REFURB_DAYS[1] + 1))
        noise[i] = rng.normal(0.0, 0.10, n_days)
        customer_noise[i] = rng.normal(0.0, 0.05, n_days)

        sunday_open[i] = u[1] < SUNDAY_SHARE
        if u[2] < GAP_SHARE:
            present[i, gap_idx] = False
        if u[3] < REFURB_SHARE:
            rows = np.flatnonzero(present[i])
            length = min(refurb_days, len(rows))
            if length:
                begin = int(u[5] * (len(rows) - length + 1))
                refurb[i, rows[begin : begin + length]] = True

    trend = slope[:, None] * t_years + dslope[:, None] * np.maximum(t_years - turn[:, None], 0.0)
    yearly = (
        yearly_base
        + (yearly_coef[:, :1] - 1.0) * 0.38 * christmas
        + yearly_coef[:, 1:2] * summer
        + yearly_coef[:, 2:] @ fourier
    )
    log_sales = (
        np.log(_LEVEL_MEDIAN)
        + level[:, None]
        + trend
        + weekly[:, weekday]
        + yearly
        + promo_lift[:, None] * promo
        + school_lift[:, None] * school[state]
        + around[state]
        + noise
    )
    holiday = holidays[state]
    is_open = ~refurb & (holiday == 0) & ((weekday != 6) | sunday_open[:, None])
    sales = np.where(is_open, np.rint(np.exp(log_sales)), 0.0)
    customers = np.where(is_open, np.maximum(np.rint(sales / (spend[:, None] * np.exp(customer_noise))), 1), 0)

    keep = present.ravel()
    frame = pd.DataFrame(
        {
            "Store": np.repeat(np.arange(1, n + 1, dtype=np.int64), n_days)[keep],
            "DayOfWeek": np.tile(weekday.astype(np.int64) + 1, n)[keep],
            "Date": np.tile(dates.to_numpy().astype("datetime64[ns]"), n)[keep],
            "Sales": sales.astype(np.int64).ravel()[keep],
            "Customers": customers.astype(np.int64).ravel()[keep],
            "Open": is_open.astype(np.int64).ravel()[keep],
            "Promo": np.tile(promo.astype(np.int64), n)[keep],
            "StateHoliday": HOLIDAY_CODES[holiday.ravel()[keep]],
            "SchoolHoliday": school[state].astype(np.int64).ravel()[keep],
        }
    )
    return frame[list(COLUMNS)]


CALENDAR_COLUMNS = ("Store", "DayOfWeek", "Date", "Open", "Promo", "StateHoliday", "SchoolHoliday")


def synthesize_with_calendar(stores: int, seed: int = 0, start: str = "2013-01-01", end: str = "2015-07-31",
                             calendar_days: int = 48) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sales to ``end`` and the known-ahead calendar of the ``calendar_days`` after it (``test.csv`` layout).

    Both come from one run of the generator over the whole span, so the calendar (promotions, state and
    school holidays, closures) continues the sales' own: what a retailer's plans would say.
    """
    last = (pd.Timestamp(end) + pd.Timedelta(days=max(calendar_days, 0))).strftime("%Y-%m-%d")
    frame = synthesize(stores, seed=seed, start=start, end=last)
    future = frame["Date"] > pd.Timestamp(end)
    return frame[~future].reset_index(drop=True), frame.loc[future, list(CALENDAR_COLUMNS)].reset_index(drop=True)
