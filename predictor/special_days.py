"""The special days of the retail year and of a store's life, as Prophet regressors (numpy only).

``predictor.calendar`` derives the regressors of a day from its calendar cells (promotions, state
holidays, closures). This module adds the ones a date alone decides, known decades ahead, and the ones
a store's own history decides:

- the Christmas season: the two weeks before Christmas Eve, Christmas Eve, the days between the years,
  New Year's Eve and the first days of January. German shops close early on 24 and 31 December, so
  these days sell far less than the days before a holiday usually do; modelled apart, they no longer
  pull the "day before a holiday" effect down for every other holiday;
- runs of closed days: the store is closed on both of the next (previous) two days, such as the
  Saturday before Easter Monday or the first day after Christmas;
- a reopening after a long gap in sales (a refurbishment, a gap in the data): a level change from the
  reopening day on (``reopened``) and the reopening week's own rush (``reopening_week``). The day is the
  store's ``level_day`` (``predictor.table``), found by :func:`level_day` at training time.

``matrix`` gives every regressor (``ALL``: the calendar's, then these) for rows whose neighbourhood
cells are known; the trainer fits on it and the predictor serves from it, so both see the same values.
"""

from __future__ import annotations

import numpy as np

from predictor import calendar as cal

# (name, month, first day, last day): a window of dates, every year
DATE_WINDOWS = (
    ("christmas_2w", 12, 11, 17),   # the second week before Christmas Eve
    ("christmas_1w", 12, 18, 23),   # the last days before Christmas Eve
    ("christmas_eve", 12, 24, 24),  # shops close at noon
    ("between_years", 12, 27, 30),
    ("new_years_eve", 12, 31, 31),  # shops close early
    ("new_year", 1, 2, 5),          # the first days of January
)
REGRESSORS = (*(w[0] for w in DATE_WINDOWS), "closed_next_2", "closed_prev_2", "reopened", "reopening_week")
ALL = cal.REGRESSORS + REGRESSORS
GAP_DAYS = 14  # this many days in a row without sales (or more) is a gap; the store reopened after it
REOPENING_DAYS = 7


def month_day(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Month (1-12) and day of the month of int days since 1970-01-01."""
    d = np.asarray(days, dtype=np.int64).astype("datetime64[D]")
    m = d.astype("datetime64[M]")
    return m.astype(np.int64) % 12 + 1, (d - m.astype("datetime64[D]")).astype(np.int64) + 1


def date_windows(days: np.ndarray) -> np.ndarray:
    """(n, len(DATE_WINDOWS)) 0/1: the day falls in each window of the year."""
    month, dom = month_day(days)
    cols = [(month == m) & (dom >= a) & (dom <= b) for _, m, a, b in DATE_WINDOWS]
    return np.stack(cols, axis=1) if len(month) else np.zeros((0, len(DATE_WINDOWS)), dtype=bool)


def level_day(days: np.ndarray, gap_days: int = GAP_DAYS) -> int:
    """The first day with sales after a store's last run of ``gap_days`` or more days without sales (a
    fortnight's refurbishment, months missing from the data), else ``table.NO_GAP``."""
    from predictor.table import NO_GAP

    d = np.asarray(days, dtype=np.int64)
    jumps = np.flatnonzero(np.diff(d) - 1 >= gap_days)
    return int(d[jumps[-1] + 1]) if len(jumps) else NO_GAP


def matrix(cells: np.ndarray, days: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Every regressor (``ALL`` order) of rows with neighbourhood ``cells`` (n, 5, 4), on ``days``, of stores
    that reopened on ``level`` (per row; ``NO_GAP`` for none)."""
    days = np.asarray(days, dtype=np.int64)
    level = np.broadcast_to(np.asarray(level, dtype=np.int64), days.shape)
    o = cells[..., cal.OPEN] > 0
    c = cal.CENTER
    since = days - level
    own = np.column_stack([
        date_windows(days),
        ~o[:, c + 1] & ~o[:, c + 2], ~o[:, c - 1] & ~o[:, c - 2],
        since >= 0, (since >= 0) & (since < REOPENING_DAYS),
    ]) if len(days) else np.zeros((0, len(REGRESSORS)))
    return np.concatenate([cal.features(cells, days), own.astype(np.float64)], axis=1)


def widening(x: np.ndarray, reg_iv: np.ndarray) -> np.ndarray:
    """Each row's interval factor: the widest ``reg_iv`` of the regressors active on it (1 when none)."""
    if x.shape[1] == 0:
        return np.ones(len(x))
    return np.where(x != 0, reg_iv, 1.0).max(axis=1)
