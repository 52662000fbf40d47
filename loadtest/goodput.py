"""Goodput: the highest offered rate at which at least 99 % of requests succeed within a latency target.

A step-load run offers one rate per step (``STORECAST_SHAPE=step`` in the locustfile, or the open-loop
generator of ``bench/goodput.py``). Per step: the share of the requests *offered* that succeeded within the
target, and p50/p95/p99 of the successes. A request the generator should have sent but did not (a Locust user
still waiting for its last answer) counts as a miss, so a closed-loop user falling behind cannot hide
overload. Goodput is the offered rate of the last step before the first step that misses the share: the
rate a platform team can plan one replica for.

Two sources for a Locust run:
- ``from_request_log``: exact, from the per-request log the locustfile writes when ``STORECAST_REQUEST_LOG``
  names a file (one row per request: step, offered rate, latency, success);
- ``from_history``: an approximation from Locust's ``--csv-full-history`` file. Its percentiles cover
  Locust's last 10 s of all requests, not a step; the share within the target is bounded from below by the
  highest reported percentile under the target. Use steps of at least 10 s.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SHARE = 0.99  # of the requests offered, within the target
TARGETS_MS = {"one store x 7 days": 50.0, "1,115 stores x 42 days": 2000.0}
LOG_COLUMNS = ["step", "offered", "step_seconds", "since_step", "name", "ms", "ok"]


@dataclass
class Step:
    """One offered rate and what came of it."""

    offered: float  # requests per second
    expected: int  # requests the offered rate asks for in the measured window
    sent: int
    ok: int
    within: int  # successes within the target (exact, or a lower bound from percentiles)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    load: float | None = None  # 1-minute load average at the end of the step

    @property
    def share(self) -> float:
        """Successes within the target over the requests offered (or sent, when more were sent)."""
        n = max(self.expected, self.sent)
        return self.within / n if n else 0.0


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank; nan when empty."""
    if not sorted_ms:
        return float("nan")
    return float(sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms)) - 1))])


def make_step(offered: float, expected: int, sent: int, ok_ms: Iterable[float], target_ms: float,
              load: float | None = None) -> Step:
    """A step from the latencies (ms) of its successes."""
    lat = sorted(ok_ms)
    return Step(offered, expected, sent, len(lat), sum(1 for x in lat if x <= target_ms), percentile(lat, 0.5),
                percentile(lat, 0.95), percentile(lat, 0.99), load)


def goodput(steps: Iterable[Step], share: float = SHARE) -> float | None:
    """The offered rate of the last step (by rate) before the first one under ``share``; None if the first is."""
    best = None
    for step in sorted(steps, key=lambda s: s.offered):
        if step.share < share:
            break
        best = step.offered
    return best


def from_request_log(paths: Iterable[Path], target_ms: float, settle: float = 1.0,
                     names: set[str] | None = None) -> list[Step]:
    """Steps from the locustfile's request logs (one per Locust process; merged). The first ``settle`` seconds
    of each step are left out. ``names`` keeps only those requests (``shed`` ones count for every name, as
    misses); their share of the offered rate is taken as their share of the requests sent."""
    by_step: dict[int, dict] = {}
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if int(row["step"]) < 0 or float(row["since_step"]) < settle:  # after the last step, or settling
                    continue
                s = by_step.setdefault(int(row["step"]), {"offered": float(row["offered"]), "all": 0, "sent": 0,
                                                          "seconds": float(row["step_seconds"]), "ok": []})
                s["all"] += 1
                if names is not None and row["name"] not in names | {"shed"}:
                    continue
                s["sent"] += 1
                if row["ok"] == "1":
                    s["ok"].append(float(row["ms"]))
    steps = []
    for _, s in sorted(by_step.items()):
        expected = s["offered"] * max(0.0, s["seconds"] - settle) * (s["sent"] / s["all"] if s["all"] else 1.0)
        steps.append(make_step(s["offered"], round(expected), s["sent"], s["ok"], target_ms))
    return steps


PERCENTILE_COLUMNS = (("50%", 0.50), ("66%", 0.66), ("75%", 0.75), ("80%", 0.80), ("90%", 0.90), ("95%", 0.95),
                      ("98%", 0.98), ("99%", 0.99), ("99.9%", 0.999), ("99.99%", 0.9999), ("100%", 1.0))


def from_history(path: Path, target_ms: float, user_rps: float) -> list[Step]:
    """Approximate steps from ``*_stats_history.csv`` (rows ``Aggregated``): a step is a run of seconds with
    one user count; offered = users x ``user_rps``. Counts come from the cumulative columns; the share
    within the target is a lower bound: the highest percentile column at or under the target, of all
    requests, minus the failures."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Name"] == "Aggregated"]
    groups: list[list[dict]] = []
    for r in rows:
        if groups and groups[-1][0]["User Count"] == r["User Count"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    steps, before = [], (0, 0)
    for group in groups:
        users, last = int(group[0]["User Count"]), group[-1]
        total, failed = int(last["Total Request Count"]), int(last["Total Failure Count"])
        sent, bad = total - before[0], failed - before[1]
        before = (total, failed)
        if not users:
            continue
        seconds = int(last["Timestamp"]) - int(group[0]["Timestamp"]) + 1
        below = max((q for col, q in PERCENTILE_COLUMNS if _ms(last[col]) <= target_ms), default=0.0)
        ok = sent - bad
        steps.append(Step(users * user_rps, round(users * user_rps * seconds), sent, ok,
                          max(0, min(ok, math.floor(below * sent) - bad)), _ms(last["50%"]), _ms(last["95%"]),
                          _ms(last["99%"])))
    return steps


def _ms(text: str) -> float:
    return float(text) if text not in ("", "N/A") else float("nan")


def table(steps: Sequence[Step], target_ms: float) -> str:
    """A text table of the steps."""
    lines = [f"{'offered/s':>10} {'sent':>7} {'ok':>7} {f'<= {target_ms:g} ms':>10} {'p50':>8} {'p95':>8} "
             f"{'p99':>8} {'load':>5}"]
    for s in steps:
        load = f"{s.load:5.2f}" if s.load is not None else "    -"
        lines.append(f"{s.offered:10.1f} {s.sent:7d} {s.ok:7d} {s.share:10.2%} {s.p50_ms:8.1f} {s.p95_ms:8.1f} "
                     f"{s.p99_ms:8.1f} {load}")
    return "\n".join(lines)


def plot(steps: Sequence[Step], target_ms: float, path: Path, title: str, share: float = SHARE,
         note: str = "") -> Path:
    """Latency percentiles (log scale, with the target) and the share within the target (with ``share``)
    against offered load; the goodput is marked on both; ``note`` (the machine's load) under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(steps, key=lambda s: s.offered)
    x = [s.offered for s in steps]
    best = goodput(steps, share)
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6.5), dpi=110, sharex=True)
    for attr, style, label in (("p50_ms", "-", "p50"), ("p95_ms", "--", "p95"), ("p99_ms", ":", "p99")):
        a.plot(x, [getattr(s, attr) for s in steps], style, marker="o", label=label)
    a.axhline(target_ms, color="tab:red", linewidth=1, label=f"target {target_ms:g} ms")
    a.set_yscale("log")
    a.set_ylabel("latency of successes (ms)")
    b.plot(x, [100 * s.share for s in steps], marker="o", color="tab:green", label="succeeded within target")
    b.axhline(100 * share, color="tab:red", linewidth=1, label=f"{share:.0%}")
    b.set_ylabel("% of offered requests")
    b.set_xlabel("offered requests/s")
    b.set_ylim(max(0.0, min([100 * s.share for s in steps] + [90.0]) - 5), 100.5)
    for ax in (a, b):
        if best is not None:
            ax.axvline(best, color="black", linestyle="-.", linewidth=1, label=f"goodput {best:g} req/s")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{title}: goodput {'none' if best is None else f'{best:g} req/s'}" + (f"\n{note}" if note else ""),
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
