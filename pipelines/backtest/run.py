"""The rolling-origin backtest, window after window: cut, train and serve, the references, scores, report.

Progress goes to stderr (which window, which step, seconds). Everything lands in ``Config.out``: ``report.md``,
``results.json``, ``<window>.png`` and ``<window>/rows.csv.gz`` (every (store, day) with its actual, each
method's forecast, the served bounds, why a row is not scored and its special-day flags).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest import reference, report, scoring
from pipelines.backtest.served import serve_and_ask
from pipelines.backtest.windows import (
    DEFAULT_DAYS,
    DEFAULT_WINDOWS,
    SPECIAL_DAYS,
    Window,
    cut,
    first_stores,
    special_days,
)
from pipelines.training.fitting import DEFAULT_MODEL, FitConfig

REFERENCE = ("seasonal naive: each day the store's last open-day sales on the same weekday before the cutoff; "
             "global LightGBM (mlforecast 1.1.0, lightgbm 4.7.0): one model for all stores on log1p sales of their "
             "open days; features known ahead: open, promo, state and school holidays, days to the next and since "
             "the last holiday and non-Sunday closure (capped at 15), day of week / month / year, ISO week, month; "
             "store.csv's store type, assortment, competitor distance, competitor open, Promo2 active and Promo2 "
             "month; the store; lags of at least the window's length only: sales 42 and 49 days back, rolling "
             "means of 14, 28 and 91 days and of the same weekday over 4 weeks ending 42 days back, last year's "
             "week (364 days back), a day missing from the data read as the store's median on that weekday; no "
             "window sales; fixed hyper-parameters (600 trees, learning rate 0.05, 63 leaves, subsample 0.8), "
             "seeded.")
WHY = {"trainer": "left out by the trainer", "predictor": "refused by the predictor", "api": "not answered by the API"}


@dataclass
class Config:
    """What a backtest run does."""

    windows: tuple[str, ...] = DEFAULT_WINDOWS
    days: int = DEFAULT_DAYS
    stores: int | None = None  # the first N stores; None: all
    model: str = DEFAULT_MODEL
    overrides: dict[str, Any] = field(default_factory=dict)  # FitConfig fields
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    lightgbm: bool = True
    lightgbm_params: dict[str, Any] = field(default_factory=dict)  # over reference.LGBM_PARAMS
    out: Path = Path("results/backtest")
    keep_versions: bool = False  # keep each window's version folder in out/<window>/version
    ready_timeout: float = 600.0
    data: str = ""
    store_facts: str = ""


class Progress:
    """``[window i/n] step ... (seconds)`` lines on stderr."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.where = ""

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {self.where}{msg}", file=self.stream, flush=True)


class Once(logging.Filter):
    """Lets each distinct message through once per process (Prophet warns per store: a short history is the
    same warning for a thousand stores)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def git_state() -> dict[str, Any]:
    """The checkout's revision and whether tracked files are modified (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": rev, "dirty": bool(dirty)}


def rows_of(sales: pd.DataFrame, window: Window, c: Any, served: Any, naive: np.ndarray,
            lightgbm: np.ndarray | None) -> pd.DataFrame:
    """The window's rows frame (``pipelines.backtest.scoring``)."""
    rows = c.actual.copy()
    best = c.history.groupby("Store")["Sales"].max()
    rows["best_day"] = rows["Store"].map(best).to_numpy(np.float64)
    ans = served.answers.rename(columns={"value": "served", "lower": "served_lower", "upper": "served_upper",
                                         "open": "served_open"})
    rows = rows.merge(ans, on=["Store", "Date"], how="left")
    failed = {f["store_id"]: f["reason"] for f in served.result.failed}
    version = set(served.stores)
    why = np.full(len(rows), "", dtype=object)
    store = rows["Store"].to_numpy()
    for i, s in enumerate(store):
        if s in served.refused:
            why[i] = WHY["predictor"]
        elif s not in version:
            why[i] = f"{WHY['trainer']} ({failed[s].split(':')[0]})" if s in failed else "no sales before the cutoff"
        elif s in served.failed:
            why[i] = WHY["api"]
    why[(why == "") & ~np.isfinite(rows["served"].to_numpy(np.float64))] = WHY["api"]
    rows["why"] = why
    rows["naive"] = naive
    if lightgbm is not None:
        rows["lightgbm"] = lightgbm
    flags = special_days(sales, window)
    rows = rows.merge(flags, on=["Store", "Date"], how="left")
    rows[list(SPECIAL_DAYS)] = rows[list(SPECIAL_DAYS)].fillna(False).astype(bool)
    return rows


def run_window(sales: pd.DataFrame, facts: pd.DataFrame | None, window: Window, config: Config,
               say: Progress) -> dict[str, Any]:
    """One window end to end; returns its figures (the plot and the rows file written)."""
    c = cut(sales, window)
    cfg = FitConfig.preset(config.model, **config.overrides)
    folder_dir = config.out / window.name
    folder_dir.mkdir(parents=True, exist_ok=True)
    tmp = None if config.keep_versions else tempfile.TemporaryDirectory(prefix="storecast-backtest-")
    work = folder_dir if tmp is None else Path(tmp.name)  # the version and the servers' logs
    seconds: dict[str, float] = {}
    try:
        say(f"training {c.history['Store'].nunique()} stores on {len(c.history):,} rows before {window.name}")
        served = serve_and_ask(c, cfg, work / "version", config.workers, work / "logs", config.ready_timeout, say)
    finally:
        if tmp is not None:
            tmp.cleanup()
    seconds.update(served.seconds)
    t0 = time.perf_counter()
    naive = reference.seasonal_naive_rows(c)
    lightgbm = None
    if config.lightgbm:
        say("LightGBM reference (mlforecast)")
        lightgbm = reference.lightgbm_rows(c, facts, config.workers, config.lightgbm_params)
        seconds["lightgbm"] = time.perf_counter() - t0
        say(f"LightGBM done in {seconds['lightgbm']:.1f} s")
    rows = rows_of(sales, window, c, served, naive, lightgbm)
    scores = scoring.score_window(rows, cfg.gate_margin)
    daily = scores.pop("daily")
    rows.astype({k: np.int8 for k in SPECIAL_DAYS}).drop(columns=["best_day"]).to_csv(
        folder_dir / "rows.csv.gz", index=False, date_format="%Y-%m-%d", float_format="%.2f")
    plot = report.plot_window(daily, config.out / f"{window.name}.png",
                              f"{window.name} .. {window.end}: {scores['stores_scored']} stores, daily totals")
    result = served.result
    out = {"window": window.name, "end": str(window.end), "cutoff": str(window.cutoff), "days": window.days,
           "plot": plot.name, "rows_file": f"{window.name}/rows.csv.gz", **scores,
           "trainer": {"stores": len(result.table), "failed": result.failed, "gate_failed": result.gate_failed,
                       "summary": result.summary, "data_end": result.data_end},
           "served": {"version": served.version, "stores": len(served.stores), "refused": served.refused,
                      "not_answered": served.failed},
           "daily": [{"date": str(d.date()), **r} for d, r in daily.to_dict("index").items()],
           "seconds": seconds}
    m = scores["methods"]
    say("scored: served WAPE {:.2%} coverage {:.1%}{}; naive WAPE {:.2%}; {} stores failing".format(
        m["served"]["wape"], m["served"]["coverage"],
        f"; LightGBM WAPE {m['lightgbm']['wape']:.2%}" if "lightgbm" in m else "", m["naive"]["wape"],
        scores.get("stores_failing")))
    return out


def run(sales: pd.DataFrame, facts: pd.DataFrame | None, config: Config,
        say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every window of ``config``; writes the report, the JSON and the plots into ``config.out``."""
    progress = say if isinstance(say, Progress) else Progress()
    once = Once()
    logging.getLogger("prophet").addFilter(once)  # the fits' worker processes are forked with it
    try:
        return _run(sales, facts, config, progress)
    finally:
        logging.getLogger("prophet").removeFilter(once)


def _run(sales: pd.DataFrame, facts: pd.DataFrame | None, config: Config, progress: Progress) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    windows = [Window.parse(w, config.days) for w in config.windows]
    sales = first_stores(sales, config.stores)
    for w in windows:  # every window must lie in the data before any work
        _check(sales, w)
    config.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": {**{k: (str(v) if isinstance(v, Path) else v)
                                             for k, v in asdict(config).items()}, "windows": list(config.windows)},
                               "git": git_state(), "reference": REFERENCE if config.lightgbm else
                               REFERENCE.split("; global")[0] + " (LightGBM off: --no-lightgbm)",
                               "windows": []}
    if config.lightgbm:
        results["config"]["lightgbm_params"] = {**reference.LGBM_PARAMS, **config.lightgbm_params,
                                                "n_jobs": config.workers}
    for i, w in enumerate(windows, 1):
        progress.where = f"[window {w.name} {i}/{len(windows)}] "
        t1 = time.perf_counter()
        entry = run_window(sales, facts, w, config, progress)
        entry["seconds"]["total"] = time.perf_counter() - t1
        entry["load_average"] = list(os.getloadavg())
        results["windows"].append(entry)
        _write(config.out, results, t0, load_start)
    progress.where = ""
    _write(config.out, results, t0, load_start)
    progress(f"wrote {config.out / 'report.md'} and {config.out / 'results.json'} in "
             f"{(time.perf_counter() - t0) / 60:.1f} min")
    return results


def _check(sales: pd.DataFrame, window: Window) -> None:
    day = sales["Date"].to_numpy().astype("datetime64[D]")
    if window.start <= day.min() or window.end > day.max():
        raise ValueError(f"window {window.name} .. {window.end} does not lie in the data ({day.min()} .. {day.max()},"
                         " with at least one day before it)")


def _write(out: Path, results: dict[str, Any], t0: float, load_start: list[float]) -> None:
    """The report and the JSON as they stand (rewritten after each window: a long run can be read as it goes)."""
    results["wall_seconds"] = time.perf_counter() - t0
    results["load_average"] = {"start": load_start, "end": list(os.getloadavg()), "cpus": os.cpu_count()}
    clean = report.clean(results)
    report.write_json(out, clean)
    report.write_report(out, clean)
