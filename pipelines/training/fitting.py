"""Fit one chunk of stores (runs in a worker process): holdout fit + evaluation, then the final fit."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data.calendar import StoreCalendar
from pipelines.training.evaluate import GATE_FAIL, Gate, error_sums, scores, seasonal_naive
from pipelines.training.intervals import default_grid
from predictor import special_days
from predictor.table import NO_GAP, TRANSFORMS

FITTERS = ("prophet-batch", "prophet")
# Chosen on rolling-origin windows of the real data (README, "Forecast quality"): with the Christmas season
# and the days around holidays as regressors, a smoother yearly shape (5 Fourier pairs, not Prophet's 10)
# and a stiffer trend (changepoint prior 0.01, not 0.05) forecast better in every window.
PROPHET_DEFAULTS: dict[str, Any] = {
    "yearly_seasonality": 5, "weekly_seasonality": True, "daily_seasonality": False, "interval_width": 0.95,
    "changepoint_prior_scale": 0.01,
}
MONTHLY_PERIOD = 30.5
# Configurations a person picks by name (`storecast train --model`): "calendar" was chosen on the
# real Rossmann holdout (README, "Forecast quality"); "seed" is the reference without the calendar.
CALENDAR_REGRESSORS = (
    "promo", "school_holiday", "holiday_a", "holiday_b", "holiday_c", "holiday_before_1", "holiday_before_2",
    "holiday_after_1", "holiday_after_2", "closed_before", "closed_after",
    "promo_mon", "promo_tue", "promo_wed", "promo_thu", "promo_fri", "promo_sat",
    *special_days.REGRESSORS,
)
MODELS: dict[str, dict[str, Any]] = {
    "calendar": {"regressors": CALENDAR_REGRESSORS, "monthly_order": 5, "transform": "log1p", "calibrate": True,
                 "yearly_min_days": 600},
    "calendar-linear": {"regressors": CALENDAR_REGRESSORS, "monthly_order": 0, "transform": "none",
                        "calibrate": True, "yearly_min_days": 600},
    "seed": {"regressors": (), "monthly_order": 0, "transform": "none", "calibrate": False, "yearly_min_days": 0},
    # the calendar model before the special days (the reference the backtest and `make bench` compare with)
    "calendar-basic": {"regressors": tuple(r for r in CALENDAR_REGRESSORS if r not in special_days.REGRESSORS),
                       "monthly_order": 5, "transform": "log1p", "calibrate": True, "yearly_min_days": 0,
                       "prophet": {**PROPHET_DEFAULTS, "yearly_seasonality": True, "changepoint_prior_scale": 0.05}},
}
DEFAULT_MODEL = "calendar"


Series = tuple  # (store id, int days since epoch (sorted), sales[, StoreCalendar]): the open days of a store


@dataclass(frozen=True)
class FitConfig:
    """How every store is fitted and evaluated (recorded on the version; a retrain inherits it)."""

    fitter: str = "prophet-batch"
    holdout_days: int = 42
    min_days: int = 30
    seed: int = 0
    gate_margin: float = 0.10
    prophet: dict[str, Any] = field(default_factory=lambda: dict(PROPHET_DEFAULTS))
    grid: tuple[int, ...] = tuple(default_grid().tolist())
    regressors: tuple[str, ...] = MODELS[DEFAULT_MODEL]["regressors"]
    monthly_order: int = MODELS[DEFAULT_MODEL]["monthly_order"]
    transform: str = MODELS[DEFAULT_MODEL]["transform"]
    calibrate: bool = MODELS[DEFAULT_MODEL]["calibrate"]
    regressor_prior_scale: float = 10.0
    # a store whose history spans fewer days gets no yearly seasonality: one year and a half cannot tell a
    # yearly shape from the trend (and a level change), and such a fit runs away months ahead
    yearly_min_days: int = MODELS[DEFAULT_MODEL]["yearly_min_days"]
    band: float = 3.0

    def __post_init__(self) -> None:
        if self.fitter not in FITTERS:
            raise ValueError(f"fitter must be one of {', '.join(FITTERS)}; got {self.fitter!r}")
        if self.holdout_days < 0 or self.min_days < 2:
            raise ValueError("holdout_days must be >= 0 and min_days >= 2")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {self.transform!r}")
        unknown = [r for r in self.regressors if r not in special_days.ALL]
        if unknown:
            raise ValueError(f"unknown regressors {', '.join(unknown)}; known: {', '.join(special_days.ALL)}")
        if self.regressor_prior_scale <= 0 or self.band <= 0:
            raise ValueError("regressor_prior_scale and band must be > 0")
        object.__setattr__(self, "regressors", tuple(self.regressors))
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))

    @classmethod
    def preset(cls, model: str = DEFAULT_MODEL, **overrides: Any) -> FitConfig:
        """The named configuration (``MODELS``) with some fields overridden."""
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
        return cls(**{**MODELS[model], **overrides})

    @property
    def interval_width(self) -> float:
        return float(self.prophet.get("interval_width", 0.8))

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (lists for tuples)."""
        out = dataclasses.asdict(self)
        out["grid"] = list(self.grid)
        out["regressors"] = list(self.regressors)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        """The inverse of ``to_dict``; raises naming unknown keys. Missing keys take today's defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fit configuration key(s): {', '.join(unknown)}")
        values = dict(data)
        for key in ("grid", "regressors"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes: Any) -> FitConfig:
        return dataclasses.replace(self, **changes)


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


CAL_HISTORY_DAYS = 120  # history days of the calendar a version keeps (forecasts of recent past days)
AFTER_GAP = 28  # days after a reopening the holdout fit sees before the gate judges the store


def _frame(days: np.ndarray, y: np.ndarray, x: np.ndarray | None = None, names: tuple[str, ...] = ()) -> pd.DataFrame:
    columns = {"ds": pd.to_datetime(days, unit="D"), "y": np.asarray(y, dtype=np.float64)}
    return pd.DataFrame({**columns, **{name: x[:, j] for j, name in enumerate(names)}})


def make_prophet(cfg: FitConfig, span_days: int | None = None) -> Any:
    """A new, unfitted stock Prophet of the configuration (seasonalities, calendar regressors), for a history
    of ``span_days`` (first to last day; without yearly seasonality below ``cfg.yearly_min_days``)."""
    from prophet import Prophet

    short = span_days is not None and span_days < cfg.yearly_min_days
    model = Prophet(**{**cfg.prophet, **({"yearly_seasonality": False} if short else {})})
    if cfg.monthly_order:
        model.add_seasonality("monthly", period=MONTHLY_PERIOD, fourier_order=cfg.monthly_order)
    for name in cfg.regressors:
        model.add_regressor(name, standardize=False, prior_scale=cfg.regressor_prior_scale)
    return model


def store_features(sc: StoreCalendar | None, days: np.ndarray, names: tuple[str, ...], level: int = NO_GAP
                   ) -> np.ndarray:
    """The regressors of one store's days, from its calendar and its reopening day ``level`` alone
    (``predictor.special_days``, as the predictor derives them)."""
    from predictor import calendar as cal

    days = np.asarray(days, dtype=np.int64)
    if not names:
        return np.zeros((len(days), 0))
    if sc is None:
        sc = StoreCalendar(0, np.zeros((0, 4), dtype=np.int8), np.ones(7))
    cells, _ = cal.resolve(sc.cells[None], sc.start, sc.open_rate[None], np.zeros(len(days), np.int64), days,
                           holidays=sc.holidays)
    x = special_days.matrix(cells, days, np.full(len(days), level, dtype=np.int64))
    return x[:, [special_days.ALL.index(n) for n in names]]


def to_fitted(y: np.ndarray, transform: str) -> np.ndarray:
    """Sales on the scale the model is fitted on."""
    return np.log1p(y) if transform == "log1p" else np.asarray(y, dtype=np.float64)


def fit_models(series: dict[str, pd.DataFrame], cfg: FitConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Fit every series with the configured fitter; returns (models, errors by store)."""
    models: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if not series:
        return models, errors
    if cfg.fitter == "prophet-batch":
        from prophet_batch import fit_many

        spans = {sid: int((df["ds"].max() - df["ds"].min()).days) for sid, df in series.items()}
        long = pd.concat([df.assign(unique_id=sid) for sid, df in series.items()], ignore_index=True)
        models = fit_many(long, make_model=lambda sid: make_prophet(cfg, spans[sid]), n_jobs=1, on_error="skip")
        errors = {sid: "prophet-batch could not fit this store" for sid in series if sid not in models}
    else:
        for sid, df in series.items():
            try:
                models[sid] = make_prophet(cfg, int((df["ds"].max() - df["ds"].min()).days)).fit(df)
            except Exception as exc:  # a store that cannot be fitted never aborts the job
                errors[sid] = f"{type(exc).__name__}: {exc}"
    return models, errors


def conformal_scores(y_fitted: np.ndarray, yhat: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """How far out of its band each actual is, in band units (<= 1: inside; the split-conformal score)."""
    r = np.asarray(y_fitted) - np.asarray(yhat)
    return np.where(r >= 0, r / np.maximum(upper, 1e-12), r / np.minimum(lower, -1e-12))


def fit_chunk(chunk: list[Series], cfg: FitConfig) -> list[StoreResult]:
    """Evaluate on the holdout, then fit on all data, for each store of the chunk."""
    from pipelines.training.export import UnsupportedModelError, store_row
    from predictor.forecast import fitted_scale, forecast, regressor_matrix

    grid = np.asarray(cfg.grid, dtype=np.int64)
    names = cfg.regressors
    results = {s[0]: StoreResult(s[0]) for s in chunk}
    calendars: dict[str, StoreCalendar | None] = {}
    history: dict[str, dict[str, Any]] = {}  # per store: what its rows need beyond the fit (level, best, x)
    full, holdout, tests = {}, {}, {}
    for item in chunk:
        sid, days, y = item[:3]
        sc = calendars[sid] = item[3] if len(item) > 3 else None
        res = results[sid]
        res.metrics = {"store_id": sid, "open_days": len(days),
                       "first_date": _iso(days[0]) if len(days) else "", "last_date": _iso(days[-1]) if len(days)
                       else ""}
        if len(days) < cfg.min_days:
            res.error = f"too little data: {len(days)} open days (need {cfg.min_days})"
            continue
        if cfg.transform == "log1p" and (np.asarray(y) < 0).any():
            res.error = f"negative sales on {(np.asarray(y) < 0).sum()} days cannot be fitted on log1p"
            continue
        level = special_days.level_day(days)
        x = store_features(sc, days, names, level)
        yf = to_fitted(y, cfg.transform)
        history[sid] = {"level_day": level, "best_day": float(np.max(y)), "days": days, "y": yf, "x": x}
        full[sid] = _frame(days, yf, x, names)
        # after a gap the gate judges the store on its data after it: the holdout fit sees AFTER_GAP of it
        cut = max(days[-1] - cfg.holdout_days, level + AFTER_GAP - 1) if level <= days[-1] else \
            days[-1] - cfg.holdout_days
        train = days <= cut
        if cfg.holdout_days > 0 and train.sum() >= cfg.min_days and (~train).any():
            holdout[sid] = _frame(days[train], yf[train], x[train], names)
            tests[sid] = (days[train], y[train], days[~train], y[~train])

    gate = Gate(cfg.gate_margin)
    eval_grid = grid[: int(np.searchsorted(grid, cfg.holdout_days)) + 1]
    eval_models, _ = fit_models(holdout, cfg)
    for sid, (tr_days, tr_y, te_days, te_y) in tests.items():
        if sid not in eval_models:
            continue
        try:
            row = {**store_row(eval_models[sid], sid, cfg.seed, eval_grid), **_calendar_row(calendars[sid])}
            table = _own_history(row, history[sid], len(tr_days), eval_grid, cfg)
        except UnsupportedModelError as exc:
            results[sid].error = str(exc)
            continue
        at = np.zeros(len(te_days), dtype=np.int64)
        yhat, lo, hi = forecast(table, at, te_days)
        base = seasonal_naive(tr_days, tr_y, te_days)
        model_sums, base_sums = error_sums(te_y, yhat), error_sums(te_y, base)
        covered = float(((te_y >= lo) & (te_y <= hi)).sum())
        f_yhat, f_lo, f_hi = fitted_scale(table, at, te_days)
        # the band is calibrated on ordinary days; rare days keep their own widening (``_own_history``)
        ordinary = special_days.widening(regressor_matrix(table, at, te_days), table.reg_iv[at]) == 1.0
        score = conformal_scores(to_fitted(te_y, cfg.transform), f_yhat, f_lo, f_hi)
        results[sid].sums = {"model": model_sums, "baseline": base_sums,
                             "coverage": {"n": float(len(te_y)), "covered": covered},
                             "scores": score[ordinary].tolist()}
        m, b = scores(model_sums), scores(base_sums)
        results[sid].metrics.update(
            holdout_n=len(te_y), **m, coverage=covered / len(te_y),
            **{f"baseline_{k}": v for k, v in b.items()}, gate=gate(m["wape"], b["wape"]),
        )

    final_models, errors = fit_models(full, cfg)
    for sid, message in errors.items():
        results[sid].error = message
    final = {sid: model for sid, model in final_models.items() if not results[sid].error}
    refused = _serve(final, results, calendars, history, grid, cfg)
    for label, safer in _safer_fits(cfg):  # a store refused by the band gets safer fits, in turn
        if not refused:
            break
        again, _ = fit_models({sid: full[sid] for sid in refused}, safer)
        for sid in refused:
            results[sid].error = None
        still = _serve(again, results, calendars, history, grid, safer)
        for sid in set(again) - set(still):
            results[sid].metrics["fit"] = f"{label}: " + refused[sid]
        for sid in set(refused) - set(again):
            results[sid].error = f"refused by the gate: {refused[sid]}"
        refused = still
    for sid in final:
        failed = (results[sid].error or "").startswith("refused by the gate")
        results[sid].metrics["gate"] = GATE_FAIL if failed else results[sid].metrics.get("gate", "n/a")
    return list(results.values())


def _safer_fits(cfg: FitConfig) -> list[tuple[str, FitConfig]]:
    """The fits a store whose forecast leaves the band gets, in turn: without the yearly (and monthly) shape
    its history cannot pin down; then also with a flat trend, which cannot run away years ahead."""
    shapeless = cfg.replace(prophet={**cfg.prophet, "yearly_seasonality": False}, monthly_order=0)
    return [("without yearly seasonality", shapeless),
            ("with a flat trend and no yearly seasonality", shapeless.replace(prophet={**shapeless.prophet,
                                                                                       "growth": "flat"}))]


def _serve(models: dict[str, Any], results: dict[str, StoreResult], calendars: dict[str, StoreCalendar | None],
           history: dict[str, dict[str, Any]], grid: np.ndarray, cfg: FitConfig) -> dict[str, str]:
    """Each model's served row, or the reason the gate refuses it: a forecast over the whole horizon the
    predictor checks (``predictor.validate.horizon_problem``) that leaves the plausible band."""
    from pipelines.training.export import UnsupportedModelError, prophet_json_gz, store_row
    from predictor.table import ParamTable
    from predictor.validate import horizon_problem

    refused: dict[str, str] = {}
    for sid, model in models.items():
        res = results[sid]
        try:
            row = store_row(model, sid, cfg.seed, grid)
        except UnsupportedModelError as exc:
            res.error = str(exc)
            continue
        known = _own_history({**row, **_calendar_row(calendars[sid])}, history[sid], None, grid, cfg)
        row.update(_calendar_row(calendars[sid], keep_from=row["last_day"] - CAL_HISTORY_DAYS),
                   level_day=history[sid]["level_day"], best_day=history[sid]["best_day"], reg_iv=known.reg_iv[0])
        problem = horizon_problem(ParamTable.from_rows([row], grid, cfg.interval_width, transform=cfg.transform),
                                  band=cfg.band)
        if problem:  # never served: the version keeps the store's previous model, or goes without it
            refused[sid] = problem
            res.error, res.row = f"refused by the gate: {problem}", None
            continue
        res.row, res.model_json_gz = row, prophet_json_gz(model)
    return refused


def _own_history(row: dict[str, Any], own: dict[str, Any], n: int | None, grid: np.ndarray, cfg: FitConfig) -> Any:
    """A one-store table of ``row`` with what its history adds: the reopening day, the best day, and the
    intervals widened on the days its first ``n`` history days (all: None) knew little about."""
    from pipelines.training.intervals import widening_factors
    from predictor.forecast import fitted_scale
    from predictor.table import ParamTable

    row = {**row, "level_day": own["level_day"], "best_day": own["best_day"]}
    table = ParamTable.from_rows([row], grid, cfg.interval_width, transform=cfg.transform)
    if not table.reg_beta.shape[1]:
        return table
    days, y, x = own["days"][:n], own["y"][:n], own["x"][:n]
    yhat, _, _ = fitted_scale(table, np.zeros(len(days), dtype=np.int64), days)
    sigma = float(table.sigma_obs[0] * table.y_scale[0])
    row["reg_iv"] = widening_factors(x, y - yhat, sigma)
    return ParamTable.from_rows([row], grid, cfg.interval_width, transform=cfg.transform)


def _calendar_row(sc: StoreCalendar | None, keep_from: int | None = None) -> dict[str, Any]:
    """The calendar part of a table row (from ``keep_from`` on, if given)."""
    if sc is None:
        return {}
    cells, start = sc.cells, sc.start
    if keep_from is not None and keep_from > start:
        cells, start = cells[keep_from - start:], keep_from
    return {"cal_start": int(start), "calendar": cells, **sc.habits}


def _iso(day: int) -> str:
    return str(np.datetime64(int(day), "D"))
