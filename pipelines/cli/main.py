"""``storecast``: the command line for people (data, train, export, ...).

It starts fast: only the chosen command's parser is built in full (the training stack, pandas and MLflow
are imported by the commands that use them), and every failure is one line on stderr (``--debug``: the
traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pipelines.cli.errors import CliParser, missing_extra, one_line
from pipelines.cli.options import add_api_key, api_key
from serving.contract import MODEL_NAME
from serving.mlflow_env import use_mlflow_defaults

MLFLOW_SET_HERE = use_mlflow_defaults("tools")
ALL = "*"  # build_parser: every command in full


def _store_list(text: str) -> list[str]:
    stores = [s.strip() for s in text.split(",") if s.strip()]
    if not stores:
        raise argparse.ArgumentTypeError("give store ids separated by commas, e.g. 1,2,3")
    return stores


def cmd_synth(args: argparse.Namespace) -> int:
    from pipelines.data.sales_csv import write_sales
    from pipelines.data.synth import synthesize, synthesize_with_calendar

    if args.calendar_out:
        sales, calendar = synthesize_with_calendar(args.stores, seed=args.seed, start=args.start, end=args.end,
                                                   calendar_days=args.calendar_days)
        write_sales(calendar, args.calendar_out)
        print(f"wrote the calendar of the {args.calendar_days} days after {args.end} to {args.calendar_out}",
              file=sys.stderr)
    else:
        sales = synthesize(args.stores, seed=args.seed, start=args.start, end=args.end)
    path = write_sales(sales, args.out)
    print(f"wrote {args.stores} synthetic stores to {path}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.cli.train import train_via_publish

    return train_via_publish(args, _train_defaults() if args.parent else {})


def _train_defaults() -> dict[str, Any]:
    """The train parser's defaults (to tell flags given from flags left as they are)."""
    sub = next(a for a in build_parser("train")._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices["train"]._actions}


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.versions.registry import prophet_json, tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(args.tracking_uri)  # found by main(): pipelines.cli.locate
    text = prophet_json(args.model_uri, args.store)
    if args.begin or args.end:
        from pipelines.cli.calendar import export_window_cmd

        return export_window_cmd(args, text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote store {args.store} of {args.model_uri} to {args.out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.stack import LocalStack
    from pipelines.versions.registry import tracking_uri

    auth_file, key = args.auth_file or os.environ.get("STORECAST_AUTH_FILE"), None
    for name in MLFLOW_SET_HERE:  # the servers' own defaults (pipelines.stack passes the environment on)
        os.environ.pop(name, None)
    if args.make_key:  # access (issue 13): a fresh auth file with one planner identity
        from pipelines.cli.auth import local_auth_file

        path, key = local_auth_file(args.log_dir)
        auth_file = str(path)
    stack = LocalStack(args.model_uri, tracking_uri(args.tracking_uri), shards=args.shards, http_port=args.http_port,
                       grpc_port=args.grpc_port, mlflow_server=args.mlflow_server, log_dir=Path(args.log_dir),
                       predictor_args=["--refresh-seconds", str(args.refresh_seconds)], auth_file=auth_file,
                       dashboard_args=None if args.dashboard_port is None else [
                           *(["--sales", args.dashboard_sales] if args.dashboard_sales else []),
                           *(["--retrain-url", args.dashboard_retrain_url] if args.dashboard_retrain_url else [])],
                       dashboard_port=args.dashboard_port or 0)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"starting predictor ({args.shards} shard(s)) and transformer for {args.model_uri} ...", file=sys.stderr)
    stack.start(timeout=args.ready_timeout)
    try:
        t = stack.transformer
        print(f"transformer  {t.url}  (gRPC 127.0.0.1:{t.grpc_port})")
        for p in stack.predictors:
            print(f"{p.name:<12} {p.url}  (gRPC 127.0.0.1:{p.grpc_port})")
        if args.mlflow_server:
            print(f"mlflow       {stack.tracking_uri}")
        if stack.dashboard is not None:
            print(f"dashboard    {stack.dashboard.url}/")
        print(f"access       auth file {auth_file}" if auth_file else
              "access       STORECAST_API_KEY, one shared key (no identities)" if os.environ.get("STORECAST_API_KEY")
              else "access       open: no auth file, every caller is anonymous with every permission (loopback only)")
        if key:
            print(f"planner key  {key}  (identity local-planner; send it as x-api-key; the dashboard's sign-in "
                  "takes it)")
        header = "-H \"x-api-key: $STORECAST_API_KEY\" " if auth_file else ""
        given = f"  export STORECAST_API_KEY={key}\n" if key else \
            "  export STORECAST_API_KEY=<a key of the auth file>   # storecast auth add-key prints one\n"
        print(f"logs in {args.log_dir}/\n\ntry:\n" + (given if auth_file else "") +
              f"  curl -s {header}-H 'content-type: application/json' "
              f"{t.url}/v1/models/{MODEL_NAME}:predict \\\n    -d '{{\"instances\": [{{\"storeId\": \"4\"}}]}}'\n"
              f"  storecast forecast --store 4 --url {t.url} --plot forecast.png\n\nCtrl-C stops everything.",
              flush=True)
        while not stopping.wait(0.5):
            dead = [s for s in stack.services if s.proc.poll() is not None]
            if dead:
                print(f"{dead[0].name} exited with {dead[0].proc.returncode}; stopping", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        print("stopped", file=sys.stderr)


def cmd_forecast(args: argparse.Namespace) -> int:
    if args.stores:  # many stores into a table: pipelines/clients/batch.py
        from pipelines.clients.batch import cmd_batch

        return cmd_batch(args)
    from pipelines.clients.forecast import plot, request_forecast, table

    try:
        prediction = request_forecast(args.url, args.store, args.begin, args.end, api_key=args.api_key)
    except (RuntimeError, OSError) as exc:
        print(f"forecast failed: {exc}", file=sys.stderr)
        return 1
    print(table(prediction))
    if args.plot:
        print(f"plot: {plot(prediction, args.plot)}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "run_all.py"
    if not script.is_file():
        print("the benchmarks come with a source checkout of storecast (bench/run_all.py not found)",
              file=sys.stderr)
        return 1
    extra = (["--quick"] if args.quick else []) + (["--only", *args.only] if args.only else [])
    return subprocess.call([sys.executable, str(script), "--workdir", str(Path(args.workdir).resolve()), *extra])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("storecast")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def command_of(argv: list[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option: storecast's own options take no
    value), None for none."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(only: str | None = ALL) -> argparse.ArgumentParser:
    """The parser of every command (``only`` ``ALL``); with a command name, that command's in full and the others'
    names and help only (``storecast --help``: ``only`` None), so a start imports what the command needs."""
    p = CliParser(prog="storecast", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"storecast {_version()}", help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show the whole traceback when a command fails")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="sales data tools").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write deterministic synthetic Rossmann-format sales")
    s.add_argument("--stores", type=int, default=20, help="stores 1..N")
    s.add_argument("--seed", type=int, default=0, help="the same seed always gives the same data")
    s.add_argument("--start", default="2013-01-01", help="first day (YYYY-MM-DD)")
    s.add_argument("--end", default="2015-07-31", help="last day with sales (YYYY-MM-DD)")
    s.add_argument("--out", required=True, help="file: .csv, .csv.gz or .parquet")
    s.add_argument("--calendar-out", help="also write the known-ahead calendar of the days after --end here")
    s.add_argument("--calendar-days", type=int, default=48, help="days of calendar after --end (with --calendar-out)")
    s.set_defaults(func=cmd_synth)
    from pipelines.cli.data import add_parser as add_data_append
    add_data_append(data)

    t = sub.add_parser("train", help="fit every store, evaluate, register one model version")
    if only in (ALL, "train"):
        _train_arguments(t)

    e = sub.add_parser("export", help="write one store's stock Prophet JSON from a model version")
    e.add_argument("--model-uri", required=True, help="models:/storecast/N, models:/storecast@alias or a folder")
    e.add_argument("--store", required=True, help="the store id")
    e.add_argument("--out", required=True, help="the JSON file; with --begin/--end a folder: the stock model, "
                                                "its future frame and the served numbers")
    e.add_argument("--begin", help="first day of the window to export the future frame of (YYYY-MM-DD)")
    e.add_argument("--end", help="last day of the window (YYYY-MM-DD; default: --begin + 41 days)")
    e.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the project's "
                   "registry: ./mlflow.db, the checkout's build/demo/mlflow.db)")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("serve", help="run predictor and transformer on loopback until Ctrl-C")
    v.add_argument("--model-uri", default=f"models:/{MODEL_NAME}@champion",
                   help="models:/NAME@ALIAS (followed), models:/NAME/N (pinned) or a downloaded folder")
    v.add_argument("--tracking-uri", help="registry (default: $MLFLOW_TRACKING_URI, else ./mlflow.db, else the "
                   "checkout's build/demo/mlflow.db)")
    v.add_argument("--mlflow-server", action="store_true",
                   help="also run a real `mlflow server` over the (sqlite) tracking store; the servers use it")
    v.add_argument("--shards", type=int, default=1, help="predictor shards behind the transformer")
    v.add_argument("--http-port", type=int, default=8080, help="transformer HTTP port (0: any free)")
    v.add_argument("--grpc-port", type=int, default=8081, help="transformer gRPC port (0: any free)")
    v.add_argument("--refresh-seconds", type=float, default=30.0, help="predictor alias refresh")
    v.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for every model to be ready")
    v.add_argument("--log-dir", default="build/logs", help="each process's log goes to DIR/<name>.log")
    v.add_argument("--auth-file", help="the stack's auth file: the transformer's, and the predictors' with the "
                   "transformer's own identity added (default $STORECAST_AUTH_FILE; none: every caller anonymous with "
                   "every permission, on loopback)")
    v.add_argument("--make-key", action="store_true",
                   help="make a fresh auth file in --log-dir with one planner key, print the key, serve with it")
    v.add_argument("--dashboard-port", type=int, help="also serve the planners' dashboard here (0: any free port)")
    v.add_argument("--dashboard-sales", help="sales file the dashboard shows the recent actual sales from")
    v.add_argument("--dashboard-retrain-url", help="retrain service behind the dashboard's refresh buttons")
    v.set_defaults(func=cmd_serve)

    f = sub.add_parser("forecast", help="ask the business API for one store's forecast (--store) or many stores' "
                       "into a table (--stores ... --out FILE)")
    which = f.add_mutually_exclusive_group(required=True)
    which.add_argument("--store", help="one store: print its forecast as a table (and --plot it)")
    which.add_argument("--stores", help="many stores into --out: 1-1115, 1,2,7-9, all, or a file of ids")
    f.add_argument("--begin", help="first day (ISO date; default today, UTC)")
    f.add_argument("--end", help="last day (default begin + 6 days)")
    f.add_argument("--url", default="http://127.0.0.1:8080", help="transformer URL")
    f.add_argument("--plot", help="also draw the forecast with its interval into this PNG")
    from pipelines.clients.batch import add_arguments as add_batch_arguments
    add_batch_arguments(f)
    add_api_key(f, "x-api-key (a key of the business API's auth file)")
    f.set_defaults(func=cmd_forecast)

    b = sub.add_parser("bench", help="run the benchmarks (source checkout): results/bench.md and the README table")
    b.add_argument("--workdir", default="build/bench", help="keeps the trained version for the next run")
    b.add_argument("--quick", action="store_true", help="a 2-minute soak; the README is left as it is")
    b.add_argument("--only", nargs="*", help="these benchmarks only (train, predictor_inprocess, ..., soak)")
    b.set_defaults(func=cmd_bench)

    from pipelines.cli.calendar import add_parser as add_calendar
    add_calendar(sub)
    from pipelines.cli.auth import add_parser as add_auth
    add_auth(sub)
    from loadtest.runner import add_parser as add_loadtest
    from pipelines.cli.backtest import add_parser as add_backtest
    from pipelines.cli.canary import add_parser as add_canary
    from pipelines.cli.mlserver import add_parser as add_mlserver
    from pipelines.cli.retrain import add_parser as add_retrain

    add_retrain(sub)
    add_canary(sub)
    add_mlserver(sub)
    add_loadtest(sub)
    add_backtest(sub)
    return p


def _train_arguments(t: argparse.ArgumentParser) -> None:
    """``storecast train``'s flags (their choices come from the training stack: imported only for train)."""
    from pipelines.training.fitting import DEFAULT_MODEL, FITTERS, MODELS
    from predictor.table import TRANSFORMS

    t.add_argument("--data", required=True, help="Rossmann-format sales (.csv, .csv.gz, .parquet)")
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                   "project's registry (./mlflow.db, the checkout's build/demo/mlflow.db), else a new ./mlflow.db)")
    t.add_argument("--model-name", default=MODEL_NAME, help="registered model (and experiment) name")
    pick = t.add_mutually_exclusive_group()
    pick.add_argument("--stores", type=_store_list, help="only these stores, e.g. 1,2,3")
    pick.add_argument("--limit", type=int, help="only the first N stores")
    t.add_argument("--holdout-days", type=int, default=42,
                   help="days held out for evaluation (the registered model is fitted on all data)")
    t.add_argument("--min-days", type=int, default=30, help="open days a store needs to be fitted")
    t.add_argument("--gate-margin", type=float, default=0.10,
                   help="a store fails the gate if its holdout WAPE > baseline WAPE * (1 + margin)")
    t.add_argument("--interval-width", type=float, default=0.95, help="Prophet's interval_width")
    t.add_argument("--seed", type=int, default=0, help="seed of the interval simulation")
    t.add_argument("--alias", default="challenger", help="alias to point at the new version ('' for none)")
    t.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    t.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the fits run: local (processes on this machine) or ray (Ray tasks; "
                   "pip install storecast[ray])")
    t.add_argument("--ray-address", help="with --backend ray: the cluster (auto inside a Ray cluster or RayJob, "
                   "HOST:PORT, ray://HOST:10001); default: a local Ray on loopback, started and stopped")
    t.add_argument("--fitter", choices=FITTERS, default="prophet-batch",
                   help="prophet-batch (exact batched MAP, default) or prophet (stock Stan, the reference)")
    t.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL,
                   help="calendar: log1p target, calendar regressors and special days, monthly seasonality "
                        "(default); calendar-linear: the regressors on raw sales; seed: the reference without the "
                        "calendar; calendar-basic: the calendar model before the special days (a reference)")
    t.add_argument("--transform", choices=TRANSFORMS, default=None, help="override the model's target transform")
    t.add_argument("--calendar", help="known-ahead days (test.csv layout: Store, Date, Open, Promo, StateHoliday, "
                                      "SchoolHoliday; .csv, .csv.gz, .parquet)")
    t.add_argument("--calendar-ref", metavar="REF|all",
                   help="known-ahead days held in the sales store (--data): a ref printed by `storecast calendar "
                        "upload`, or `all` (every uploaded calendar, later uploads winning); not with --calendar")
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    t.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    from pipelines.cli.train import add_arguments as add_publish_arguments  # --parent, --force, gate flags

    add_publish_arguments(t)
    t.set_defaults(func=cmd_train)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    from serving.logs import configure_logging

    configure_logging(logging.WARNING)  # storecast's warnings in the one format; the commands print the rest
    if getattr(args, "alias", None) == "":
        args.alias = None
    try:
        hint = missing_extra(args)
        if hint:
            print(f"storecast {args.command}: {hint}", file=sys.stderr)
            return 2
        if hasattr(args, "tracking_uri"):  # the registry: given, or found (pipelines.cli.locate), or none
            from pipelines.cli.locate import READERS, resolve

            reads = (args.command in READERS and str(getattr(args, "model_uri", "models:/")).startswith("models:/")
                     and not (args.command == "loadtest" and getattr(args, "host", None)))  # --host: no stack
            args.tracking_uri, note = resolve(args.tracking_uri, must_exist=reads)
            if note:
                print(f"storecast {args.command}: {note}", file=sys.stderr)
        if hasattr(args, "api_key_file"):  # the key a command sends, read once: pipelines.cli.options
            args.api_key = api_key(args)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line naming the problem, the traceback only with --debug
        if args.debug:
            raise
        print(f"storecast {args.command}: {one_line(exc)}", file=sys.stderr)
        return 1

