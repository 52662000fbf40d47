"""Holdout evaluation: error metrics, the seasonal-naive baseline and the quality gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.calendar import weekday

GATE_PASS, GATE_FAIL, GATE_NA = "pass", "fail", "n/a"


@dataclass(frozen=True)
class Gate:
    """A store passes when its holdout WAPE is at most ``(1 + margin)`` times the baseline's."""

    margin: float = 0.10

    def __call__(self, wape: float, baseline_wape: float) -> str:
        if not np.isfinite(wape) or not np.isfinite(baseline_wape):
            return GATE_NA
        return GATE_PASS if wape <= baseline_wape * (1.0 + self.margin) else GATE_FAIL


def seasonal_naive(train_days: np.ndarray, train_y: np.ndarray, test_days: np.ndarray) -> np.ndarray:
    """Each test day gets the last training value on the same weekday (NaN if the weekday never occurs)."""
    last = np.full(7, np.nan)
    wd = weekday(train_days)
    order = np.argsort(train_days, kind="stable")
    last[wd[order]] = np.asarray(train_y, dtype=np.float64)[order]  # later days overwrite earlier ones
    return last[weekday(test_days)]


def error_sums(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Additive sums from which WAPE, MAPE and RMSE pool across stores; rows with NaN pred are dropped."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(pred)
    y, pred = y[ok], pred[ok]
    err = np.abs(y - pred)
    pos = y > 0
    return {
        "n": float(len(y)), "abs_err": float(err.sum()), "abs_y": float(np.abs(y).sum()),
        "sq_err": float((err**2).sum()), "ape": float((err[pos] / y[pos]).sum()), "n_pos": float(pos.sum()),
        "sq_pe": float(((err[pos] / y[pos]) ** 2).sum()),
    }


def scores(sums: dict[str, float]) -> dict[str, float]:
    """WAPE, MAPE and RMSPE (over positive actuals) and RMSE from ``error_sums`` (NaN where undefined)."""
    def div(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "wape": div(sums["abs_err"], sums["abs_y"]),
        "mape": div(sums["ape"], sums["n_pos"]),
        "rmse": float(np.sqrt(div(sums["sq_err"], sums["n"]))),
        "rmspe": float(np.sqrt(div(sums.get("sq_pe", float("nan")), sums["n_pos"]))),
    }


def pooled(sums: list[dict[str, float]]) -> dict[str, float]:
    """Add up per-store ``error_sums``."""
    keys = ("n", "abs_err", "abs_y", "sq_err", "ape", "n_pos", "sq_pe")
    return {k: float(sum(s.get(k, float("nan")) for s in sums)) for k in keys}
