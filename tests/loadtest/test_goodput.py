"""Goodput: the step-load shape's plan, the goodput of known step data (per-request log and Locust history),
the plot, and a short real step-load Locust run against a loopback server."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from loadtest import goodput as gp
from loadtest.report import goodput_report
from loadtest.runner import run_locust
from tests.support import Recorder

REPO = Path(__file__).resolve().parents[2]
TICKS = """
import json, sys
from locust.util.load_locustfile import load_locustfile
_, shapes = load_locustfile(sys.argv[1])
[shape] = shapes
assert type(shape).__name__ == "StepLoad", shape
out = []
for t in json.loads(sys.argv[2]):
    shape.get_run_time = lambda t=t: t
    out.append(shape.tick())
print(json.dumps(out))
"""


def ticks(times: list[float], **env: str) -> list:
    """The step shape's ticks at run times ``times`` (Locust loads the locustfile in a subprocess: it patches
    the standard library with gevent)."""
    proc = subprocess.run([sys.executable, "-c", TICKS, str(REPO / "loadtest" / "locustfile.py"), json.dumps(times)],
                          env={**os.environ, "STORECAST_SHAPE": "step", **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_step_shape_adds_users_each_step_and_stops() -> None:
    got = ticks([0, 4.9, 5, 12, 19.9, 20, 60], STORECAST_STEP_USERS="3", STORECAST_STEP_SECONDS="5",
                STORECAST_STEPS="4")
    assert got == [[3, 3], [3, 3], [6, 6], [9, 9], [12, 12], None, None]
    capped = ticks([0, 5, 10], STORECAST_STEP_USERS="3", STORECAST_STEP_SECONDS="5", STORECAST_STEPS="9",
                   STORECAST_MAX_USERS="7")
    assert capped == [[3, 3], [6, 6], None]


def write_log(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(gp.LOG_COLUMNS)
        w.writerows(rows)
    return path


def step_rows(k: int, offered: float, sent: int, slow: int, seconds: float = 10.0) -> list[tuple]:
    """``sent`` requests spread over the measured part (after 1 s) of step ``k``, ``slow`` of them at 80 ms."""
    return [(k, offered, seconds, 1 + 9 * i / sent, "business one store", 80.0 if i < slow else 20.0, 1)
            for i in range(sent)]


def test_goodput_from_request_log_has_the_known_answer(tmp_path: Path) -> None:
    rows = [(0, 10, 10, 0.5, "business one store", 900.0, 1)] * 5  # settling: left out
    rows += step_rows(0, 10, 90, 0)  # 100 %
    rows += step_rows(1, 20, 180, 1)  # 179 / 180 = 99.4 %: met
    rows += step_rows(2, 40, 300, 0)  # all fast, but 300 of the 360 offered were sent: 83 %, missed
    rows += step_rows(3, 80, 720, 0)  # met again (noise): goodput stays the last rate before the first miss
    rows += [(-1, 0, 10, 5.0, "business one store", 5000.0, 1)]  # after the last step: left out
    half = len(rows) // 2  # two processes' logs (workers) merge
    logs = [write_log(tmp_path / "requests-1.csv", rows[:half]), write_log(tmp_path / "requests-2.csv", rows[half:])]
    steps = gp.from_request_log(logs, target_ms=50)
    assert [(s.offered, s.expected, s.sent, s.within) for s in steps] == [
        (10, 90, 90, 90), (20, 180, 180, 179), (40, 360, 300, 300), (80, 720, 720, 720)]
    assert [round(s.share, 4) for s in steps] == [1.0, round(179 / 180, 4), round(300 / 360, 4), 1.0]
    assert gp.goodput(steps) == 20
    assert steps[1].p50_ms == 20.0 and steps[1].p99_ms == 20.0 and max(s.p99_ms for s in steps) == 20.0
    shed = write_log(tmp_path / "shed.csv", step_rows(0, 10, 90, 0)[:88] + [(0, 10, 10, 5.0, "shed", 1.0, 0)] * 2)
    assert gp.goodput(gp.from_request_log([shed], target_ms=50)) is None  # 88 / 90 within: the first step missed


HISTORY_HEAD = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%",
                "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count", "Total Failure Count"]


def test_goodput_from_locust_history_is_a_lower_bound(tmp_path: Path) -> None:
    def row(t: int, users: int, pct: list[int], total: int, failed: int) -> list:
        return [t, users, "", "Aggregated", 0, 0, *pct, total, failed]

    fast = [5, 6, 7, 8, 10, 12, 20, 30, 60, 70, 80]  # p99 30 ms <= 50
    tail = [5, 6, 7, 8, 10, 40, 60, 70, 90, 95, 99]  # only p95 <= 50: at least 95 % within
    rows = [row(100, 0, fast, 0, 0), row(101, 5, fast, 10, 0), row(102, 5, fast, 20, 0), row(110, 5, fast, 100, 0),
            row(111, 10, tail, 120, 0), row(120, 10, tail, 300, 2)]
    path = tmp_path / "locust_stats_history.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([HISTORY_HEAD, *rows])
    steps = gp.from_history(path, target_ms=50, user_rps=2)
    assert [(s.offered, s.sent, s.ok) for s in steps] == [(10, 100, 100), (20, 200, 198)]
    assert steps[0].within == 99  # p99 <= target: at least 99 % within, met
    assert steps[1].within == 190 - 2  # only p95 <= target: floor(0.95 x 200) - failures, missed
    assert gp.goodput(steps) == 10


def test_plot_marks_goodput_and_is_written(tmp_path: Path) -> None:
    steps = [gp.make_step(r, r * 10, r * 10, [10.0 + r] * (r * 10), 50) for r in (10, 20, 40)]
    steps.append(gp.make_step(80, 800, 800, [90.0] * 800, 50))
    assert gp.goodput(steps) == 40
    png = gp.plot(steps, 50, tmp_path / "plots" / "goodput.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "40.0" in gp.table(steps, 50).splitlines()[3]


def test_a_short_step_load_run_reports_its_goodput(tmp_path: Path) -> None:
    """Locust's step shape against a loopback server answering at once: three steps of 5, 10 and 15 req/s,
    every one met, so goodput is the last step's rate; the report writes its plot."""
    server = Recorder(lambda method, path, body: (200, {"predictions": []}))
    out = tmp_path / "run"
    try:
        run_locust(server.url, out, users=1, spawn_rate=1, duration="60s", classes=["Planner"], timeout=90,
                   env={"STORECAST_SHAPE": "step", "STORECAST_STEP_USERS": "1", "STORECAST_STEP_SECONDS": "3",
                        "STORECAST_STEPS": "3", "STORECAST_USER_RPS": "5",
                        "STORECAST_REQUEST_LOG": str(out / "requests.csv")})
    finally:
        server.close()
    steps, best, method = goodput_report(out, target_ms=50)
    assert method.startswith("exact")
    assert [s.offered for s in steps] == [5, 10, 15], gp.table(steps, 50)
    assert all(s.share >= 0.99 for s in steps) and best == 15, gp.table(steps, 50)
    assert (out / "goodput.png").stat().st_size > 0
    assert 75 <= len(server.requests) <= 110  # 5 + 10 + 15 req/s for 3 s each, paced (and the stop)
