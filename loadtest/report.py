"""The report of a load test: what a run achieved (``summarize``) and ``loadtest.png`` (``plot``), from Locust's CSV
output."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Summary:
    """What a run achieved: successes per second and their latency; shed and failed requests."""

    seconds: float
    success_rps: float
    shed_rps: float
    failures: int
    timeouts: int
    requests: int
    p50_ms: float
    p99_ms: float
    rows: list[dict[str, Any]]

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def line(self) -> str:
        return (f"success throughput {self.success_rps:.1f} req/s, p50 {self.p50_ms:.0f} ms, p99 {self.p99_ms:.0f} ms "
                f"(successful requests), shed {self.shed_rps:.1f} req/s, error rate {self.error_rate:.2%}, "
                f"timeouts {self.timeouts}")


def summarize(out: Path) -> Summary:
    """Success throughput and latency from ``locust_stats.csv`` (rows named ``shed`` are load shedding)."""
    with open(out / "locust_stats.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Name"] != "Aggregated"]
    with open(out / "locust_stats_history.csv") as fh:
        stamps = [int(r["Timestamp"]) for r in csv.DictReader(fh)]
    seconds = max(1.0, (max(stamps) - min(stamps))) if stamps else 1.0
    ok = [r for r in rows if r["Name"] != "shed"]
    shed = sum(int(r["Request Count"]) for r in rows if r["Name"] == "shed")
    successes = sum(int(r["Request Count"]) - int(r["Failure Count"]) for r in ok)
    busiest = max(ok, key=lambda r: int(r["Request Count"]), default=None)
    timeouts = 0
    if (out / "locust_failures.csv").exists():
        with open(out / "locust_failures.csv") as fh:
            for r in csv.DictReader(fh):
                if "timed out" in r["Error"].lower() or "timeout" in r["Error"].lower():
                    timeouts += int(r["Occurrences"])
    return Summary(seconds=seconds, success_rps=successes / seconds, shed_rps=shed / seconds,
                   failures=sum(int(r["Failure Count"]) for r in rows), timeouts=timeouts,
                   requests=sum(int(r["Request Count"]) for r in rows),
                   p50_ms=float(busiest["50%"]) if busiest else float("nan"),
                   p99_ms=max((float(r["99%"]) for r in ok if int(r["Request Count"])), default=float("nan")),
                   rows=rows)


def plot(out: Path) -> Path:
    """``loadtest.png``: offered requests/s, successes/s and failures/s, and p50/p95/p99 of the aggregate,
    over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "locust_stats_history.csv") as fh:
        hist = [r for r in csv.DictReader(fh) if r["Name"] == "Aggregated"]
    t0 = int(hist[0]["Timestamp"]) if hist else 0
    t = [int(r["Timestamp"]) - t0 for r in hist]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "N/A") else float("nan") for r in hist]

    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6.5), dpi=110, sharex=True)
    requests, failures = col("Requests/s"), col("Failures/s")
    a.plot(t, requests, label="offered requests/s", color="tab:gray")
    a.plot(t, [r - f for r, f in zip(requests, failures, strict=True)], label="successes/s", color="tab:green")
    a.plot(t, failures, label="failures/s (shed included)", color="tab:red")
    a.plot(t, col("User Count"), label="users", color="black", linestyle=":")
    a.set_ylabel("per second / users")
    a.legend(loc="upper left")
    a.grid(alpha=0.3)
    for q, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
        b.plot(t, col(q), linestyle=style, label=f"p{q[:-1]}")
    b.set_ylabel("latency (ms), all requests")
    b.set_xlabel("seconds")
    b.legend(loc="upper left")
    b.grid(alpha=0.3)
    fig.suptitle(f"storecast load test: {out.name}")
    fig.tight_layout()
    path = out / "loadtest.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def goodput_report(out: Path, target_ms: float, user_rps: float | None = None, settle: float = 1.0,
                   names: set[str] | None = None) -> tuple[list, float | None, str]:
    """The goodput of a step-load run in ``out`` (``STORECAST_SHAPE=step``): exact from the request logs
    ``requests*.csv`` (``STORECAST_REQUEST_LOG``, workers' files merged) when there are any, else approximate
    from ``locust_stats_history.csv`` (needs ``user_rps``). Writes ``goodput.png``; returns the steps, the
    goodput (req/s, None when even the first step missed) and the method used."""
    from loadtest import goodput as gp

    logs = sorted(out.glob("requests*.csv"))
    if logs:
        steps, method = gp.from_request_log(logs, target_ms, settle, names), "exact, per-request log"
    else:
        if user_rps is None:
            raise ValueError(f"no request log in {out}: the history approximation needs the users' request rate")
        steps = gp.from_history(out / "locust_stats_history.csv", target_ms, user_rps)
        method = "approximate, from Locust's percentile history (a lower bound)"
    best = gp.goodput(steps)
    gp.plot(steps, target_ms, out / "goodput.png", f"storecast goodput ({method.split(',')[0]}), {out.name}")
    return steps, best, method


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest.report OUT --target-ms 50``: the goodput table and ``OUT/goodput.png``."""
    import argparse

    from loadtest import goodput as gp

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out", type=Path, help="the folder of a step-load run (Locust's CSV files, request logs)")
    p.add_argument("--target-ms", type=float, default=50.0, help="latency target (50 one store x 7 days, 2000 for "
                   "1,115 stores x 42 days)")
    p.add_argument("--user-rps", type=float, help="requests/s of each user (without a request log)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds left out at the start of each step")
    p.add_argument("--names", help="only these request names, comma-separated (e.g. 'predictor v2 week')")
    args = p.parse_args(argv)
    names = {n.strip() for n in args.names.split(",")} if args.names else None
    steps, best, method = goodput_report(args.out, args.target_ms, args.user_rps, args.settle, names)
    print(gp.table(steps, args.target_ms))
    print(f"goodput: {'none' if best is None else f'{best:g} req/s'} ({gp.SHARE:.0%} within {args.target_ms:g} ms; "
          f"{method}); plot {args.out / 'goodput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
