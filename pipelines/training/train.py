"""Train every store in parallel and assemble one fleet snapshot (table, stock models, metrics)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data.calendar import Grid, StoreCalendar, split_future, store_calendars
from pipelines.data.public_holidays import default_calendar
from pipelines.data.sales_csv import open_days
from pipelines.training.evaluate import GATE_FAIL, pooled, scores
from pipelines.training.fitting import FitConfig, Series, StoreResult, fit_chunk, quiet
from predictor.table import ParamTable
from serving.contract import store_sort_key


@dataclass
class TrainResult:
    """One training job's output, ready to register."""

    table: ParamTable
    results: list[StoreResult]
    metrics: pd.DataFrame
    summary: dict[str, Any]
    data_end: str
    config: FitConfig
    seconds: dict[str, float] = field(default_factory=dict)
    history_end: dict[str, int] = field(default_factory=dict)  # per store: its last day with a sales figure

    @property
    def failed(self) -> list[dict[str, str]]:
        """Stores left out of the version, with the reason."""
        return [{"store_id": r.store_id, "reason": r.error} for r in self.results if r.error]

    @property
    def gate_failed(self) -> list[str]:
        return [r.store_id for r in self.results if not r.error and r.metrics.get("gate") == GATE_FAIL]


def to_series(sales: pd.DataFrame, calendars: dict[str, StoreCalendar] | None = None) -> list[Series]:
    """Per-store (id, days, y[, calendar]) of the open days with a sales figure, in natural store order."""
    od = open_days(sales)
    od = od[np.isfinite(od["y"].to_numpy())]
    sid = od["store_id"].to_numpy(dtype=str)
    days = od["ds"].to_numpy().astype("datetime64[D]").astype(np.int64)
    y = od["y"].to_numpy(dtype=np.float64)
    order = np.lexsort((days, sid))
    sid, days, y = sid[order], days[order], y[order]
    cuts = np.flatnonzero(sid[1:] != sid[:-1]) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(sid)], strict=True)
    calendars = calendars or {}
    series = [(str(sid[a]), days[a:b], y[a:b], calendars.get(str(sid[a]))) for a, b in bounds if b > a]
    return sorted(series, key=lambda s: store_sort_key(s[0]))


def select(sales: pd.DataFrame, stores: list[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """Rows of the chosen stores (``stores`` ids, else the first ``limit`` in natural order)."""
    ids = pd.unique(sales["Store"])
    if stores:
        missing = sorted(set(stores) - set(ids))
        if missing:
            raise ValueError(f"stores not in the data: {', '.join(missing)}")
        ids = np.array(stores)
    elif limit:
        ids = np.array(sorted(map(str, ids), key=store_sort_key)[:limit])
    return sales[sales["Store"].isin(ids)]


def chunked(series: list[Series], workers: int, most: int = 50) -> list[list[Series]]:
    """Chunks small enough that every worker gets several (progress, balance), at most ``most`` stores.

    Stores with the same open days go together: prophet-batch then builds their features once.
    """
    series = sorted(series, key=lambda s: (len(s[1]), hashlib.blake2b(s[1].tobytes(), digest_size=8).digest()))
    size = max(1, min(most, -(-len(series) // max(1, workers * 4))))
    return [series[i: i + size] for i in range(0, len(series), size)]


BACKENDS = ("local", "ray")  # where the fits run: a local process pool, or Ray tasks


def run_chunks(chunks: list[list[Series]], cfg: FitConfig, workers: int, progress: bool,
               while_fitting: Callable[[], None] | None = None, start_method: str | None = None,
               backend: str = "local", ray_address: str | None = None) -> list[StoreResult]:
    """Fit the chunks on ``workers`` processes with a progress bar on stderr.

    ``while_fitting`` runs in a thread of this process once the workers exist (never before a fork).
    ``start_method``: multiprocessing's (default fork where there is one; a threaded server passes spawn).
    ``backend`` "ray": the same fits as Ray tasks (``pipelines.training.ray_backend``; ``ray_address`` None
    starts a local Ray with ``workers`` CPUs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "ray":
        from pipelines.training.ray_backend import fit_on_ray

        return fit_on_ray(chunks, cfg, workers, address=ray_address, progress=progress, while_fitting=while_fitting)
    from tqdm import tqdm

    total = sum(len(c) for c in chunks)
    bar = tqdm(total=total, unit="store", desc="fit", disable=not progress, file=sys.stderr)
    results: list[StoreResult] = []
    try:
        if workers <= 1 or len(chunks) <= 1:
            quiet(single_thread=False)
            if while_fitting is not None:
                while_fitting()
            for chunk in chunks:
                results += fit_chunk(chunk, cfg)
                bar.update(len(chunk))
        else:
            method = start_method or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                     initializer=quiet, initargs=(True,)) as pool:
                futures = {pool.submit(fit_chunk, chunk, cfg): len(chunk) for chunk in chunks}
                if while_fitting is not None:
                    threading.Thread(target=while_fitting, daemon=True).start()
                for fut in as_completed(futures):
                    results += fut.result()
                    bar.update(futures[fut])
    finally:
        bar.close()
    return results


def calibration(results: list[StoreResult], level: float) -> float:
    """The split-conformal factor on the interval offsets: the ``level`` quantile of the holdout scores."""
    s = np.concatenate([np.asarray(r.sums["scores"]) for r in results if not r.error and r.sums.get("scores")]
                       or [np.zeros(0)])
    s = s[np.isfinite(s)]
    if len(s) < 20:
        return 1.0
    q = min(1.0, level * (1 + 1 / len(s)))
    return float(max(np.quantile(s, q, method="higher"), 1e-6))


def _crossfit_coverage(results: list[StoreResult], level: float) -> float:
    """Coverage of calibrated intervals with the factor from the other half of the stores (out of sample)."""
    halves = [[], []]
    for r in results:
        if not r.error and r.sums.get("scores"):
            halves[zlib.crc32(r.store_id.encode()) % 2].append(r)
    covered = n = 0.0
    for a, b in ((0, 1), (1, 0)):
        factor = calibration(halves[a], level)
        s = np.concatenate([np.asarray(r.sums["scores"]) for r in halves[b]] or [np.zeros(0)])
        covered += float((s <= factor).sum())
        n += len(s)
    return covered / n if n else float("nan")


def summarize(results: list[StoreResult], level: float = 0.95, factor: float = 1.0) -> dict[str, Any]:
    """Job-level metrics: pooled holdout errors of the model and the baseline, coverage, gate counts."""
    evaluated = [r for r in results if not r.error and r.sums]
    model = scores(pooled([r.sums["model"] for r in evaluated])) if evaluated else {}
    base = scores(pooled([r.sums["baseline"] for r in evaluated])) if evaluated else {}
    n = sum(r.sums["coverage"]["n"] for r in evaluated)
    covered = sum(r.sums["coverage"]["covered"] for r in evaluated)
    s = np.concatenate([np.asarray(r.sums.get("scores", [])) for r in evaluated] or [np.zeros(0)])
    ok = [r for r in results if not r.error]
    return {
        "stores": len(ok),
        "stores_skipped": len(results) - len(ok),
        "stores_evaluated": len(evaluated),
        "gate_failed": sum(r.metrics.get("gate") == GATE_FAIL for r in ok),
        **{f"holdout_{k}": v for k, v in model.items()},
        **{f"baseline_{k}": v for k, v in base.items()},
        "holdout_coverage": covered / n if n else float("nan"),
        "holdout_coverage_calibrated": float((s <= factor).mean()) if len(s) else float("nan"),
        "holdout_coverage_crossfit": _crossfit_coverage(evaluated, level) if len(s) else float("nan"),
        "interval_calibration": factor,
        "mean_store_wape": float(np.nanmean([r.metrics["wape"] for r in evaluated])) if evaluated else float("nan"),
        "median_store_mape": float(np.nanmedian([r.metrics["mape"] for r in evaluated])) if evaluated
        else float("nan"),
    }


def train(sales: pd.DataFrame, cfg: FitConfig, *, stores: list[str] | None = None, limit: int | None = None,
          workers: int | None = None, progress: bool = True,
          while_fitting: Callable[[], None] | None = None, start_method: str | None = None,
          calendar: pd.DataFrame | None = None, calibration_factor: float | None = None,
          backend: str = "local", ray_address: str | None = None, known: dict[str, Grid] | None = None) -> TrainResult:
    """Fit, evaluate and assemble every chosen store; stores that cannot be fitted are reported, not fatal.

    ``calendar``: known-ahead days (``pipelines.data.calendar.read_calendar``); future rows of ``sales``
    without a sales figure count the same (the file wins where both give a day). ``known``: each store's
    calendar in the version this one derives from (its known-ahead days stay; ``pipelines.data.calendar.lay``).
    ``calibration_factor``: use this interval calibration instead of the job's own (a retrain of a few
    stores keeps its parent's: a handful of holdouts is too few to calibrate on).
    A store whose rows carry no sales figure at all is listed as failed, never left out silently.
    """
    t0 = time.perf_counter()
    sales = select(sales, stores, limit)
    history, future = split_future(sales)
    if history.empty or not history["Sales"].notna().any():
        raise ValueError("no sales rows to train on")
    if calendar is not None and len(calendar):
        calendar = calendar[calendar["Store"].isin(pd.unique(history["Store"]))]
    history_days = history["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    holidays = default_calendar(int(history_days.min()), int(history_days.max()))
    calendars = store_calendars(history, future, calendar, known, holidays)
    series = to_series(history, calendars)
    have = {s[0] for s in series}
    workers = workers or os.cpu_count() or 1
    results = run_chunks(chunked(series, workers), cfg, workers, progress, while_fitting, start_method,
                         backend, ray_address)
    # stores with no open day at all never became a series: report them too
    for sid in sorted(set(history["Store"]) - have):
        results.append(StoreResult(sid, error="too little data: 0 open days", metrics={"store_id": sid}))
    for sid in sorted(set(sales["Store"]) - set(history["Store"])):
        results.append(StoreResult(sid, error="no sales figures: every row of the store has an empty Sales",
                                   metrics={"store_id": sid}))
    results.sort(key=lambda r: store_sort_key(r.store_id))
    figures = history[history["Sales"].notna()]
    ends = figures.groupby("Store")["Date"].max()
    history_end = dict(zip(ends.index.astype(str), ends.to_numpy().astype("datetime64[D]").astype(np.int64).tolist(),
                           strict=True))
    t_fit = time.perf_counter() - t0
    data_end = str(history.loc[history["Sales"].notna(), "Date"].max().date())
    factor = calibration_factor if calibration_factor is not None else (
        calibration(results, cfg.interval_width) if cfg.calibrate else 1.0)
    cal_end = max((c.start + len(c.cells) - 1 for c in calendars.values()), default=None)
    meta = {"data_end": data_end, "fitter": cfg.fitter, "seed": cfg.seed, "holdout_days": cfg.holdout_days,
            "prophet": cfg.prophet, "fit_config": cfg.to_dict(), "interval_calibration": factor,
            "calendar_end": _iso(cal_end) if cal_end is not None else data_end}
    rows = [{**r.row, "iv_scale": factor} for r in results if r.row is not None and not r.error]
    table = ParamTable.from_rows(rows, np.asarray(cfg.grid), cfg.interval_width, meta, cfg.transform, holidays)
    metrics = pd.DataFrame([{**r.metrics, "error": r.error or ""} for r in results])
    return TrainResult(table=table, results=results, metrics=metrics,
                       summary=summarize(results, cfg.interval_width, factor),
                       data_end=data_end, config=cfg, seconds={"fit": t_fit}, history_end=history_end)


def _iso(day: int) -> str:
    return str(np.datetime64(int(day), "D"))
