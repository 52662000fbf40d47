"""Do ``store.csv``'s time-varying facts help the per-store Prophet model? (issue 26, item 5: a measurement)

Rossmann's ``store.csv`` gives, per store, a continuing promotion (Promo2, since Promo2SinceYear /
Promo2SinceWeek, renewed in the months PromoInterval names) and a competitor's opening
(CompetitionOpenSinceYear / Month, CompetitionDistance). Both are known ahead. This experiment fits the
project's model (``make_prophet(FitConfig.preset("calendar"))`` on ``log1p`` sales of open days, the
calendar regressors of ``store_features``, the project's batched fitter) with and without them as extra
known-ahead regressors:

- ``promo2_month``: the store takes part in Promo2 (from the Monday of its start week) and the day's month is
  one of its PromoInterval months;
- ``promo2_first_days``: the first ``FIRST_DAYS`` days of such a month;
- ``promo2_active``: the store takes part in Promo2 (a step at its start);
- ``competition_open``: a competitor has opened (a step on the first day of the opening month; 0 before, and
  0 when store.csv gives no date). Scaling the step by a per-store constant (1 / log distance) only rescales
  its coefficient in a per-store model (its prior aside), so the plain step is measured.

Stores: every store where a fact changes inside 2013-01-01..2015-07-31 (a competitor opened, Promo2 started)
is a candidate; a seeded sample of them plus a seeded sample of the others. Windows: train on everything before
the start, score the 42 days from each start on open days with Sales > 0. The calendar of a window is its
history plus the window's rows without sales (known ahead), as ``storecast train --calendar`` sees it.

Reported, per window and pooled: WAPE and RMSPE of each variant, on all sampled stores and on the stores a fact
concerns (competitor opened during the training span, or in its last ``RECENT`` days where the trend cannot have
absorbed it; the same for Promo2's start; in Promo2 before the window; no fact changing in training), the paired
change against the base model with a store-bootstrap 95 % interval, and the share of stores improved.

    python bench/store_facts.py [--affected 150] [--others 50] [--seed 0] [--workers 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.data.calendar import store_calendars  # noqa: E402
from pipelines.data.sales_csv import read_sales  # noqa: E402
from pipelines.training.evaluate import error_sums, pooled, scores  # noqa: E402
from pipelines.training.fitting import FitConfig, make_prophet, quiet, store_features, to_fitted  # noqa: E402
from pipelines.training.train import to_series  # noqa: E402
from predictor import special_days  # noqa: E402
from tests.support import shared_rossmann  # noqa: E402

WINDOWS = ("2015-06-20", "2014-05-19", "2015-03-16")
HORIZON = 42
SPAN = ("2013-01-01", "2015-07-31")  # the data's span: a fact changing inside it is seen by some window
FIRST_DAYS = 7
RECENT = 182  # a fact that changed this few days before the window: the trend cannot have absorbed it
MONTHS = {m: i + 1 for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sept", "Oct",
                                          "Nov", "Dec"))}
FACTS = ("promo2_active", "promo2_month", "promo2_first_days", "competition_open")
VARIANTS: dict[str, tuple[str, ...]] = {
    "base": (),
    "promo2": ("promo2_month", "promo2_first_days"),
    "promo2+step": ("promo2_active", "promo2_month", "promo2_first_days"),
    "competition": ("competition_open",),
    "all facts": FACTS,
}


def _day(value: dt.date | pd.Timestamp | str) -> int:
    return int(np.datetime64(pd.Timestamp(value).date(), "D").astype(np.int64))


@dataclass(frozen=True)
class StoreFacts:
    """One store's row of store.csv as days since epoch (None: never / not given)."""

    promo2_since: int | None
    promo2_months: tuple[int, ...]
    competition_since: int | None
    competition_distance: float | None


def read_facts(path: Path) -> dict[str, StoreFacts]:
    """store.csv by store id."""
    df = pd.read_csv(path)
    out: dict[str, StoreFacts] = {}
    for r in df.itertuples(index=False):
        since, months = None, ()
        if r.Promo2 == 1 and pd.notna(r.Promo2SinceYear):
            since = _day(dt.date.fromisocalendar(int(r.Promo2SinceYear), int(r.Promo2SinceWeek), 1))
            months = tuple(MONTHS[m] for m in str(r.PromoInterval).split(","))
        comp = None
        if pd.notna(r.CompetitionOpenSinceYear):
            comp = _day(dt.date(int(r.CompetitionOpenSinceYear), int(r.CompetitionOpenSinceMonth), 1))
        dist = float(r.CompetitionDistance) if pd.notna(r.CompetitionDistance) else None
        out[str(r.Store)] = StoreFacts(since, months, comp, dist)
    return out


def fact_features(f: StoreFacts, days: np.ndarray) -> dict[str, np.ndarray]:
    """Every fact regressor (``FACTS``) of one store on ``days`` (int days since epoch), 0/1 floats."""
    days = np.asarray(days, dtype=np.int64)
    month, dom = special_days.month_day(days)
    active = days >= f.promo2_since if f.promo2_since is not None else np.zeros(len(days), bool)
    in_month = active & np.isin(month, f.promo2_months)
    comp = days >= f.competition_since if f.competition_since is not None else np.zeros(len(days), bool)
    cols = {"promo2_active": active, "promo2_month": in_month, "promo2_first_days": in_month & (dom <= FIRST_DAYS),
            "competition_open": comp}
    return {k: v.astype(np.float64) for k, v in cols.items()}


def changes_inside(f: StoreFacts, first: int, last: int) -> bool:
    """A fact of the store changes between ``first`` and ``last`` (a competitor opens, Promo2 starts)."""
    return any(d is not None and first < d <= last for d in (f.promo2_since, f.competition_since))


def pick_stores(facts: dict[str, StoreFacts], ids: list[str], affected: int, others: int, seed: int
                ) -> tuple[list[str], list[str]]:
    """(stores where a fact changes inside ``SPAN``, the others): seeded samples of each, in id order."""
    first, last = (_day(s) for s in SPAN)
    hit = [s for s in ids if s in facts and changes_inside(facts[s], first, last)]
    rest = [s for s in ids if s not in hit]
    rng = np.random.default_rng(seed)
    a = rng.choice(hit, size=min(affected, len(hit)), replace=False) if affected else []
    b = rng.choice(rest, size=min(others, len(rest)), replace=False) if others else []
    key = int
    return sorted(map(str, a), key=key), sorted(map(str, b), key=key)


def window_task(sales: pd.DataFrame, stores: list[str], start: str) -> dict[str, Any]:
    """What one window needs: each store's training series with its calendar, and its scored rows."""
    part = sales[sales["Store"].isin(stores)]
    s, e = pd.Timestamp(start), pd.Timestamp(start) + pd.Timedelta(days=HORIZON - 1)
    history = part[part["Date"] < s]
    window = part[(part["Date"] >= s) & (part["Date"] <= e)]
    calendar = window.drop(columns=["Sales", "Customers"], errors="ignore")
    series = to_series(history, store_calendars(history, None, calendar))
    scored = window[(window["Open"] == 1) & (window["Sales"] > 0)]
    tests = {sid: (g["Date"].to_numpy().astype("datetime64[D]").astype(np.int64), g["Sales"].to_numpy(float))
             for sid, g in scored.groupby("Store")}
    return {"start": start, "series": [x for x in series if x[0] in tests], "tests": tests}


def _frame(days: np.ndarray, cols: dict[str, np.ndarray], y: np.ndarray | None = None) -> pd.DataFrame:
    frame = {"ds": pd.to_datetime(days, unit="D"), **({"y": y} if y is not None else {}), **cols}
    return pd.DataFrame(frame)


def fit_window(task: dict[str, Any], facts: dict[str, StoreFacts]) -> dict[str, Any]:
    """Fit every variant on the window's stores (one worker); per variant and store, the error sums."""
    from prophet_batch import fit_many

    quiet(single_thread=True)
    for name in ("prophet", "prophet.forecaster", "prophet_batch"):  # "less than 730 days" on every 2014 store
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = FitConfig.preset("calendar")
    prior = float(getattr(cfg, "regressor_prior_scale", 10.0))
    train, future = {}, {}
    for sid, days, y, sc in task["series"]:
        if len(days) < cfg.min_days:
            continue
        te_days = task["tests"][sid][0]
        level = special_days.level_day(days)
        cal_x = {n: store_features(sc, d, cfg.regressors, level) for n, d in (("tr", days), ("te", te_days))}
        base = {k: {n: cal_x[k][:, j] for j, n in enumerate(cfg.regressors)} for k in cal_x}
        extra = {"tr": fact_features(facts[sid], days), "te": fact_features(facts[sid], te_days)}
        train[sid] = (days, to_fitted(y, cfg.transform), base["tr"], extra["tr"])
        future[sid] = (te_days, base["te"], extra["te"])

    def model(names: tuple[str, ...]) -> Any:
        m = make_prophet(cfg)
        for n in names:
            m.add_regressor(n, standardize=False, prior_scale=prior)
        m.uncertainty_samples = 0  # point forecasts only
        return m

    out: dict[str, Any] = {"start": task["start"], "sums": {}, "seconds": {}}
    for variant, names in VARIANTS.items():
        t0 = time.perf_counter()
        long = pd.concat([_frame(d, {**b, **{n: e[n] for n in names}}, yf).assign(unique_id=sid)
                          for sid, (d, yf, b, e) in train.items()], ignore_index=True)
        models = fit_many(long, make_model=lambda _sid, names=names: model(names), n_jobs=1, on_error="skip")
        sums = {}
        for sid, m in models.items():
            te_days, b, e = future[sid]
            yhat = m.predict(_frame(te_days, {**b, **{n: e[n] for n in names}}))["yhat"].to_numpy()
            pred = np.expm1(yhat) if cfg.transform == "log1p" else yhat
            sums[sid] = error_sums(task["tests"][sid][1], pred)
        out["sums"][variant] = sums
        out["seconds"][variant] = time.perf_counter() - t0
    return out


def groups(facts: dict[str, StoreFacts], stores: list[str], train_first: int, start: int) -> dict[str, list[str]]:
    """The stores a fact concerns in a window whose training data starts ``train_first`` and scoring ``start``."""
    f = facts
    return {
        "all sampled": stores,
        "competitor opened in training": [s for s in stores if f[s].competition_since is not None
                                          and train_first < f[s].competition_since < start],
        "Promo2 started in training": [s for s in stores if f[s].promo2_since is not None
                                       and train_first < f[s].promo2_since < start],
        f"competitor opened in the last {RECENT} days": [s for s in stores if f[s].competition_since is not None
                                                         and max(train_first, start - RECENT) < f[s].competition_since
                                                         < start],
        f"Promo2 started in the last {RECENT} days": [s for s in stores if f[s].promo2_since is not None
                                                      and max(train_first, start - RECENT) < f[s].promo2_since
                                                      < start],
        "in Promo2 before the window": [s for s in stores if f[s].promo2_since is not None
                                        and f[s].promo2_since < start],
        "no fact changes in training": [s for s in stores if not changes_inside(f[s], train_first, start - 1)],
    }


def compare(runs: list[tuple[str, dict[str, Any]]], members: list[tuple[str, str]], boots: int, seed: int
            ) -> dict[str, Any]:
    """Pooled WAPE / RMSPE per variant over (window, store) ``members`` with the paired change against base."""
    have = [(w, s) for w, s in members if all(s in r["sums"][v] for ww, r in runs if ww == w for v in VARIANTS)]
    by_window = dict(runs)
    res: dict[str, Any] = {"n_stores": len(have), "n_rows": 0, "variants": {}}
    if not have:
        return res
    arr = {v: np.array([[by_window[w]["sums"][v][s][k] for k in ("abs_err", "abs_y", "sq_pe", "n_pos")]
                        for w, s in have]) for v in VARIANTS}
    res["n_rows"] = int(arr["base"][:, 3].sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(have), size=(boots, len(have)))
    base_store = arr["base"][:, 0] / arr["base"][:, 1]

    def wape(a: np.ndarray, ix: Any = slice(None)) -> np.ndarray:
        return a[ix, 0].sum(axis=-1) / a[ix, 1].sum(axis=-1)

    base_wape = scores(pooled([by_window[w]["sums"]["base"][s] for w, s in have]))["wape"]
    for v in VARIANTS:
        sc = scores(pooled([by_window[w]["sums"][v][s] for w, s in have]))
        d_boot = wape(arr[v], idx) - wape(arr["base"], idx)
        store = arr[v][:, 0] / arr[v][:, 1]
        res["variants"][v] = {"wape": sc["wape"], "rmspe": sc["rmspe"], "d_wape": sc["wape"] - base_wape,
                              "d_wape_ci": [float(np.quantile(d_boot, 0.025)), float(np.quantile(d_boot, 0.975))],
                              "improved": float((store < base_store - 1e-9).mean()),
                              "worse": float((store > base_store + 1e-9).mean())}
    return res


def table(title: str, block: dict[str, Any]) -> str:
    """One markdown table: variant rows, WAPE, RMSPE, paired change, share of stores improved / worse."""
    head = (f"\n**{title}**: {block['n_stores']} store-windows, {block['n_rows']} rows\n\n"
            "| variant | WAPE | RMSPE | WAPE change vs base (95 % CI, store bootstrap) | stores better / worse |\n"
            "|---|---:|---:|---:|---:|\n")
    rows = []
    for v, r in block.get("variants", {}).items():
        lo, hi = r["d_wape_ci"]
        change = "" if v == "base" else f"{100 * r['d_wape']:+.2f} pt ({100 * lo:+.2f} .. {100 * hi:+.2f})"
        share = "" if v == "base" else f"{r['improved']:.0%} / {r['worse']:.0%}"
        rows.append(f"| {v} | {r['wape']:.2%} | {r['rmspe']:.4f} | {change} | {share} |")
    return head + "\n".join(rows) if rows else head + "| (no stores) | | | | |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_rossmann(), help="train.csv(.gz); store.csv beside it")
    p.add_argument("--stores-file", type=Path, help="store.csv (default: beside --data)")
    p.add_argument("--affected", type=int, default=150, help="stores where a fact changes (sample; 0: none)")
    p.add_argument("--others", type=int, default=50, help="other stores (sample)")
    p.add_argument("--windows", nargs="+", default=list(WINDOWS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--boots", type=int, default=2000)
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args()
    if args.data is None:
        sys.exit("no data: pass --data or put the Rossmann files in ../shared/data/rossmann")
    t0, load0 = time.perf_counter(), os.getloadavg()
    facts = read_facts(args.stores_file or args.data.parent / "store.csv")
    sales = read_sales(args.data)
    ids = sorted(map(str, sales["Store"].unique()), key=int)
    hit, rest = pick_stores(facts, ids, args.affected, args.others, args.seed)
    stores = hit + rest
    print(f"stores: {len(hit)} with a fact changing in {SPAN[0]}..{SPAN[1]} + {len(rest)} others; "
          f"windows {', '.join(args.windows)}", file=sys.stderr)
    tasks = [window_task(sales, stores, w) for w in args.windows]
    runs: list[tuple[str, dict[str, Any]]] = []
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        pending = [pool.apply_async(fit_window, (t, facts)) for t in tasks]
        for t, job in zip(tasks, pending, strict=True):
            r = job.get()
            runs.append((t["start"], r))
            print(f"window {t['start']}: {len(r['sums']['base'])} stores fitted, "
                  + ", ".join(f"{v} {s:.0f} s" for v, s in r["seconds"].items()), file=sys.stderr)
    first = min(_day(sales["Date"].min()), _day(SPAN[0]))
    report: dict[str, Any] = {"stores": stores, "affected": hit, "others": rest, "windows": {}, "pooled": {}}
    pooled_members: dict[str, list[tuple[str, str]]] = {}
    for w, _ in runs:
        report["windows"][w] = {}
        for g, members in groups(facts, stores, first, _day(w)).items():
            pairs = [(w, s) for s in members]
            pooled_members.setdefault(g, []).extend(pairs)
            report["windows"][w][g] = compare(runs, pairs, args.boots, args.seed)
    for g, pairs in pooled_members.items():
        report["pooled"][g] = compare(runs, pairs, args.boots, args.seed)
    report["sums"] = {w: r["sums"] for w, r in runs}  # per window, variant and store: regroup without refitting
    report["seconds"] = time.perf_counter() - t0
    report["loadavg"] = {"start": load0, "end": os.getloadavg()}

    print(f"# store.csv facts as known-ahead regressors: {len(stores)} stores ({len(hit)} with a fact changing, "
          f"{len(rest)} others, seed {args.seed}), windows {', '.join(args.windows)} x {HORIZON} days")
    print(f"\nrun {report['seconds']:.0f} s with {args.workers} worker(s); load average at start "
          f"{' '.join(f'{x:.2f}' for x in load0)}, at end {' '.join(f'{x:.2f}' for x in report['loadavg']['end'])}")
    print("\n## All windows pooled")
    for g, block in report["pooled"].items():
        print(table(g, block))
    for w, blocks in report["windows"].items():
        print(f"\n## Window {w}")
        for g, block in blocks.items():
            print(table(g, block))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
