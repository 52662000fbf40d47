"""The retail calendar: known-ahead days per store and the Prophet regressors derived from them.

One definition of every calendar feature, used by the trainer (``pipelines``) to fit and by the
predictor to serve, numpy only. A calendar cell holds four int8 fields, ``-1`` where the calendar
says nothing:

- ``open`` 0/1, ``promo`` 0/1, ``holiday`` (state holiday: 0 none, 1 ``a`` public, 2 ``b`` Easter,
  3 ``c`` Christmas), ``school`` 0/1.

A day outside the calendar gets the defaults: no promotion, no school holiday, the public holiday of
the version's default calendar (:class:`Holidays`: Germany's national holidays decades ahead, none in
a version without one), open as the store's weekday pattern says (open on at least half of that weekday
in its last 52 weeks) and, on a holiday, as its habit on that holiday says (open on at least half of
them in its history; that holiday's own habit where the store has one, else its code's). Such a day
still counts as ``default``, not ``calendar``. The regressors of a day depend on its own cell and its
neighbours' (two days either side), so they come from the calendar alone, never from sales. A closure
next to a state holiday counts for the holiday's regressors only, not for ``closed_before``/``closed_after``:
were both on for the same days, history could not tell their effects apart, and a holiday on a Sunday (the
store closed anyway) would then add one effect without the other that cancelled it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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
    "closed_before",     # the store is closed tomorrow, and tomorrow is neither a Sunday nor a state holiday
    "closed_after",      # the store was closed yesterday, and yesterday was neither a Sunday nor a state holiday
    "promo_mon", "promo_tue", "promo_wed", "promo_thu", "promo_fri", "promo_sat",  # promotion on that weekday
    "school_holiday_next",  # school holidays start tomorrow... or run on (the day before counts)
)
OFFSETS = np.arange(-2, 3, dtype=np.int64)  # neighbours a feature may look at; column 2 is the day itself
CENTER = 2
# The public holidays a default calendar names (``pipelines.data.public_holidays``); a store's habit is
# learned per holiday, so a store open on Ascension but closed on New Year's Day is told apart.
HOLIDAY_KINDS = ("new_year", "good_friday", "easter_monday", "labour_day", "ascension", "whit_monday",
                 "unity_day", "christmas", "st_stephen")
NO_KIND = -1  # a default holiday no kind names (a one-off national holiday): the code's habit applies


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


class HolidayTable(NamedTuple):
    """A default calendar of public holidays: sorted ``days`` (H,) int64, their StateHoliday ``codes`` (H,)
    int8 (1..3) and ``kinds`` (H,) int8 (index into ``HOLIDAY_KINDS``, ``NO_KIND``)."""

    days: np.ndarray
    codes: np.ndarray
    kinds: np.ndarray


@dataclass(frozen=True)
class Holidays:
    """What a version knows beyond its calendar: its default holidays and its stores' habits on them.

    ``by_code`` (n, 4): the share of a store's history days with each StateHoliday code on which it was open
    (column 0 unused); ``by_kind`` (n, K): the same per holiday of ``HOLIDAY_KINDS`` (-1: no evidence; the
    code's share applies; K may be 0). A default holiday day is open only where the share is >= 0.5."""

    table: HolidayTable
    by_code: np.ndarray
    by_kind: np.ndarray

    def on(self, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(code, kind) of the default holiday on each of ``days`` (any shape): 0 and ``NO_KIND`` elsewhere."""
        days = np.asarray(days, dtype=np.int64)
        code = np.zeros(days.shape, dtype=np.int8)
        kind = np.full(days.shape, NO_KIND, dtype=np.int8)
        hol = self.table.days
        if not len(hol) or not days.size:
            return code, kind
        lo, hi = int(days.min()), int(days.max())
        a, b = np.searchsorted(hol, [lo, hi + 1])
        if a == b:
            return code, kind
        if hi - lo < 1 << 20:  # a dense table over the span: one gather per cell
            dense_code = np.zeros(hi - lo + 1, dtype=np.int8)
            dense_kind = np.full(hi - lo + 1, NO_KIND, dtype=np.int8)
            dense_code[hol[a:b] - lo] = self.table.codes[a:b]
            dense_kind[hol[a:b] - lo] = self.table.kinds[a:b]
            return dense_code[days - lo], dense_kind[days - lo]
        pos = np.minimum(np.searchsorted(hol, days), len(hol) - 1)
        hit = hol[pos] == days
        code[hit], kind[hit] = self.table.codes[pos[hit]], self.table.kinds[pos[hit]]
        return code, kind

    def open_share(self, rows: np.ndarray, code: np.ndarray, kind: np.ndarray) -> np.ndarray:
        """Each cell's share of open days on its holiday (the kind's where known, else the code's)."""
        rows = np.broadcast_to(rows, np.shape(code))
        c = np.clip(code, 0, self.by_code.shape[1] - 1) if self.by_code.size else code
        share = self.by_code[rows, c] if self.by_code.size else np.zeros(np.shape(code))
        if self.by_kind.shape[-1]:
            has = (kind >= 0) & (kind < self.by_kind.shape[1])
            k = self.by_kind[rows, np.where(has, kind, 0)]
            share = np.where(has & (k >= 0), k, share)
        return share


def holiday_table(days: np.ndarray, codes: np.ndarray, kinds: np.ndarray | None = None) -> HolidayTable:
    """A ``HolidayTable`` from unsorted (day, code[, kind]) triples: sorted, one entry a day, code-0 days dropped."""
    days = np.asarray(days, dtype=np.int64).ravel()
    codes = np.asarray(codes, dtype=np.int8).ravel()
    kinds = np.full(len(days), NO_KIND, np.int8) if kinds is None else np.asarray(kinds, dtype=np.int8).ravel()
    if not len(days) == len(codes) == len(kinds):
        raise ValueError(f"holiday table: {len(days)} days, {len(codes)} codes, {len(kinds)} kinds")
    if ((codes < 0) | (codes >= len(HOLIDAY_CODES))).any() or ((kinds < NO_KIND) | (kinds >= len(HOLIDAY_KINDS))).any():
        raise ValueError("holiday table: codes must be 0..3 and kinds -1..8")
    keep = codes > 0
    days, codes, kinds = days[keep], codes[keep], kinds[keep]
    order = np.argsort(days, kind="stable")
    days, codes, kinds = days[order], codes[order], kinds[order]
    last = np.r_[days[1:] != days[:-1], True] if len(days) else np.zeros(0, bool)  # the last entry of a day wins
    return HolidayTable(days[last], codes[last], kinds[last])


NO_HOLIDAYS = HolidayTable(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int8))


def lookup(calendar: np.ndarray, cal_start: int, rows: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The calendar cells (..., 4) of stores ``rows`` on ``days`` (any matching shapes); -1 off the grid."""
    col = np.asarray(days, dtype=np.int64) - int(cal_start)
    width = calendar.shape[1] if calendar.ndim == 3 else 0
    inside = (col >= 0) & (col < width)
    out = np.full((*np.shape(col), len(FIELDS)), UNKNOWN, dtype=np.int8)
    if width and inside.any():
        out[inside] = calendar[np.broadcast_to(rows, np.shape(col))[inside], col[inside]]
    return out


def _fill(cells: np.ndarray, open_rate: np.ndarray, rows: np.ndarray, days: np.ndarray,
          holidays: Holidays | None = None) -> np.ndarray:
    """Cells with every -1 replaced by the default: the holiday of the default calendar (else 0), open from the
    weekday pattern and, on a holiday, the store's habit on it; promotion and school holiday 0."""
    out = cells.copy()
    o, h = out[..., OPEN], out[..., HOLIDAY]
    unknown_open = o < 0
    if holidays is not None and ((h < 0) | unknown_open).any():
        code, kind = holidays.on(days)
        out[..., HOLIDAY] = h = np.where(h < 0, code, h)
        if unknown_open.any():
            on_holiday = unknown_open & (h > 0)
            if on_holiday.any():
                closed = np.zeros(h.shape, dtype=bool)
                r = np.broadcast_to(rows, h.shape)[on_holiday]
                closed[on_holiday] = holidays.open_share(r, h[on_holiday], kind[on_holiday]) < OPEN_THRESHOLD
                unknown_open = unknown_open & ~closed
                out[..., OPEN] = o = np.where(closed, np.int8(0), o)
    if unknown_open.any():
        default_open = (open_rate[np.broadcast_to(rows, np.shape(days)), weekday(days)] >= OPEN_THRESHOLD)
        out[..., OPEN] = np.where(unknown_open, default_open.astype(np.int8), o)
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
            promo: np.ndarray | None = None, open_: np.ndarray | None = None, group: np.ndarray | None = None,
            *, holidays: Holidays | None = None) -> tuple[np.ndarray, Days]:
    """Cells of each row and its neighbours, (n, 5, 4) with defaults filled and what-ifs applied.

    A what-if on a day reaches the rows of the same ``group`` (default: the same store) on that day and
    its neighbours; the windows form groups by window, so two windows of one store never share one.
    ``holidays``: the version's default holidays and habits (``ParamTable.holidays``; None: no default holiday)."""
    rows = np.asarray(rows, dtype=np.int64)
    days = np.asarray(days, dtype=np.int64)
    near = days[:, None] + OFFSETS[None, :]
    raw = lookup(calendar, cal_start, rows[:, None], near)
    known = (raw[:, CENTER] >= 0).any(axis=1)
    cells = _fill(raw, open_rate, rows[:, None], near, holidays)
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
        ~o[:, c + 1] & (wd[:, c + 1] != SUNDAY) & (h[:, c + 1] == 0),
        ~o[:, c - 1] & (wd[:, c - 1] != SUNDAY) & (h[:, c - 1] == 0),
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
