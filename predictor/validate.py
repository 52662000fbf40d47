"""A version is checked before it serves: format, shapes, finite values, store ids, at least one store.

``check(table, shard, ahead_days)`` raises :class:`VersionRefused` saying what is wrong; the loader then
keeps the version it serves (at start: stays not ready, saying why). The checks are what a request
would otherwise trip over: arrays of inconsistent lengths (500s), NaN parameters (``null`` forecasts),
no stores (every store "unknown"), regressors the predictor cannot derive, and the forecast of every
store on every day of its horizon: from the day after its data to ``ahead_days`` later (the furthest a
request may reach, ``--max-days-ahead``) or the end of its known-ahead calendar, whichever is later;
yhat and both bounds must be finite, and on the days the store opens yhat must stay within a plausible
band of its own history (``PLAUSIBLE_BAND`` times its best day), else the version is refused naming the
first store and day that is not (a forecast that blows up only on a late promotion day is found too).
The trainer's gate runs the same check on every refitted store (``horizon_problem``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from serving.contract import MAX_DAYS_AHEAD, Shard, iso, store_id_problem, window_rows

if TYPE_CHECKING:
    from predictor.table import ParamTable

PER_STORE_2D = {"delta": None, "cp_t": None, "beta": None, "iv_lower": None, "iv_upper": None, "open_rate": 7,
                "reg_beta": None, "reg_iv": None, "holiday_open": 4, "holiday_kind_open": None}
FINITE = ("start", "t_scale", "y_scale", "floor", "k", "m", "sigma_obs", "delta", "beta", "iv_lower", "iv_upper",
          "iv_trend_var", "iv_noise_var", "open_rate", "reg_beta", "reg_iv", "iv_scale", "holiday_open",
          "holiday_kind_open", "feat_period", "feat_harmonic")
CHUNK_ROWS = 1 << 16  # store-days per forecast call while the horizon is checked
OUTPUT_NAMES = ("yhat", "yhat_lower", "yhat_upper")
PLAUSIBLE_BAND = 3.0  # no open day's forecast above this many times the store's best day (table.best_day)


class VersionRefused(ValueError):
    """A version that must not be served; the message says why."""


def check(table: ParamTable, shard: Shard | None = None, ahead_days: int = MAX_DAYS_AHEAD) -> None:
    """Raise ``VersionRefused`` unless ``table`` (already cut to ``shard``) can answer requests up to
    ``ahead_days`` after each store's data (and on every day of its calendar)."""
    from predictor.special_days import ALL as REGRESSORS

    n = len(table.store_id)
    if n == 0:
        where = f" in shard {shard}" if shard else ""
        raise VersionRefused(f"it holds no store{where}")
    problems: list[str] = []
    for name in ("start", "t_scale", "y_scale", "floor", "k", "m", "sigma_obs", "last_day", "iv_trend_var",
                 "iv_noise_var", "iv_scale"):
        shape = np.shape(getattr(table, name))
        if shape != (n,):
            problems.append(f"{name} has shape {shape}, expected ({n},)")
    for name, width in PER_STORE_2D.items():
        shape = np.shape(getattr(table, name))
        if len(shape) != 2 or shape[0] != n or (width is not None and shape[1] != width):
            problems.append(f"{name} has shape {shape}, expected ({n}, {width or 'k'})")
    if np.shape(table.delta) != np.shape(table.cp_t):
        problems.append(f"delta {np.shape(table.delta)} and cp_t {np.shape(table.cp_t)} differ")
    k = len(table.feat_period)
    if not (np.shape(table.beta)[-1:] == (k,) and len(table.feat_harmonic) == k and len(table.feat_cos) == k):
        problems.append(f"beta {np.shape(table.beta)} does not match {k} Fourier features")
    g = len(table.iv_days)
    if g == 0 or int(table.iv_days[0]) != 0 or (np.diff(table.iv_days) <= 0).any():
        problems.append("iv_days must start at 0 and increase")
    for name in ("iv_lower", "iv_upper"):
        if np.shape(getattr(table, name))[-1:] != (g,):
            problems.append(f"{name} {np.shape(getattr(table, name))} does not match {g} interval grid days")
    if np.shape(table.reg_beta)[-1:] != (len(table.reg_names),):
        problems.append(f"reg_beta {np.shape(table.reg_beta)} does not match {len(table.reg_names)} regressors")
    if np.shape(table.reg_iv) != np.shape(table.reg_beta):
        problems.append(f"reg_iv {np.shape(table.reg_iv)} does not match reg_beta {np.shape(table.reg_beta)}")
    unknown = [r for r in table.reg_names.tolist() if r not in REGRESSORS]
    if unknown:
        problems.append(f"regressors this predictor cannot derive from a calendar: {', '.join(unknown[:5])}")
    if np.ndim(table.calendar) != 3 or np.shape(table.calendar)[0] != n or np.shape(table.calendar)[2] != 4:
        problems.append(f"calendar has shape {np.shape(table.calendar)}, expected ({n}, days, 4)")
    if problems:
        raise VersionRefused("; ".join(problems[:4]))
    for name in FINITE:
        values = np.asarray(getattr(table, name), dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise VersionRefused(f"{name} holds {int(bad.sum())} non-finite values{_stores(table, bad)}")
    if np.isnan(table.cp_t).any() or (table.t_scale <= 0).any():
        raise VersionRefused("changepoints are NaN or a time scale is not positive")
    ids = table.store_id.tolist()
    for sid in ids:
        problem = store_id_problem(sid)
        if problem:
            raise VersionRefused(f"store id {problem}")
    if len(set(ids)) != n or any(a >= b for a, b in itertools.pairwise(ids)):
        raise VersionRefused("store ids are not unique and sorted")
    check_horizon(table, ahead_days)


def horizon(table: ParamTable, ahead_days: int = MAX_DAYS_AHEAD) -> tuple[np.ndarray, np.ndarray]:
    """Each store's first and last day to check (days since 1970-01-01): the day after its data, and
    ``ahead_days`` later or its last known calendar day, whichever is later."""
    first = table.last_day.astype(np.int64) + 1
    last = first + max(0, int(ahead_days) - 1)
    cal = np.asarray(table.calendar)
    if cal.ndim == 3 and cal.shape[1]:
        known = (cal >= 0).any(axis=2)  # (n, D): the calendar says something that day
        has = known.any(axis=1)
        last_known = int(table.cal_start) + cal.shape[1] - 1 - np.argmax(known[:, ::-1], axis=1)
        last = np.where(has, np.maximum(last, last_known), last)
    return first, last


def check_horizon(table: ParamTable, ahead_days: int = MAX_DAYS_AHEAD, band: float = PLAUSIBLE_BAND) -> None:
    """Every store's forecast on every day of its :func:`horizon` is finite (yhat and both bounds) and, on
    the days it opens, at most ``band`` times its best day; else ``VersionRefused`` naming the first store
    and day that is not."""
    problem = horizon_problem(table, ahead_days, band)
    if problem:
        raise VersionRefused(problem)


def horizon_problem(table: ParamTable, ahead_days: int = MAX_DAYS_AHEAD, band: float = PLAUSIBLE_BAND) -> str | None:
    """What is wrong with the forecasts over the :func:`horizon` (the first store and day), or None."""
    problems = horizon_problems(table, ahead_days, band, every_store=False)
    return next(iter(problems.values()), None)


def horizon_problems(table: ParamTable, ahead_days: int = MAX_DAYS_AHEAD, band: float = PLAUSIBLE_BAND,
                     every_store: bool = True) -> dict[str, str]:
    """Per store, the first day of its :func:`horizon` whose forecast is not finite, or (on a day it opens, within
    the default horizon ``MAX_DAYS_AHEAD`` and its calendar: the trainer's gate's horizon) leaves the plausible
    band ``[-best, band x best]`` of its best day; only the first store unless ``every_store``. A predictor told
    to answer further ahead (``--max-days-ahead``) checks that its far forecasts are finite: a linear trend
    leaves any band some decades out."""
    from predictor.forecast import calendar_days, forecast

    first, last = horizon(table, ahead_days)
    _, band_last = horizon(table, min(int(ahead_days), MAX_DAYS_AHEAD))
    length = last - first + 1
    n, a = len(first), 0
    found: dict[str, str] = {}
    while a < n:
        b, size = a, 0
        while b < n and (b == a or size + int(length[b]) <= CHUNK_ROWS):
            size += int(length[b])
            b += 1
        idx = np.arange(a, b)
        rows, days = np.repeat(idx, length[idx]), window_rows(first[idx], length[idx])
        with np.errstate(all="ignore"):
            out = np.stack(forecast(table, rows, days))
        bad = ~np.isfinite(out)
        best = table.best_day[rows]
        high = (~bad.any(axis=0) & (days <= band_last[rows]) & calendar_days(table, rows, days).open
                & ((out[0] > band * best) | (out[0] < -best)))
        for j in np.flatnonzero(bad.any(axis=0) | high):
            sid = str(table.store_id[rows[j]])
            if sid in found:
                continue
            if bad[:, j].any():
                k = int(np.flatnonzero(bad[:, j])[0])
                found[sid] = (f"forecasts are not finite: {_where(table, rows, days, first, j)} has {OUTPUT_NAMES[k]} "
                              f"{out[k, j]}{_more(rows, bad.any(axis=0))}; every store is checked to {ahead_days} "
                              "days after its data (--max-days-ahead) and to the end of its calendar")
            else:
                where = _where(table, rows, days, first, j)
                found[sid] = (f"implausible forecast: {where} forecasts {out[0, j]:,.0f}, "
                              f"outside [-1, {band:g}] x the store's best day ({best[j]:,.0f}){_more(rows, high)}; "
                              f"every store is checked to {min(int(ahead_days), MAX_DAYS_AHEAD)} days after its data "
                              "and to the end of its calendar")
            if not every_store:
                return found
        a = b
    return found


def _where(table: ParamTable, rows: np.ndarray, days: np.ndarray, first: np.ndarray, j: int) -> str:
    return (f"store {str(table.store_id[rows[j]])!r} on {iso(days[j])} "
            f"({int(days[j] - first[rows[j]]) + 1} days after its data)")


def _more(rows: np.ndarray, bad: np.ndarray) -> str:
    stores = len(np.unique(rows[bad]))
    return f" (at least {stores} stores are)" if stores > 1 else ""


def _stores(table: ParamTable, bad: np.ndarray) -> str:
    n = len(table.store_id)
    if bad.ndim == 0 or bad.shape[0] != n:
        return ""
    ids = table.store_id[bad.reshape(n, -1).any(axis=1)].tolist()
    return f" (stores {', '.join(map(repr, ids[:5]))}{' ...' if len(ids) > 5 else ''})"
