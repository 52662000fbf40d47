"""Training benchmark on the real Rossmann data: the whole pipeline vs stock Prophet run serially.

Prints, from one run: the end-to-end wall time of ``storecast train`` for every store (holdout fit,
final fit, evaluation, register into a fresh sqlite store) with the calendar model (and the calendar
file ``test.csv.gz`` beside the data), the same with the seed configuration (the reference without the
calendar: what the regressors cost) and with ``calendar-basic`` (the model before the special days: what
they cost), the holdout quality of both (WAPE, median store MAPE, RMSPE,
95 % interval coverage before and after calibration, stores failing the gate), and a stock-Prophet
serial baseline of the seed configuration (holdout fit + holdout predict + final fit per store, on a
random sample, extrapolated to all stores; it leaves out registration, which only flatters it).

    python bench/train.py [--sample 30] [--data FILE] [--calendar FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.data.calendar import read_calendar  # noqa: E402
from pipelines.data.sales_csv import read_sales  # noqa: E402
from pipelines.training.fitting import FitConfig  # noqa: E402
from tests.support import shared_rossmann  # noqa: E402


def pipeline(data: Path, *extra: str) -> dict:
    """``storecast train --json`` into a fresh sqlite store; returns its JSON plus the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "storecast"), "train", "--data", str(data),
                               "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--json", "--no-progress", *extra],
                              capture_output=True, text=True, cwd=tmp, check=True)
        wall = time.perf_counter() - t0
    return {**json.loads(proc.stdout), "wall": wall}


def stock_serial(sales: pd.DataFrame, stores: list[str], cfg: FitConfig, calendar: pd.DataFrame | None) -> float:
    """Seconds for stock Prophet (Stan) to fit, evaluate and refit ``stores`` one after another, same model."""
    from pipelines.data.calendar import split_future, store_calendars
    from pipelines.training.fitting import make_prophet, store_features, to_fitted
    from pipelines.training.train import to_series

    logging.getLogger("cmdstanpy").disabled = True
    part = sales[sales["Store"].isin(stores)]
    history, future = split_future(part)
    if calendar is not None:
        future = pd.concat([future, calendar[calendar["Store"].isin(stores)]], ignore_index=True)
    series = to_series(history, store_calendars(history, future))
    t0 = time.perf_counter()
    for _sid, days, y, sc in series:
        x = store_features(sc, days, cfg.regressors)
        df = pd.DataFrame({"ds": pd.to_datetime(days, unit="D"), "y": to_fitted(y, cfg.transform),
                           **{n: x[:, j] for j, n in enumerate(cfg.regressors)}})
        cut = df["ds"].max() - pd.Timedelta(days=cfg.holdout_days)
        m = make_prophet(cfg).fit(df[df["ds"] <= cut])
        m.predict(df[df["ds"] > cut].drop(columns="y"))
        make_prophet(cfg).fit(df)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_rossmann())
    p.add_argument("--sample", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calendar", type=Path, help="the known-ahead calendar (default: test.csv.gz beside --data)")
    args = p.parse_args()
    if args.data is None:
        sys.exit("no data: pass --data or put the Rossmann files in ../shared/data/rossmann")
    sales = read_sales(args.data)
    ids = sorted(sales["Store"].unique(), key=lambda s: (len(s), s))
    sample = list(np.random.default_rng(args.seed).choice(ids, size=min(args.sample, len(ids)), replace=False))

    calendar = args.calendar or (args.data.parent / "test.csv.gz")
    out = pipeline(args.data, *(["--calendar", str(calendar)] if calendar.exists() else []))
    seed = pipeline(args.data, "--model", "seed")
    basic = pipeline(args.data, "--model", "calendar-basic",
                     *(["--calendar", str(calendar)] if calendar.exists() else []))
    cal_frame = read_calendar(calendar) if calendar.exists() else None
    base = stock_serial(sales, sample, FitConfig.preset("calendar"), cal_frame) / len(sample) * len(ids)
    base_seed = stock_serial(sales, sample, FitConfig.preset("seed"), None) / len(sample) * len(ids)
    m, s = out["metrics"], seed["metrics"]
    print(f"| training, {len(ids)} stores | calendar model | seed configuration |")
    print("|---|---:|---:|")
    print(f"| storecast train end to end (wall, incl. process start) | {out['wall']:.1f} s | {seed['wall']:.1f} s |")
    print(f"| of which fit+evaluate / register | {out['seconds']['fit']:.1f} s / {out['seconds']['register']:.1f} s "
          f"| {seed['seconds']['fit']:.1f} s / {seed['seconds']['register']:.1f} s |")
    print(f"| stores registered / skipped / gate failed | {out['stores']} / {len(out['failed'])} / "
          f"{m['gate_failed']} | {seed['stores']} / {len(seed['failed'])} / {s['gate_failed']} |")
    for key, label in (("holdout_wape", "holdout WAPE"), ("median_store_mape", "median store MAPE"),
                       ("holdout_rmspe", "holdout RMSPE"), ("holdout_coverage", "95% interval coverage, simulated"),
                       ("holdout_coverage_crossfit", "95% interval coverage, calibrated (cross-fitted)"),
                       ("interval_calibration", "interval calibration factor")):
        print(f"| {label} | {m[key]:.4f} | {s[key]:.4f} |")
    print(f"| seasonal-naive WAPE | {m['baseline_wape']:.4f} | |")
    print(f"| stock Prophet serial, same model ({len(sample)}-store sample, extrapolated) | {base:.1f} s | "
          f"{base_seed:.1f} s |")
    print(f"| speed-up against it | {base / out['wall']:.1f}x | {base_seed / seed['wall']:.1f}x |")
    print(f"| what the calendar regressors cost | {out['wall'] / seed['wall']:.2f}x the seed configuration's time | |")
    b = basic["metrics"]
    print(f"| the calendar model before the special days (`--model calendar-basic`) | {basic['wall']:.1f} s, "
          f"holdout WAPE {b['holdout_wape']:.4f} | |")
    print(f"| what the special days cost | {out['wall'] / basic['wall']:.2f}x its time (goal <= 2x) | |")
    print(f"RESULT | training {len(ids)} stores end to end, calendar model (holdout fit, final fit, register) | "
          f"{out['wall']:.1f} s | stock Prophet serial, same model (sample of {len(sample)}, extrapolated) "
          f"{base:.0f} s | "
          f"{base / out['wall']:.1f}x |")
    print(f"RESULT | holdout WAPE / median MAPE / RMSPE, calendar model ({m['gate_failed']} stores fail the gate) | "
          f"{m['holdout_wape']:.2%} / {m['median_store_mape']:.2%} / {m['holdout_rmspe']:.2%} | "
          f"seed configuration {s['holdout_wape']:.2%} / {s['median_store_mape']:.2%} / {s['holdout_rmspe']:.2%} "
          f"({s['gate_failed']} fail) | goal WAPE <= 9.5% |")
    print(f"RESULT | 95% interval coverage on the holdout, calibrated (cross-fitted) | "
          f"{m['holdout_coverage_crossfit']:.1%} | simulated only {m['holdout_coverage']:.1%} | goal 93-97% |")

if __name__ == "__main__":
    main()
