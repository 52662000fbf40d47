"""Train every store in parallel and assemble one fleet snapshot (table, stock models, metrics)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data import open_days, weekday_open_rate
from pipelines.evaluate import GATE_FAIL, pooled, scores
from pipelines.fitting import FitConfig, Series, StoreResult, fit_chunk, quiet
from predictor.table import ParamTable


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

    @property
    def failed(self) -> list[dict[str, str]]:
        """Stores left out of the version, with the reason."""
        return [{"store_id": r.store_id, "reason": r.error} for r in self.results if r.error]

    @property
    def gate_failed(self) -> list[str]:
        return [r.store_id for r in self.results if not r.error and r.metrics.get("gate") == GATE_FAIL]


def to_series(sales: pd.DataFrame) -> list[Series]:
    """Per-store (id, days, y) arrays of the open days, in natural store order."""
    od = open_days(sales)
    sid = od["store_id"].to_numpy(dtype=str)
    days = od["ds"].to_numpy().astype("datetime64[D]").astype(np.int64)
    y = od["y"].to_numpy(dtype=np.float64)
    order = np.lexsort((days, sid))
    sid, days, y = sid[order], days[order], y[order]
    cuts = np.flatnonzero(sid[1:] != sid[:-1]) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(sid)], strict=True)
    series = [(str(sid[a]), days[a:b], y[a:b]) for a, b in bounds if b > a]
    return sorted(series, key=lambda s: (0, int(s[0])) if s[0].isdigit() else (1, s[0]))


def select(sales: pd.DataFrame, stores: list[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """Rows of the chosen stores (``stores`` ids, else the first ``limit`` in natural order)."""
    ids = pd.unique(sales["Store"])
    if stores:
        missing = sorted(set(stores) - set(ids))
        if missing:
            raise ValueError(f"stores not in the data: {', '.join(missing)}")
        ids = np.array(stores)
    elif limit:
        ids = np.array(sorted(ids, key=lambda s: (0, int(s)) if s.isdigit() else (1, s))[:limit])
    return sales[sales["Store"].isin(ids)]


def chunked(series: list[Series], workers: int, most: int = 50) -> list[list[Series]]:
    """Chunks small enough that every worker gets several (progress, balance), at most ``most`` stores.

    Stores with the same open days go together: prophet-batch then builds their features once.
    """
    series = sorted(series, key=lambda s: (len(s[1]), hashlib.blake2b(s[1].tobytes(), digest_size=8).digest()))
    size = max(1, min(most, -(-len(series) // max(1, workers * 4))))
    return [series[i: i + size] for i in range(0, len(series), size)]


def run_chunks(chunks: list[list[Series]], cfg: FitConfig, workers: int, progress: bool,
               while_fitting: Callable[[], None] | None = None, start_method: str | None = None) -> list[StoreResult]:
    """Fit the chunks on ``workers`` processes with a progress bar on stderr.

    ``while_fitting`` runs in a thread of this process once the workers exist (never before a fork).
    ``start_method``: multiprocessing's (default fork where there is one; a threaded server passes spawn).
    """
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


def summarize(results: list[StoreResult]) -> dict[str, Any]:
    """Job-level metrics: pooled holdout errors of the model and the baseline, coverage, gate counts."""
    evaluated = [r for r in results if not r.error and r.sums]
    model = scores(pooled([r.sums["model"] for r in evaluated])) if evaluated else {}
    base = scores(pooled([r.sums["baseline"] for r in evaluated])) if evaluated else {}
    n = sum(r.sums["coverage"]["n"] for r in evaluated)
    covered = sum(r.sums["coverage"]["covered"] for r in evaluated)
    ok = [r for r in results if not r.error]
    return {
        "stores": len(ok),
        "stores_skipped": len(results) - len(ok),
        "stores_evaluated": len(evaluated),
        "gate_failed": sum(r.metrics.get("gate") == GATE_FAIL for r in ok),
        **{f"holdout_{k}": v for k, v in model.items()},
        **{f"baseline_{k}": v for k, v in base.items()},
        "holdout_coverage": covered / n if n else float("nan"),
        "mean_store_wape": float(np.nanmean([r.metrics["wape"] for r in evaluated])) if evaluated else float("nan"),
    }


def train(sales: pd.DataFrame, cfg: FitConfig, *, stores: list[str] | None = None, limit: int | None = None,
          workers: int | None = None, progress: bool = True,
          while_fitting: Callable[[], None] | None = None, start_method: str | None = None) -> TrainResult:
    """Fit, evaluate and assemble every chosen store; stores that cannot be fitted are reported, not fatal."""
    t0 = time.perf_counter()
    sales = select(sales, stores, limit)
    if sales.empty:
        raise ValueError("no sales rows to train on")
    series = to_series(sales)
    known = {s[0] for s in series}
    workers = workers or os.cpu_count() or 1
    results = run_chunks(chunked(series, workers), cfg, workers, progress, while_fitting, start_method)
    # stores with no open day at all never became a series: report them too
    for sid in sorted(set(sales["Store"]) - known):
        results.append(StoreResult(sid, error="too little data: 0 open days", metrics={"store_id": sid}))
    results.sort(key=lambda r: (0, int(r.store_id)) if r.store_id.isdigit() else (1, r.store_id))
    t_fit = time.perf_counter() - t0
    data_end = str(sales["Date"].max().date())
    meta = {"data_end": data_end, "fitter": cfg.fitter, "seed": cfg.seed, "holdout_days": cfg.holdout_days,
            "prophet": cfg.prophet}
    open_rate = weekday_open_rate(sales)
    rows = [{**r.row, "open_rate": open_rate[r.store_id]} for r in results if r.row is not None and not r.error]
    table = ParamTable.from_rows(rows, np.asarray(cfg.grid), cfg.prophet.get("interval_width", 0.8), meta)
    metrics = pd.DataFrame([{**r.metrics, "error": r.error or ""} for r in results])
    return TrainResult(table=table, results=results, metrics=metrics, summary=summarize(results),
                       data_end=data_end, config=cfg, seconds={"fit": t_fit})
