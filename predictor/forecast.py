"""Prophet forecasts evaluated with numpy over a parameter table: the request path.

``forecast(table, rows, days)`` computes yhat exactly as stock ``Prophet.predict`` does (piecewise
linear trend, additive Fourier seasonalities and additive extra regressors, the regressors derived
from the version's calendar by ``predictor.calendar``) for any mix of stores and dates at once, and
the interval bounds from the offsets simulated at training time (``pipelines.training.intervals``), widened
on the special days a store knows little about (``predictor.special_days.widening``) and scaled by the
version's calibration, so a store's interval for a date is the same whatever window, batch or
replica it is asked in. A version fitted on ``log1p(sales)`` answers ``expm1`` of all three.
``promo`` / ``open_`` (int8 per row, -1: as the calendar says) evaluate a what-if. The numbers are
model-ready: a closed day keeps Prophet's value beside its open flag (``calendar_outputs``); the
business API answers it 0 (``serving.contract.closed_days``).
"""

from __future__ import annotations

import numpy as np

from predictor import calendar as cal
from predictor import special_days
from predictor.table import ParamTable
from serving.contract import CALENDAR_SOURCES, HOLIDAY_CODES, pack_day_flags

SECONDS_PER_DAY = 86400.0


def forecast(table: ParamTable, rows: np.ndarray, days: np.ndarray, promo: np.ndarray | None = None,
             open_: np.ndarray | None = None, group: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """yhat, yhat_lower, yhat_upper for store rows ``rows`` on ``days`` (int days since 1970-01-01);
    ``group``: which rows a what-if reaches (``predictor.calendar.resolve``)."""
    yhat, lower, upper = fitted_scale(table, rows, days, promo, open_, group)
    lower, upper = lower * table.iv_scale[rows], upper * table.iv_scale[rows]
    if table.transform == "log1p":
        with np.errstate(over="ignore"):
            return np.expm1(yhat), np.expm1(yhat + lower), np.expm1(yhat + upper)
    return yhat, yhat + lower, yhat + upper


def fitted_scale(table: ParamTable, rows: np.ndarray, days: np.ndarray, promo: np.ndarray | None = None,
                 open_: np.ndarray | None = None, group: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prophet's own yhat (on the fitted scale) and the uncalibrated interval offsets from it."""
    rows = np.asarray(rows, dtype=np.int64)
    days = np.asarray(days, dtype=np.int64)
    yhat = trend(table, rows, days) + seasonality(table, rows, days)
    lower, upper = interval_offsets(table, rows, days)
    if table.reg_beta.shape[1]:
        x = regressor_matrix(table, rows, days, promo, open_, group)
        yhat = yhat + np.einsum("ij,ij->i", x, table.reg_beta[rows]) * table.y_scale[rows]
        wide = special_days.widening(x, table.reg_iv[rows])
        lower, upper = lower * wide, upper * wide
    return yhat, lower, upper


def regressor_matrix(table: ParamTable, rows: np.ndarray, days: np.ndarray, promo: np.ndarray | None = None,
                     open_: np.ndarray | None = None, group: np.ndarray | None = None) -> np.ndarray:
    """Each row's regressor values, in the table's ``reg_names`` order (the columns of the export frame)."""
    cells, _ = cal.resolve(table.calendar, table.cal_start, table.open_rate, rows, days, promo, open_, group,
                           holidays=table.holidays)
    x = special_days.matrix(cells, days, table.level_day[rows])
    if tuple(table.reg_names.tolist()) == special_days.ALL:
        return x
    pos = {name: j for j, name in enumerate(special_days.ALL)}
    missing = [n for n in table.reg_names.tolist() if n not in pos]
    if missing:
        raise ValueError(f"regressors this predictor cannot derive from a calendar: {', '.join(missing)}")
    return x[:, [pos[n] for n in table.reg_names.tolist()]]


def calendar_days(table: ParamTable, rows: np.ndarray, days: np.ndarray, promo: np.ndarray | None = None,
                  open_: np.ndarray | None = None, group: np.ndarray | None = None) -> cal.Days:
    """The resolved calendar of each row: open, promo, holiday, and whether it came from the calendar."""
    _, resolved = cal.resolve(table.calendar, table.cal_start, table.open_rate, np.asarray(rows, dtype=np.int64),
                              np.asarray(days, dtype=np.int64), promo, open_, group, holidays=table.holidays)
    return resolved


def trend(table: ParamTable, rows: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Prophet's piecewise-linear trend on the data scale (``piecewise_linear * y_scale + floor``)."""
    t = (days * SECONDS_PER_DAY - table.start[rows]) / table.t_scale[rows]
    cp = table.cp_t[rows]
    on = cp <= t[:, None]
    deltas = np.where(on, table.delta[rows], 0.0)
    k_t = deltas.sum(axis=1) + table.k[rows]
    m_t = (deltas * -np.where(on, cp, 0.0)).sum(axis=1) + table.m[rows]
    return (k_t * t + m_t) * table.y_scale[rows] + table.floor[rows]


def seasonality(table: ParamTable, rows: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The additive Fourier terms; the features are computed once per distinct date."""
    if table.beta.shape[1] == 0:
        return np.zeros(len(days))
    unique, inverse = np.unique(days, return_inverse=True)
    x_t = np.pi * 2 * unique.astype(np.float64)
    c = (table.feat_harmonic / table.feat_period)[None, :] * x_t[:, None]
    features = np.where(table.feat_cos, np.cos(c), np.sin(c))
    return np.einsum("ij,ij->i", features[inverse], table.beta[rows]) * table.y_scale[rows]


def interval_offsets(table: ParamTable, rows: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper offsets from yhat: interpolated on the simulated grid, variance-scaled beyond it."""
    grid = table.iv_days
    ahead = days - table.last_day[rows]
    h = np.clip(ahead, 0, grid[-1])
    hi_i = np.searchsorted(grid, h)
    lo_i = np.maximum(hi_i - 1, 0)
    span = grid[hi_i] - grid[lo_i]
    w = np.where(span > 0, (h - grid[lo_i]) / np.maximum(span, 1), 0.0)
    lower = _lerp(table.iv_lower, rows, lo_i, hi_i, w)
    upper = _lerp(table.iv_upper, rows, lo_i, hi_i, w)
    beyond = ahead > grid[-1]
    if beyond.any():
        r = rows[beyond]
        a, b = table.iv_trend_var[r], table.iv_noise_var[r]
        far = ahead[beyond].astype(np.float64)
        scale = np.sqrt((a * far**3 + b) / np.maximum(a * float(grid[-1]) ** 3 + b, 1e-300))
        lower[beyond] *= scale
        upper[beyond] *= scale
    return lower, upper


def _lerp(values: np.ndarray, rows: np.ndarray, lo_i: np.ndarray, hi_i: np.ndarray, w: np.ndarray) -> np.ndarray:
    low = values[rows, lo_i]
    return low + w * (values[rows, hi_i] - low)


CALENDAR_OUTPUTS = ("open", "promo", "holiday", "calendar", "day_flags")  # the V2 outputs a request may name


def calendar_outputs(table: ParamTable, rows: np.ndarray, days: np.ndarray, promo: np.ndarray | None = None,
                     open_: np.ndarray | None = None, names: tuple[str, ...] = CALENDAR_OUTPUTS,
                     group: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The calendar of each row as the V2 outputs ``names``: ``open``, ``promo`` (int32 0/1), ``holiday``
    (code), ``calendar`` (where the day came from: ``calendar``, ``default`` or ``what-if``) and
    ``day_flags`` (all four packed, ``serving.contract.pack_day_flags``)."""
    d = calendar_days(table, rows, days, promo, open_, group)
    source = np.where(d.what_if, 2, np.where(d.known, 0, 1)).astype(np.int8)  # CALENDAR_SOURCES' order
    out: dict[str, np.ndarray] = {}
    if "open" in names:
        out["open"] = d.open.astype(np.int32)
    if "promo" in names:
        out["promo"] = d.promo.astype(np.int32)
    if "holiday" in names:
        out["holiday"] = np.asarray(HOLIDAY_CODES, dtype=object)[d.holiday]
    if "calendar" in names:
        out["calendar"] = np.asarray(CALENDAR_SOURCES, dtype=object)[source]
    if "day_flags" in names:
        out["day_flags"] = pack_day_flags(d.open, d.promo, d.holiday, source)
    return out
