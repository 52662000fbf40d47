"""Fit one chunk of stores (runs in a worker process): holdout fit + evaluation, then the final fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.evaluate import Gate, error_sums, scores, seasonal_naive
from pipelines.intervals import default_grid

FITTERS = ("prophet-batch", "prophet")
PROPHET_DEFAULTS: dict[str, Any] = {
    "yearly_seasonality": True, "weekly_seasonality": True, "daily_seasonality": False, "interval_width": 0.95,
}
Series = tuple[str, np.ndarray, np.ndarray]  # store id, int days since epoch (sorted), sales


@dataclass(frozen=True)
class FitConfig:
    """How every store is fitted and evaluated."""

    fitter: str = "prophet-batch"
    holdout_days: int = 42
    min_days: int = 30
    seed: int = 0
    gate_margin: float = 0.10
    prophet: dict[str, Any] = field(default_factory=lambda: dict(PROPHET_DEFAULTS))
    grid: tuple[int, ...] = tuple(default_grid().tolist())

    def __post_init__(self) -> None:
        if self.fitter not in FITTERS:
            raise ValueError(f"fitter must be one of {', '.join(FITTERS)}; got {self.fitter!r}")
        if self.holdout_days < 0 or self.min_days < 2:
            raise ValueError("holdout_days must be >= 0 and min_days >= 2")


@dataclass
class StoreResult:
    """What a worker sends back for one store."""

    store_id: str
    row: dict[str, Any] | None = None
    model_json_gz: bytes | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    sums: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


def quiet(single_thread: bool = False) -> None:
    """Silence cmdstanpy (it resets its level on first use, so disable the logger) and Prophet's info.

    ``single_thread`` (worker processes): one BLAS thread each, so workers do not oversubscribe the cores.
    """
    if single_thread:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    logging.getLogger("cmdstanpy").disabled = True
    logging.getLogger("prophet.plot").disabled = True  # "Importing plotly failed": plots are matplotlib here
    logging.getLogger("prophet").setLevel(logging.WARNING)
    logging.getLogger("prophet_batch").setLevel(logging.WARNING)


def _frame(days: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"ds": pd.to_datetime(days, unit="D"), "y": np.asarray(y, dtype=np.float64)})


def fit_models(series: dict[str, pd.DataFrame], cfg: FitConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Fit every series with the configured fitter; returns (models, errors by store)."""
    from prophet import Prophet

    models: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if not series:
        return models, errors
    if cfg.fitter == "prophet-batch":
        from prophet_batch import fit_many

        long = pd.concat([df.assign(unique_id=sid) for sid, df in series.items()], ignore_index=True)
        models = fit_many(long, n_jobs=1, on_error="skip", **cfg.prophet)
        errors = {sid: "prophet-batch could not fit this store" for sid in series if sid not in models}
    else:
        for sid, df in series.items():
            try:
                models[sid] = Prophet(**cfg.prophet).fit(df)
            except Exception as exc:  # a store that cannot be fitted never aborts the job
                errors[sid] = f"{type(exc).__name__}: {exc}"
    return models, errors


def fit_chunk(chunk: list[Series], cfg: FitConfig) -> list[StoreResult]:
    """Evaluate on the holdout, then fit on all data, for each store of the chunk."""
    from pipelines.export import UnsupportedModelError, prophet_json_gz, store_row
    from predictor.forecast import forecast
    from predictor.table import ParamTable

    grid = np.asarray(cfg.grid, dtype=np.int64)
    results = {sid: StoreResult(sid) for sid, _, _ in chunk}
    full, holdout, tests = {}, {}, {}
    for sid, days, y in chunk:
        res = results[sid]
        res.metrics = {"store_id": sid, "open_days": len(days),
                       "first_date": _iso(days[0]) if len(days) else "", "last_date": _iso(days[-1]) if len(days)
                       else ""}
        if len(days) < cfg.min_days:
            res.error = f"too little data: {len(days)} open days (need {cfg.min_days})"
            continue
        full[sid] = _frame(days, y)
        train = days <= days[-1] - cfg.holdout_days
        if cfg.holdout_days > 0 and train.sum() >= cfg.min_days and (~train).any():
            holdout[sid] = _frame(days[train], y[train])
            tests[sid] = (days[train], y[train], days[~train], y[~train])

    gate = Gate(cfg.gate_margin)
    eval_grid = grid[: int(np.searchsorted(grid, cfg.holdout_days)) + 1]
    eval_models, _ = fit_models(holdout, cfg)
    for sid, (tr_days, tr_y, te_days, te_y) in tests.items():
        if sid not in eval_models:
            continue
        try:
            table = ParamTable.from_rows([store_row(eval_models[sid], sid, cfg.seed, eval_grid)], eval_grid,
                                         cfg.prophet.get("interval_width", 0.8))
        except UnsupportedModelError as exc:
            results[sid].error = str(exc)
            continue
        yhat, lo, hi = forecast(table, np.zeros(len(te_days), dtype=np.int64), te_days)
        base = seasonal_naive(tr_days, tr_y, te_days)
        model_sums, base_sums = error_sums(te_y, yhat), error_sums(te_y, base)
        covered = float(((te_y >= lo) & (te_y <= hi)).sum())
        results[sid].sums = {"model": model_sums, "baseline": base_sums,
                             "coverage": {"n": float(len(te_y)), "covered": covered}}
        m, b = scores(model_sums), scores(base_sums)
        results[sid].metrics.update(
            holdout_n=len(te_y), **m, coverage=covered / len(te_y),
            **{f"baseline_{k}": v for k, v in b.items()}, gate=gate(m["wape"], b["wape"]),
        )

    final_models, errors = fit_models(full, cfg)
    for sid, message in errors.items():
        results[sid].error = message
    for sid, model in final_models.items():
        res = results[sid]
        if res.error:
            continue
        try:
            res.row = store_row(model, sid, cfg.seed, grid)
        except UnsupportedModelError as exc:
            res.error = str(exc)
            continue
        res.model_json_gz = prophet_json_gz(model)
        res.metrics.setdefault("gate", "n/a")
    return list(results.values())


def _iso(day: int) -> str:
    return str(np.datetime64(int(day), "D"))
