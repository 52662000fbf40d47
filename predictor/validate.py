"""A version is checked before it serves: format, shapes, finite values, store ids, at least one store.

``check(table, shard)`` raises :class:`VersionRefused` saying what is wrong; the loader then keeps
the version it serves (at start: stays not ready, saying why). The checks are what a request would
otherwise trip over: arrays of inconsistent lengths (500s), NaN parameters (``null`` forecasts), no
stores (every store "unknown"), regressors the predictor cannot derive, and a smoke evaluation of
every store's first day ahead (finite yhat and bounds).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from serving.contract import Shard, store_id_problem

if TYPE_CHECKING:
    from predictor.table import ParamTable

PER_STORE_2D = {"delta": None, "cp_t": None, "beta": None, "iv_lower": None, "iv_upper": None, "open_rate": 7,
                "reg_beta": None}
FINITE = ("start", "t_scale", "y_scale", "floor", "k", "m", "sigma_obs", "delta", "beta", "iv_lower", "iv_upper",
          "iv_trend_var", "iv_noise_var", "open_rate", "reg_beta", "iv_scale", "feat_period", "feat_harmonic")


class VersionRefused(ValueError):
    """A version that must not be served; the message says why."""


def check(table: ParamTable, shard: Shard | None = None) -> None:
    """Raise ``VersionRefused`` unless ``table`` (already cut to ``shard``) can answer requests."""
    from predictor.calendar import REGRESSORS
    from predictor.forecast import forecast

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
    rows = np.arange(n)
    with np.errstate(all="ignore"):
        out = np.stack(forecast(table, rows, table.last_day.astype(np.int64) + 1))
    bad = ~np.isfinite(out).all(axis=0)
    if bad.any():
        raise VersionRefused(f"forecasts are not finite{_stores(table, bad)}")


def _stores(table: ParamTable, bad: np.ndarray) -> str:
    n = len(table.store_id)
    if bad.ndim == 0 or bad.shape[0] != n:
        return ""
    ids = table.store_id[bad.reshape(n, -1).any(axis=1)].tolist()
    return f" (stores {', '.join(map(repr, ids[:5]))}{' ...' if len(ids) > 5 else ''})"
