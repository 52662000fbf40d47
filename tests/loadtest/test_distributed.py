"""``storecast loadtest --workers N``: Locust's master and workers on loopback, for real, against a stand-in
transformer.

* both worker processes send requests (the server maps each connection to the process that opened it), the master
  none; the master's CSV counts what the server received from both, and the report and plot are written from it;
* every Locust process listens on loopback only, logs into the results folder, and is gone when the run ends;
* interrupted (SIGINT, as Ctrl-C), the command stops the master and every worker.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serving.contract import FORECAST_COMPLETED
from tests.support import BIN, LoopbackServer, QuietHandler, wait_until


class Transformer(LoopbackServer):
    """Answers like the transformer (200 with a forecast; a CloudEvent answered as forecast.completed) and
    counts the requests of each process that connected, found by the client's port."""

    def __init__(self) -> None:
        self.by_pid: Counter[int | None] = Counter()
        self.lock = threading.Lock()
        fake = self

        class Handler(QuietHandler):
            pid: int | None = None

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.pid is None:  # once per connection: Locust's users keep theirs open
                    self.pid = owner(self.client_address[1], fake.server.server_port)
                with fake.lock:
                    fake.by_pid[self.pid] += 1
                body = json.dumps({"predictions": [{"storeId": "1", "forecast": [1.0] * 7}]}).encode()
                self.send_response(200)
                if "ce-type" in self.headers:
                    self.send_header("ce-type", FORECAST_COMPLETED)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)

    def senders(self) -> set[int | None]:
        with self.lock:
            return set(self.by_pid)


def owner(client_port: int, server_port: int) -> int | None:
    """The process holding the client end of a loopback connection."""
    for c in psutil.net_connections("tcp"):
        if c.laddr and c.raddr and c.laddr.port == client_port and c.raddr.port == server_port:
            return c.pid
    return None


@pytest.fixture
def server() -> Iterator[Transformer]:
    s = Transformer()
    yield s
    s.close()


def loadtest(url: str, out: Path, duration: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "storecast"), "loadtest", "--host", url, "--workers", "2", "--users", "4",
                             "--spawn-rate", "4", "--user-rps", "5", "--duration", duration, "--classes",
                             "Planner,Event", "--stores", "1-5", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent)


class Seen(dict):
    """Locust processes by pid, each with its role (master, worker) as its command line said."""

    def add(self, proc: psutil.Process) -> None:
        if proc.pid not in self:
            argv = proc.cmdline()
            self[proc.pid] = proc, "master" if "--master" in argv else "worker" if "--worker" in argv else str(argv)

    def roles(self) -> Counter[str]:
        return Counter(r for _, r in self.values())

    def pids(self, role: str) -> set[int]:
        return {pid for pid, (_, r) in self.items() if r == role}


def locusts(cli: subprocess.Popen) -> list[psutil.Process]:
    """The CLI's Locust processes (none once they are gone)."""
    try:
        return psutil.Process(cli.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def watch(cli: subprocess.Popen, seen: Seen, listening: set[str]) -> None:
    """Until the CLI exits: every Locust process it starts, and the addresses they listen on."""
    while cli.poll() is None:
        for proc in locusts(cli):
            try:
                seen.add(proc)
                sockets = getattr(proc, "net_connections", None) or proc.connections  # psutil 6 renamed it
                listening.update(c.laddr.ip for c in sockets("tcp") if c.status == psutil.CONN_LISTEN)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)


def stop_all(cli: subprocess.Popen, seen: Seen) -> list[str]:
    """After a test: the CLI and the Locust processes it started, killed if still running (their roles)."""
    if cli.poll() is None:
        cli.kill()
        cli.communicate()
    left = []
    for proc, role in seen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
                left.append(role)
    return left


def test_two_workers_send_the_load_and_the_master_reports_it(server: Transformer, tmp_path: Path) -> None:
    out = tmp_path / "results"
    cli = loadtest(server.url, out, "6s")
    seen = Seen()
    listening: set[str] = set()
    try:
        watch(cli, seen, listening)
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        left = stop_all(cli, seen)
    assert cli.returncode == 0, stderr[-3000:]
    assert not left, f"Locust processes outlived the run: {left}"

    assert seen.roles() == {"master": 1, "worker": 2}, seen.roles()
    assert server.senders() == seen.pids("worker"), (server.by_pid, seen)  # both workers sent, nobody else
    assert min(server.by_pid.values()) > 10
    assert listening <= {"127.0.0.1"} and listening, listening  # the master's port, on loopback only

    with open(out / "locust_stats.csv") as fh:
        total = next(int(r["Request Count"]) for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    received = sum(server.by_pid.values())
    assert total > max(server.by_pid.values()), "the master's statistics hold one worker's requests only"
    assert abs(total - received) <= max(2, received // 50), (total, received)  # both workers' requests, merged
    assert "2 workers connected" in (out / "locust.log").read_text()
    for name in ("worker-1.log", "worker-2.log", "report.html", "loadtest.png", "locust_stats_history.csv"):
        assert (out / name).exists(), name
    assert "success throughput" in stdout and "error rate 0.00%" in stdout, stdout


def test_ctrl_c_stops_the_master_and_every_worker(server: Transformer, tmp_path: Path) -> None:
    cli = loadtest(server.url, tmp_path / "results", "120s")  # no registry: --host needs none
    seen = Seen()
    try:
        assert wait_until(lambda: len(server.senders()) == 2, timeout=90), server.by_pid
        for proc in locusts(cli):
            seen.add(proc)
        assert seen.roles() == {"master": 1, "worker": 2}, seen
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=60)
    finally:
        left = stop_all(cli, seen)
    assert cli.returncode == 130
    assert not left, f"still running after Ctrl-C: {left}"
