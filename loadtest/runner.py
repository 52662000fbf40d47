"""``storecast loadtest``: headless Locust against the local stack (or ``--host``), with a report and a plot.

Writes Locust's CSV and HTML reports plus ``loadtest.png`` (throughput, latency percentiles and
failures over time, ``loadtest.report``) into the results folder and prints success throughput, p50/p99
and error rate.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtest.report import Summary, plot, summarize
from pipelines.cli.options import add_api_key, api_key
from serving.contract import MODEL_NAME

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")  # shipped in the package: works as installed


def run_locust(host: str, out: Path, *, users: int, spawn_rate: float, duration: str, classes: list[str],
               env: dict[str, str] | None = None, timeout: float | None = None) -> Summary:
    """Run headless Locust and summarise its CSV output."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host, "-u", str(users),
            "-r", str(spawn_rate), "-t", duration, "--csv", str(out / "locust"), "--csv-full-history",
            "--html", str(out / "report.html"), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5",
            *classes]
    with open(out / "locust.log", "w") as log:
        subprocess.run(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, check=False,
                       timeout=timeout)
    summary = summarize(out)
    plot(out)
    return summary


def cmd_loadtest(args: Any) -> int:
    """Start the local stack unless ``--host`` is given, run Locust, report."""
    from datetime import datetime

    from pipelines.stack import LocalStack
    from pipelines.versions.registry import tracking_uri

    if importlib.util.find_spec("locust") is None:  # before starting anything
        print("storecast loadtest needs Locust, a dependency of storecast: pip install storecast (or locust==2.47.0)",
              file=sys.stderr)
        return 1
    if args.retrain_url:  # load tests cannot change production (issue 14): a dry-run service only
        from loadtest.guard import ALLOW_ENV, refusal

        reason = refusal(args.retrain_url, args.allow_writes)
        if reason:
            print(f"storecast loadtest: {reason}", file=sys.stderr)
            return 2
    out = Path(args.out or f"results/loadtest-{datetime.now():%Y%m%d-%H%M%S}")
    env = {"STORECAST_USER_RPS": str(args.user_rps), "STORECAST_STORES": args.stores,
           **({ALLOW_ENV: "1"} if args.retrain_url and args.allow_writes else {})}
    if args.shape:
        env["STORECAST_SHAPE"] = args.shape
    key = api_key(args)
    if key:
        env["STORECAST_API_KEY"] = key
    stack = None
    try:
        if args.host:
            host, predictor = args.host, args.predictor_url
        else:
            far = ["--max-days-ahead", "10000"]  # Locust asks for today's window, whatever the version's data end
            stack = LocalStack(args.model_uri, tracking_uri(args.tracking_uri), log_dir=out / "logs",
                               http_port=0, grpc_port=0, predictor_args=far, transformer_args=far).start()
            host, predictor = stack.transformer.url, stack.predictors[0].url
        if predictor:
            env["STORECAST_PREDICTOR_URL"] = predictor
        if args.retrain_url:
            env["STORECAST_RETRAIN_URL"] = args.retrain_url
        classes = [c for c in args.classes.split(",") if c]
        if "Service" in classes and not predictor:
            classes.remove("Service")
        if "Refresher" in classes and not args.retrain_url:
            classes.remove("Refresher")
        print(f"locust: {', '.join(classes)} against {host} for {args.duration} ...", file=sys.stderr)
        summary = run_locust(host, out, users=args.users, spawn_rate=args.spawn_rate, duration=args.duration,
                             classes=classes, env=env)
    finally:
        if stack is not None:
            stack.stop()
    print(summary.line())
    print(f"reports: {out}/report.html, {out}/locust_stats.csv, plot {out}/loadtest.png")
    return 0 if summary.requests else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("loadtest", help="headless Locust against the local stack (or --host) with a report")
    p.add_argument("--host", help="transformer URL (default: start the local stack)")
    p.add_argument("--predictor-url", help="predictor URL for the Service users (default: the local stack's)")
    p.add_argument("--retrain-url", help="retrain service URL for the Refresher users (it must run --dry-run)")
    p.add_argument("--allow-writes", action="store_true",
                   help="let Refresher users send retrain requests to a retrain service that is not --dry-run")
    p.add_argument("--model-uri", default=f"models:/{MODEL_NAME}@champion", help="version the local stack serves")
    p.add_argument("--tracking-uri", help="registry of the local stack (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db)")
    p.add_argument("--users", type=int, default=20, help="Locust users (ignored with --shape)")
    p.add_argument("--spawn-rate", type=float, default=20, help="users started per second")
    p.add_argument("--user-rps", type=float, default=2.0, help="requests per second of each user")
    p.add_argument("--duration", default="30s", help="Locust run time, e.g. 30s, 5m")
    p.add_argument("--classes", default="Planner,Service,Event,Refresher", help="Locust user classes")
    p.add_argument("--shape", choices=["surge", "ramp"], help="a LoadTestShape instead of --users")
    p.add_argument("--stores", default="1-20", help="store ids the users ask for: 1-1115 or 1,2,7")
    add_api_key(p, "x-api-key by every user")
    p.add_argument("--out", help="results folder (default results/loadtest-<time>)")
    p.set_defaults(func=cmd_loadtest)
