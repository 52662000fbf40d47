"""``storecast loadtest``: headless Locust against the local stack (or ``--host``), with a report and a plot.

Writes Locust's CSV and HTML reports plus ``loadtest.png`` (throughput, latency percentiles and
failures over time, ``loadtest.report``) into the results folder and prints success throughput, p50/p99
and error rate. ``--workers N`` runs Locust's master and N worker processes on loopback: the master (bound
to 127.0.0.1 on a free port, no web UI) merges the workers' statistics and writes the reports; each worker
logs to ``worker-<i>.log`` beside them; every process is stopped when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtest.report import Summary, plot, summarize
from pipelines.cli.options import add_api_key, api_key
from serving.contract import MODEL_NAME

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")  # shipped in the package: works as installed
LOOPBACK = "127.0.0.1"
SHAPES = ("surge", "ramp", "step")  # STORECAST_SHAPE values the locustfile knows
WORKER_WAIT = 120  # seconds the master waits for its workers before giving up


class LoadtestError(RuntimeError):
    """A run that produced no report: the message says why, in one line."""


def _locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def _run_options(host: str, out: Path, users: int, spawn_rate: float, duration: str) -> list[str]:
    """What the process that drives the run (alone, or the master) is given: load, duration and reports."""
    return ["--headless", "--host", host, "-u", str(users), "-r", str(spawn_rate), "-t", duration,
            "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
            "--only-summary", "--stop-timeout", "5"]


def run_locust(host: str, out: Path, *, users: int, spawn_rate: float, duration: str, classes: list[str],
               env: dict[str, str] | None = None, timeout: float | None = None, workers: int = 0) -> Summary:
    """Run headless Locust (one process, or a master and ``workers`` workers) and summarise its CSV output."""
    out.mkdir(parents=True, exist_ok=True)
    run = _run_options(host, out, users, spawn_rate, duration)
    full_env = {**os.environ, **(env or {})}
    if workers > 0:
        run_distributed(run, out, workers=workers, classes=classes, env=full_env, timeout=timeout)
    else:
        with open(out / "locust.log", "w") as log:
            subprocess.run(_locust(*run, "--loglevel", "WARNING", *classes), env=full_env, stdout=log,
                           stderr=subprocess.STDOUT, check=False, timeout=timeout)
    if not (out / "locust_stats.csv").exists():
        raise LoadtestError(f"Locust wrote no statistics: see {out / 'locust.log'}")
    summary = summarize(out)
    plot(out)
    return summary


def _free_port() -> int:
    from pipelines.stack import free_port

    return free_port()


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM to each process still running (the master first: it also tells its workers to quit), SIGKILL to
    what is left after ``grace`` seconds; reaps them all."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the processes run, so the ``finally`` that stops them runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_distributed(run: list[str], out: Path, *, workers: int, classes: list[str], env: dict[str, str],
                    timeout: float | None = None, attempts: int = 3) -> int:
    """Locust's master (``run``: load, duration, reports) and ``workers`` workers, all on loopback; returns
    the master's exit code. The master log is ``locust.log``, the workers' ``worker-<i>.log``. A worker that
    fails before the master ends stops the run; a port taken between choosing and binding is chosen again."""
    for attempt in range(attempts):
        port = _free_port()
        code = _master_and_workers(run, out, port, workers, classes, env, timeout)
        log = (out / "locust.log").read_text(errors="replace")
        if code == 0 or "Socket bind failure" not in log or attempt == attempts - 1:
            return code
    return code  # pragma: no cover


def _master_and_workers(run: list[str], out: Path, port: int, workers: int, classes: list[str],
                        env: dict[str, str], timeout: float | None) -> int:
    master_argv = _locust(*run, "--master", "--expect-workers", str(workers), "--expect-workers-max-wait",
                          str(WORKER_WAIT), "--master-bind-host", LOOPBACK, "--master-bind-port", str(port),
                          "--loglevel", "INFO", *classes)
    worker_argv = _locust("--worker", "--master-host", LOOPBACK, "--master-port", str(port), "--loglevel", "INFO",
                          *classes)
    procs: list[subprocess.Popen] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    with _sigterm_as_exit(), contextlib.ExitStack() as files:
        try:
            # own sessions: a Ctrl-C reaches this process only, which stops them in order (below)
            for i, argv in enumerate([master_argv, *[worker_argv] * workers]):
                log = files.enter_context(open(out / (f"worker-{i}.log" if i else "locust.log"), "w"))
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
            master = procs[0]
            while master.poll() is None:
                failed = [i for i, p in enumerate(procs) if i and p.poll() not in (None, 0)]
                if failed:
                    raise LoadtestError(f"Locust worker {failed[0]} exited with {procs[failed[0]].returncode} "
                                        f"before the end: see {out / f'worker-{failed[0]}.log'}")
                if deadline is not None and time.monotonic() > deadline:
                    raise LoadtestError(f"Locust's master still ran after {timeout:.0f} s: stopped")
                time.sleep(0.2)
            # the master told its workers to quit: give them a moment to go on their own
            for proc in procs[1:]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            return master.returncode
        finally:
            _stop(procs)


def cmd_loadtest(args: Any) -> int:
    """Start the local stack unless ``--host`` is given, run Locust, report."""
    from datetime import datetime

    from pipelines.stack import LocalStack
    from pipelines.versions.registry import tracking_uri

    if importlib.util.find_spec("locust") is None:  # before starting anything
        print("storecast loadtest needs Locust, the extra loadtest of storecast: pip install 'storecast[loadtest]'",
              file=sys.stderr)
        return 1
    if args.workers < 0:
        print(f"storecast loadtest: --workers {args.workers}: a number of worker processes, 0 for one process",
              file=sys.stderr)
        return 2
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
    if args.shape == "step":  # one row per request: the exact input of the goodput report
        env["STORECAST_REQUEST_LOG"] = str(out.resolve() / "requests.csv")
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
        where = f" on {args.workers} worker processes" if args.workers else ""
        print(f"locust: {', '.join(classes)} against {host} for {args.duration}{where} ...", file=sys.stderr)
        summary = run_locust(host, out, users=args.users, spawn_rate=args.spawn_rate, duration=args.duration,
                             classes=classes, env=env, workers=args.workers)
    finally:
        if stack is not None:
            stack.stop()
    print(summary.line())
    if args.shape == "step":
        from loadtest import goodput as gp
        from loadtest.report import goodput_report

        steps, best, method = goodput_report(out, args.target_ms, args.user_rps)
        print(gp.table(steps, args.target_ms))
        print(f"goodput {best or 0:g} req/s within {args.target_ms:g} ms ({method}); plot {out}/goodput.png")
    print(f"reports: {out}/report.html, {out}/locust_stats.csv, plot {out}/loadtest.png"
          + (f", workers' logs {out}/worker-*.log" if args.workers else ""))
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
    p.add_argument("--shape", choices=SHAPES, help="a LoadTestShape instead of --users")
    p.add_argument("--target-ms", type=float, default=50.0,
                   help="with --shape step: the latency target of the goodput report (50 ms for one store x 7 "
                   "days; 2000 for 1,115 stores x 42 days)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="Locust's master and N worker processes on loopback (the master merges their results); "
                   "default: one process")
    p.add_argument("--stores", default="1-20", help="store ids the users ask for: 1-1115 or 1,2,7")
    add_api_key(p, "x-api-key by every user")
    p.add_argument("--out", help="results folder (default results/loadtest-<time>)")
    p.set_defaults(func=cmd_loadtest)
