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
