"""Scores of one window, every method on the same rows.

A window's rows frame has one row per (store, day) of the window's data: ``Store``, ``Date``, ``Open``,
``Sales``, ``best_day`` (the store's best day before the cutoff), ``why`` (empty, or why the served model has
no answer for the store: not fitted, refused, not answered), one column per method (``served``, ``lightgbm``,
``naive``; NaN where a method has no forecast), ``served_lower`` / ``served_upper`` and the special-day flags
(``pipelines.backtest.windows.SPECIAL_DAYS``). The scored rows are those where the store is open with sales
(``Open`` 1, ``Sales`` > 0), the served model answered, and every method has a forecast: the same rows for all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest.windows import SPECIAL_DAYS
from predictor.validate import PLAUSIBLE_BAND

METHODS = ("served", "lightgbm", "naive")
WORST = 10
GATE_MARGIN = 0.10  # a store fails the gate in the window when its WAPE > (1 + margin) x the naive's
BAND = PLAUSIBLE_BAND  # a forecast above this many times the store's best day is implausible (the gate's rule)


def wape(y: np.ndarray, p: np.ndarray) -> float:
    """sum |p - y| / sum y (NaN without sales)."""
    s = float(np.sum(y))
    return float(np.sum(np.abs(p - y)) / s) if s > 0 else float("nan")


def rmspe(y: np.ndarray, p: np.ndarray) -> float:
    """sqrt(mean(((p - y) / y)^2)) over the rows with y > 0."""
    pos = y > 0
    return float(np.sqrt(np.mean(((p[pos] - y[pos]) / y[pos]) ** 2))) if pos.any() else float("nan")


def bias(y: np.ndarray, p: np.ndarray) -> float:
    """sum (p - y) / sum y: positive when the forecast is too high."""
    s = float(np.sum(y))
    return float(np.sum(p - y) / s) if s > 0 else float("nan")


def coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of the rows whose actual lies within [lower, upper]."""
    return float(np.mean((y >= lower) & (y <= upper))) if len(y) else float("nan")


def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"wape": wape(y, p), "rmspe": rmspe(y, p), "bias": bias(y, p)}


def methods_of(rows: pd.DataFrame) -> list[str]:
    """The methods the rows carry (``served`` first)."""
    return [m for m in METHODS if m in rows]


def scored_mask(rows: pd.DataFrame) -> np.ndarray:
    """The same-rows rule: open with sales, answered by the served model, forecast by every method."""
    ok = (rows["Open"].to_numpy() == 1) & (rows["Sales"].fillna(0).to_numpy() > 0) & (rows["why"].to_numpy() == "")
    for m in methods_of(rows):
        ok &= np.isfinite(rows[m].to_numpy(np.float64))
    return ok


def left_out(rows: pd.DataFrame) -> dict[str, Any]:
    """How many rows and stores are not scored, and why."""
    open_sales = (rows["Open"].to_numpy() == 1) & (rows["Sales"].fillna(0).to_numpy() > 0)
    why = rows["why"].to_numpy()
    out: dict[str, Any] = {
        "rows_in_window": len(rows), "rows_closed": int((rows["Open"].to_numpy() != 1).sum()),
        "rows_open_without_sales": int(((rows["Open"].to_numpy() == 1) & ~open_sales).sum()),
    }
    reasons: dict[str, dict[str, Any]] = {}
    for reason, g in rows[open_sales & (why != "")].groupby("why"):
        reasons[str(reason)] = {"rows": len(g), "stores": sorted(pd.unique(g["Store"]).tolist())}
    out["served_model_without_answer"] = reasons
    missing = open_sales & (why == "") & ~scored_mask(rows)
    out["rows_without_a_reference"] = {m: int((missing & ~np.isfinite(rows[m].to_numpy(np.float64))).sum())
                                       for m in methods_of(rows)}
    return out


def _group_figures(s: pd.DataFrame, key: str, methods: list[str]) -> pd.DataFrame:
    """Per ``key`` (store or date): rows, WAPE of each method, the served bias and coverage."""
    s = s.assign(_covered=((s["Sales"] >= s["served_lower"]) & (s["Sales"] <= s["served_upper"])).astype(float))
    g = s.groupby(key)
    out = pd.DataFrame({"rows": g.size(), "actual": g["Sales"].sum()})
    for m in methods:
        out[f"{m}_wape"] = g.apply(lambda d, m=m: wape(d["Sales"].to_numpy(), d[m].to_numpy()), include_groups=False)
    out["served_bias"] = g.apply(lambda d: bias(d["Sales"].to_numpy(), d["served"].to_numpy()), include_groups=False)
    out["served_coverage"] = g["_covered"].mean()
    return out


def _records(frame: pd.DataFrame, key: str) -> list[dict[str, Any]]:
    out = frame.reset_index().rename(columns={key: key.lower()})
    if key == "Date":
        out["date"] = out["date"].dt.strftime("%Y-%m-%d")
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
            for r in out.to_dict("records")]


def largest(rows: pd.DataFrame, method: str) -> dict[str, Any]:
    """The largest ratio of a forecast (any open day answered) to the store's best day before the cutoff."""
    p = rows[method].to_numpy(np.float64)
    best = rows["best_day"].to_numpy(np.float64)
    ok = np.isfinite(p) & (best > 0) & (rows["Open"].to_numpy() == 1)
    if not ok.any():
        return {"ratio": None}
    ratio = np.where(ok, p / np.where(best > 0, best, 1.0), -np.inf)
    i = int(np.argmax(ratio))
    return {"ratio": float(ratio[i]), "store": str(rows["Store"].iat[i]), "date": str(rows["Date"].iat[i].date()),
            "forecast": float(p[i]), "best_day": float(best[i]), "actual": float(rows["Sales"].iat[i]),
            f"above_{BAND:g}x": int((ratio > BAND).sum())}


def special(s: pd.DataFrame, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per kind of special day: rows, stores, each method's bias and WAPE, the served coverage."""
    out = {}
    for kind in SPECIAL_DAYS:
        if kind not in s:
            continue
        d = s[s[kind].to_numpy(bool)]
        if d.empty:
            continue
        y = d["Sales"].to_numpy()
        entry: dict[str, Any] = {"rows": len(d), "stores": int(d["Store"].nunique()),
                                 "dates": sorted(d["Date"].dt.strftime("%Y-%m-%d").unique().tolist())}
        for m in methods:
            entry[f"{m}_bias"] = bias(y, d[m].to_numpy())
            entry[f"{m}_wape"] = wape(y, d[m].to_numpy())
        entry["served_coverage"] = coverage(y, d["served_lower"].to_numpy(), d["served_upper"].to_numpy())
        out[kind] = entry
    return out


def daily(s: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per date (scored rows): the fleet's totals (actual, each method, the served bounds) and each method's WAPE."""
    g = s.groupby("Date")
    out = pd.DataFrame({"rows": g.size(), "actual": g["Sales"].sum(), "served_lower": g["served_lower"].sum(),
                        "served_upper": g["served_upper"].sum()})
    for m in methods:
        out[m] = g[m].sum()
        out[f"{m}_wape"] = g.apply(lambda d, m=m: wape(d["Sales"].to_numpy(), d[m].to_numpy()), include_groups=False)
    return out


def score_window(rows: pd.DataFrame, gate_margin: float = GATE_MARGIN) -> dict[str, Any]:
    """Every figure of one window (JSON-ready) and the daily table the plot draws."""
    methods = methods_of(rows)
    mask = scored_mask(rows)
    s = rows[mask]
    y = s["Sales"].to_numpy(np.float64)
    out: dict[str, Any] = {"rows_scored": int(mask.sum()), "stores_scored": int(s["Store"].nunique()),
                           "left_out": left_out(rows), "methods": {}}
    for m in methods:
        out["methods"][m] = figures(y, s[m].to_numpy(np.float64))
    out["methods"]["served"]["coverage"] = coverage(y, s["served_lower"].to_numpy(), s["served_upper"].to_numpy())
    stores = _group_figures(s, "Store", methods)
    if "naive" in methods:
        failing = stores[stores["served_wape"] > (1 + gate_margin) * stores["naive_wape"]]
        out["stores_failing"] = len(failing)
        out["stores_failing_list"] = sorted(failing.index.astype(str).tolist(), key=lambda x: (len(x), x))
    out["worst_stores"] = _records(stores.sort_values("served_wape", ascending=False).head(WORST), "Store")
    days = _group_figures(s, "Date", methods)
    out["worst_days"] = _records(days.sort_values("served_wape", ascending=False).head(WORST), "Date")
    out["special_days"] = special(s, methods)
    out["largest_forecast"] = {m: largest(rows[rows["why"] == ""], m) for m in methods}
    out["daily"] = daily(s, methods)
    return out
