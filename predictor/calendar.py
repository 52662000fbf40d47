"""The retail calendar: known-ahead days per store and the Prophet regressors derived from them.

One definition of every calendar feature, used by the trainer (``pipelines``) to fit and by the
predictor to serve, numpy only. A calendar cell holds four int8 fields, ``-1`` where the calendar
says nothing:

- ``open`` 0/1, ``promo`` 0/1, ``holiday`` (state holiday: 0 none, 1 ``a`` public, 2 ``b`` Easter,
  3 ``c`` Christmas), ``school`` 0/1.

A day outside the calendar gets the defaults: no promotion, no holiday, no school holiday, open as
the store's weekday pattern says (open on at least half of that weekday in its last 52 weeks).
The regressors of a day depend on its own cell and its neighbours' (two days either side), so they
come from the calendar alone, never from sales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.contract import HOLIDAY_CODES

FIELDS = ("open", "promo", "holiday", "school")
OPEN, PROMO, HOLIDAY, SCHOOL = range(4)
UNKNOWN = -1
OPEN_THRESHOLD = 0.5
SUNDAY = 6
REGRESSORS = (
    "promo",             # a promotion runs that day
    "promo_start",       # first day of a promotion run (Rossmann: the Monday of a promotion week)
    "school_holiday",
    "holiday_a", "holiday_b", "holiday_c",   # open on a state holiday
    "holiday_before_1", "holiday_before_2",  # a state holiday comes in 1 / 2 days
    "holiday_after_1", "holiday_after_2",    # a state holiday was 1 / 2 days ago
    "closed_before",     # the store is closed tomorrow, and tomorrow is not a Sunday
    "closed_after",      # the store was closed yesterday, and yesterday was not a Sunday
    "promo_mon", "promo_tue", "promo_wed", "promo_thu", "promo_fri", "promo_sat",  # promotion on that weekday
    "school_holiday_next",  # school holidays start tomorrow... or run on (the day before counts)
)
OFFSETS = np.arange(-2, 3, dtype=np.int64)  # neighbours a feature may look at; column 2 is the day itself
CENTER = 2


def weekday(days: np.ndarray) -> np.ndarray:
    """Monday=0 .. Sunday=6 of int days since 1970-01-01 (a Thursday)."""
    return (np.asarray(days, dtype=np.int64) + 3) % 7


def holiday_codes(values: np.ndarray) -> np.ndarray:
    """StateHoliday values ('0', 'a', 'b', 'c', or 0) as int8 codes 0..3; raises naming an unknown one."""
    text = np.char.strip(np.asarray(values).astype(str))
    text = np.where(np.isin(text, ("0", "0.0", "", "nan", "None")), "0", text)
    codes = np.full(len(text), -1, dtype=np.int8)
    for code, name in enumerate(HOLIDAY_CODES):
        codes[text == name] = code
    if (codes < 0).any():
        bad = sorted(set(text[codes < 0].tolist()))[:5]
        raise ValueError(f"StateHoliday: unknown code(s) {', '.join(map(repr, bad))} (use 0, a, b or c)")
    return codes


@dataclass(frozen=True)
class Days:
    """The resolved calendar of some (store, day) rows: each field filled, and where it came from."""

    open: np.ndarray     # (n,) bool
    promo: np.ndarray    # (n,) bool
    holiday: np.ndarray  # (n,) int8 code
    school: np.ndarray   # (n,) bool
    known: np.ndarray    # (n,) bool: the day is in the version's calendar
    what_if: np.ndarray  # (n,) bool: the request overrode promo or open on that day


def lookup(calendar: np.ndarray, cal_start: int, rows: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The calendar cells (..., 4) of stores ``rows`` on ``days`` (any matching shapes); -1 off the grid."""
    col = np.asarray(days, dtype=np.int64) - int(cal_start)
    width = calendar.shape[1] if calendar.ndim == 3 else 0
    inside = (col >= 0) & (col < width)
    out = np.full((*np.shape(col), len(FIELDS)), UNKNOWN, dtype=np.int8)
    if width and inside.any():
        out[inside] = calendar[np.broadcast_to(rows, np.shape(col))[inside], col[inside]]
    return out


def _fill(cells: np.ndarray, open_rate: np.ndarray, rows: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Cells with every -1 replaced by the default (open from the weekday pattern, the rest 0)."""
    out = cells.copy()
    default_open = (open_rate[np.broadcast_to(rows, np.shape(days)), weekday(days)] >= OPEN_THRESHOLD)
    o = out[..., OPEN]
    out[..., OPEN] = np.where(o < 0, default_open.astype(np.int8), o)
    for f in (PROMO, HOLIDAY, SCHOOL):
        out[..., f] = np.maximum(out[..., f], 0)
    return out


def _override(cells: np.ndarray, rows: np.ndarray, days: np.ndarray, field: int, values: np.ndarray | None,
              hit: np.ndarray) -> None:
    """Apply per-row overrides (-1: none) of one field to the rows and to neighbours that are rows too
    (``rows``: the group of each row, which a what-if never leaves)."""
    if values is None:
        return
    values = np.asarray(values, dtype=np.int8)
    given = values >= 0
    if not given.any():
        return
    key = rows[given].astype(np.int64) * (1 << 32) + days[given]
    order = np.argsort(key, kind="stable")
    key, vals = key[order], values[given][order]
    for j, k in enumerate(OFFSETS):
        probe = rows.astype(np.int64) * (1 << 32) + days + k
        pos = np.minimum(np.searchsorted(key, probe), len(key) - 1)
        found = key[pos] == probe
        cells[found, j, field] = vals[pos[found]]
        if k == 0:
            hit |= found


def resolve(calendar: np.ndarray, cal_start: int, open_rate: np.ndarray, rows: np.ndarray, days: np.ndarray,
            promo: np.ndarray | None = None, open_: np.ndarray | None = None, group: np.ndarray | None = None
            ) -> tuple[np.ndarray, Days]:
    """Cells of each row and its neighbours, (n, 5, 4) with defaults filled and what-ifs applied.

    A what-if on a day reaches the rows of the same ``group`` (default: the same store) on that day and
    its neighbours; the windows form groups by window, so two windows of one store never share one."""
    rows = np.asarray(rows, dtype=np.int64)
    days = np.asarray(days, dtype=np.int64)
    near = days[:, None] + OFFSETS[None, :]
    raw = lookup(calendar, cal_start, rows[:, None], near)
    known = (raw[:, CENTER] >= 0).any(axis=1)
    cells = _fill(raw, open_rate, rows[:, None], near)
    hit = np.zeros(len(rows), dtype=bool)
    key = rows if group is None else np.asarray(group, dtype=np.int64)
    _override(cells, key, days, PROMO, promo, hit)
    _override(cells, key, days, OPEN, open_, hit)
    c = cells[:, CENTER]
    return cells, Days(open=c[:, OPEN] > 0, promo=c[:, PROMO] > 0, holiday=c[:, HOLIDAY], school=c[:, SCHOOL] > 0,
                       known=known, what_if=hit)


def features(cells: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The regressor matrix (n, len(REGRESSORS)) of rows whose neighbourhood cells are ``cells`` (n, 5, 4)."""
    days = np.asarray(days, dtype=np.int64)
    o = cells[..., OPEN] > 0
    p = cells[..., PROMO] > 0
    h = cells[..., HOLIDAY]
    wd = weekday(days[:, None] + OFFSETS[None, :])
    c = CENTER
    cols = (
        p[:, c],
        p[:, c] & ~p[:, c - 1],
        cells[:, c, SCHOOL] > 0,
        h[:, c] == 1, h[:, c] == 2, h[:, c] == 3,
        h[:, c + 1] > 0, h[:, c + 2] > 0,
        h[:, c - 1] > 0, h[:, c - 2] > 0,
        ~o[:, c + 1] & (wd[:, c + 1] != SUNDAY),
        ~o[:, c - 1] & (wd[:, c - 1] != SUNDAY),
        *(p[:, c] & (wd[:, c] == k) for k in range(6)),
        cells[:, c + 1, SCHOOL] > 0,
    )
    return np.stack(cols, axis=1).astype(np.float64) if len(days) else np.zeros((0, len(REGRESSORS)))


def store_calendar(days: np.ndarray, cells: np.ndarray, start: int, end: int) -> np.ndarray:
    """One store's calendar on the day grid ``start..end`` (inclusive) from its (day, cells) rows."""
    grid = np.full((end - start + 1, len(FIELDS)), UNKNOWN, dtype=np.int8)
    col = np.asarray(days, dtype=np.int64) - start
    ok = (col >= 0) & (col < len(grid))
    grid[col[ok]] = np.asarray(cells, dtype=np.int8)[ok]
    return grid
