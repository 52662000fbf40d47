"""Training benchmark on the real Rossmann data: the whole pipeline vs stock Prophet run serially.

Prints, from one run: the end-to-end wall time of ``storecast train`` for every store (holdout fit,
final fit, evaluation, register into a fresh sqlite store), and a stock-Prophet serial baseline
(holdout fit + holdout predict + final fit per store, on a random sample, extrapolated to all stores;
the baseline leaves out registration, which only flatters it).

    python bench/train.py [--sample 30] [--data FILE]
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

from pipelines.data import open_days, read_sales, shared_rossmann  # noqa: E402
from pipelines.fitting import PROPHET_DEFAULTS  # noqa: E402


def pipeline(data: Path) -> dict:
    """``storecast train --json`` into a fresh sqlite store; returns its JSON plus the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "storecast"), "train", "--data", str(data),
                               "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--json", "--no-progress"],
                              capture_output=True, text=True, cwd=tmp, check=True)
        wall = time.perf_counter() - t0
    return {**json.loads(proc.stdout), "wall": wall}


def stock_serial(sales: pd.DataFrame, stores: list[str], holdout_days: int) -> float:
    """Seconds for stock Prophet to fit, evaluate and refit ``stores`` one after another."""
    from prophet import Prophet

    logging.getLogger("cmdstanpy").disabled = True
    od = open_days(sales[sales["Store"].isin(stores)])
    t0 = time.perf_counter()
    for sid in stores:
        df = od[od["store_id"] == sid][["ds", "y"]]
        cut = df["ds"].max() - pd.Timedelta(days=holdout_days)
        m = Prophet(**PROPHET_DEFAULTS).fit(df[df["ds"] <= cut])
        m.predict(df[df["ds"] > cut][["ds"]])
        Prophet(**PROPHET_DEFAULTS).fit(df)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_rossmann())
    p.add_argument("--sample", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.data is None:
        sys.exit("no data: pass --data or put the Rossmann files in ../shared/data/rossmann")
    sales = read_sales(args.data)
    ids = sorted(sales["Store"].unique(), key=lambda s: (len(s), s))
    sample = list(np.random.default_rng(args.seed).choice(ids, size=min(args.sample, len(ids)), replace=False))

    out = pipeline(args.data)
    base = stock_serial(sales, sample, 42) / len(sample) * len(ids)
    m = out["metrics"]
    print(f"| training, {len(ids)} stores | value |")
    print("|---|---:|")
    print(f"| storecast train end to end (wall, incl. process start) | {out['wall']:.1f} s |")
    print(f"| of which fit+evaluate / register | {out['seconds']['fit']:.1f} s / {out['seconds']['register']:.1f} s |")
    print(f"| stock Prophet serial ({len(sample)}-store sample, extrapolated) | {base:.1f} s |")
    print(f"| speed-up | {base / out['wall']:.1f}x |")
    print(f"| stores registered / skipped / gate failed | {out['stores']} / {len(out['failed'])} / "
          f"{m['gate_failed']} |")
    print(f"| holdout WAPE model / seasonal naive | {m['holdout_wape']:.4f} / {m['baseline_wape']:.4f} |")
    print(f"| holdout interval coverage (95%) | {m['holdout_coverage']:.3f} |")
    print(f"RESULT | training {len(ids)} stores end to end (holdout fit, final fit, register) | {out['wall']:.1f} s | "
          f"stock Prophet serial (sample of {len(sample)}, extrapolated) {base:.0f} s | {base / out['wall']:.1f}x |")


if __name__ == "__main__":
    main()
