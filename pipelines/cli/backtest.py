"""``storecast backtest``: rolling-origin backtests of the served model against seasonal naive and LightGBM.

Each window is trained at its cutoff with the project's trainer, served on loopback and asked through the
business API; the references forecast the same rows (``pipelines.backtest``). The report, the JSON, the plots
and each window's rows go to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``backtest`` command (its training choices are imported only when the command runs)."""
    b = sub.add_parser("backtest", help="score the served model on rolling 42-day windows against seasonal naive "
                       "and a global LightGBM (results/backtest/report.md)")
    b.add_argument("--data", help="Rossmann-format sales (.csv, .csv.gz, .parquet); default: the shared Rossmann "
                   "train.csv.gz beside the checkout (../shared/data/rossmann/), if there")
    b.add_argument("--store-facts", help="Rossmann's store.csv (LightGBM's store features); default: store.csv "
                   "beside --data, if there")
    b.add_argument("--window", action="append", metavar="YYYY-MM-DD",
                   help="first day of a window (repeat; default 2014-03-17, 2014-05-19, 2014-12-01, 2015-03-16, "
                        "2015-06-20)")
    b.add_argument("--days", type=int, default=42, help="days of each window")
    b.add_argument("--stores", type=int, help="only the first N stores (default: all)")
    b.add_argument("--model", default=None, help="the trainer's model (storecast train --model; default its default)")
    b.add_argument("--workers", type=int, default=None, help="processes for the fits and LightGBM's threads "
                   "(default: all cores)")
    b.add_argument("--out", default="results/backtest", help="folder of the report, results.json, the plots")
    b.add_argument("--no-lightgbm", action="store_true", help="no LightGBM reference (no lightgbm/mlforecast needed)")
    b.add_argument("--keep-versions", action="store_true", help="keep each window's served version in "
                   "OUT/<window>/version (storecast export --model-uri takes the folder)")
    b.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the servers of a window")
    b.set_defaults(func=cmd_backtest)


def cmd_backtest(args: argparse.Namespace) -> int:
    import os

    from pipelines.backtest.windows import DEFAULT_WINDOWS, Window, find_data

    data = Path(args.data) if args.data else find_data()
    if data is None:
        print("backtest: give --data (no shared Rossmann train.csv.gz beside the checkout)", file=sys.stderr)
        return 2
    facts_path = Path(args.store_facts) if args.store_facts else data.with_name("store.csv")
    if args.store_facts and not facts_path.is_file():
        print(f"backtest: --store-facts {facts_path}: no such file", file=sys.stderr)
        return 2
    try:
        windows = tuple(Window.parse(w, args.days).name for w in (args.window or DEFAULT_WINDOWS))
    except ValueError as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    if not args.no_lightgbm:
        from pipelines.cli.errors import installed

        missing = [m for m in ("lightgbm", "mlforecast") if not installed(m)]
        if missing:
            from pipelines.backtest.reference import INSTALL_HINT

            print(f"backtest: {INSTALL_HINT} (missing: {', '.join(missing)})", file=sys.stderr)
            return 2
    from pipelines.backtest.reference import read_store_facts
    from pipelines.backtest.run import Config, run
    from pipelines.data.sales_csv import read_sales
    from pipelines.training.fitting import DEFAULT_MODEL, MODELS

    model = args.model or DEFAULT_MODEL
    if model not in MODELS:
        print(f"backtest: --model must be one of {', '.join(MODELS)}; got {model!r}", file=sys.stderr)
        return 2
    print(f"backtest: reading {data}", file=sys.stderr)
    sales = read_sales(data)
    facts = read_store_facts(facts_path) if facts_path.is_file() else None
    if facts is None and not args.no_lightgbm:
        print(f"backtest: no store facts ({facts_path} not found): LightGBM without store.csv's features",
              file=sys.stderr)
    config = Config(windows=windows, days=args.days, stores=args.stores, model=model,
                    workers=args.workers or os.cpu_count() or 1, lightgbm=not args.no_lightgbm, out=Path(args.out),
                    keep_versions=args.keep_versions, ready_timeout=args.ready_timeout, data=data.name,
                    store_facts=facts_path.name if facts is not None else "")
    results = run(sales, facts, config)
    from pipelines.backtest.report import table_rows

    print("\n".join(table_rows(results["windows"])))
    return 0
