"""Accuracy as actual sales arrive: the champion's forecasts of the new days, scored per store.

A version's forecast of a day is a pure function of the version (``predictor.forecast`` over its
``ParamTable``), so no forecast log is needed: for every store, the open days with a sales figure
after the store's last day in the champion (its true out-of-sample days), the latest
``window_days`` of them, are forecast with the day's actual promotion (as the holdout was
evaluated: the forecast with the calendar known) and scored (WAPE). A store is drifting when it has at least
``min_days`` such days and its recent WAPE exceeds ``factor`` times its holdout WAPE (recorded in the
version's ``store_metrics.csv``; at least ``floor``). Refitting it moves its last day past those
days, so it is scored afresh from then on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from predictor.forecast import forecast
from predictor.table import ParamTable


@dataclass(frozen=True)
class DriftPolicy:
    factor: float = 2.0  # recent WAPE above this times the holdout WAPE: refit
    window_days: int = 28  # the latest out-of-sample open days scored
    min_days: int = 7  # fewer scored days: not judged yet
    floor: float = 0.05  # the holdout WAPE counts as at least this (a near-perfect holdout is noise)
    worst: int = 10  # stores exported as the worst


@dataclass
class DriftReport:
    version: str
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)  # store -> days, wape, holdout, ratio
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> days, wape
    drifting: list[str] = field(default_factory=list)

    def worst(self, n: int) -> list[tuple[str, float]]:
        scored = [(s, v["wape"]) for s, v in self.stores.items() if np.isfinite(v["wape"])]
        return sorted(scored, key=lambda x: -x[1])[:n]

    def to_dict(self, n: int = 10) -> dict[str, Any]:
        return {"version": self.version, "drifting": self.drifting, "groups": self.groups,
                "worst": [{"store_id": s, **self.stores[s]} for s, _ in self.worst(n)],
                "stores_scored": sum(1 for v in self.stores.values() if v["days"])}


def score(version: str, table: ParamTable, holdout: dict[str, float], sales: pd.DataFrame,
          policy: DriftPolicy = DriftPolicy(), groups: dict[str, str] | None = None) -> DriftReport:
    """Score the champion ``table`` on the days after each store's data (see the module docstring)."""
    report = DriftReport(version)
    if not len(table) or sales.empty:
        return report
    known = pd.Series(np.arange(len(table)), index=table.store_id)
    rows = sales[sales["Store"].isin(known.index)]
    if "Open" in rows.columns:
        rows = rows[rows["Open"] == 1]
    y = rows["Sales"].to_numpy(dtype=np.float64)
    ok = np.isfinite(y)
    rows, y = rows[ok], y[ok]
    idx = known.reindex(rows["Store"].astype(str).to_numpy()).to_numpy(np.int64)
    day = rows["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    # the day's actual promotion, as the holdout was evaluated (the forecast a planner gets with the calendar)
    promo = rows["Promo"].fillna(-1).to_numpy(np.int8) if "Promo" in rows.columns else np.full(len(y), -1, np.int8)
    after = day > table.last_day[idx]
    idx, day, y, promo = idx[after], day[after], y[after], promo[after]
    if len(idx):  # the latest window_days open days of each store
        order = np.lexsort((-day, idx))
        idx, day, y, promo = idx[order], day[order], y[order], promo[order]
        first = np.r_[0, np.flatnonzero(np.diff(idx)) + 1]
        rank = np.arange(len(idx)) - np.repeat(first, np.diff(np.r_[first, len(idx)]))
        keep = rank < policy.window_days
        idx, day, y, promo = idx[keep], day[keep], y[keep], promo[keep]
    opened = np.ones(len(idx), dtype=np.int8)
    yhat = forecast(table, idx, day, promo, opened)[0] if len(idx) else np.zeros(0)
    err = np.abs(y - yhat)
    n = np.bincount(idx, minlength=len(table))
    abs_err = np.bincount(idx, weights=err, minlength=len(table))
    abs_y = np.bincount(idx, weights=np.abs(y), minlength=len(table))
    group_of = groups or {}
    acc: dict[str, list[float]] = {}
    for i, sid in enumerate(table.store_id.tolist()):
        wape = abs_err[i] / abs_y[i] if abs_y[i] > 0 else float("nan")
        base = holdout.get(sid, float("nan"))
        limit = policy.factor * max(base, policy.floor) if np.isfinite(base) else float("nan")
        report.stores[sid] = {"days": int(n[i]), "wape": float(wape), "holdout_wape": float(base),
                              "ratio": float(wape / max(base, policy.floor)) if np.isfinite(base) and n[i] else
                              float("nan")}
        if n[i] >= policy.min_days and np.isfinite(limit) and wape > limit:
            report.drifting.append(sid)
        if n[i]:
            g = acc.setdefault(group_of.get(sid, "all"), [0.0, 0.0, 0.0])
            g[0] += n[i]
            g[1] += abs_err[i]
            g[2] += abs_y[i]
    report.groups = {g: {"days": int(v[0]), "wape": v[1] / v[2] if v[2] > 0 else float("nan")}
                     for g, v in sorted(acc.items())}
    return report


def holdout_wape(metrics: pd.DataFrame) -> dict[str, float]:
    """Each store's holdout WAPE from a version's ``store_metrics.csv`` (stores without one left out)."""
    if "wape" not in metrics.columns:
        return {}
    w = pd.to_numeric(metrics["wape"], errors="coerce")
    ok = np.isfinite(w.to_numpy(dtype=np.float64))
    return dict(zip(metrics["store_id"].astype(str)[ok], w[ok].astype(float), strict=True))


def read_groups(path: str) -> dict[str, str]:
    """Store -> group from a CSV with a ``Store`` column and a group column (``--store-groups``; e.g.
    Rossmann's store.csv, whose ``StoreType`` is taken, else the second column)."""
    df = pd.read_csv(path, dtype=str)
    if "Store" not in df.columns or len(df.columns) < 2:
        raise ValueError(f"{path}: need a Store column and a group column")
    col = "StoreType" if "StoreType" in df.columns else next(c for c in df.columns if c != "Store")
    return dict(zip(df["Store"].str.strip(), df[col].fillna("-").str.strip(), strict=True))
