"""Shared by the predictor benchmarks: a trained model version, server processes, readiness.

The version is the real Rossmann data (all 1,115 stores) when ``../shared/data`` has it, else 1,115
synthetic stores; it is trained once into a work folder (``--workdir`` keeps it for the next run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PREDICTOR = [sys.executable, "-m", "predictor"]
TRANSFORMER = [sys.executable, "-m", "transformer"]
TRIVIAL = [sys.executable, str(Path(__file__).with_name("predictor_trivial.py"))]
MODEL = "storecast"


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--workdir", help="keep the trained version here and reuse it next time "
                        "(default: a temporary folder)")
    parser.add_argument("--tracking-uri", help="use this MLflow store (alias champion) instead of training")
    parser.add_argument("--stores", type=int, default=None, help="train only the first N stores")
    return parser


@dataclass
class Version:
    """A registered version to benchmark."""

    tracking_uri: str
    model_uri: str
    stores: int
    data: str
    workdir: Path
    summary: dict = field(default_factory=dict)


def prepare_version(args: argparse.Namespace) -> Version:
    """Train all stores once (or reuse ``--workdir`` / ``--tracking-uri``) and register @champion."""
    from tests.support import shared_rossmann

    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="storecast-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.workdir:
        import atexit

        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    if args.tracking_uri:
        return Version(args.tracking_uri, "models:/storecast@champion", -1, "given tracking store", workdir)
    db = workdir / "mlflow.db"
    info = workdir / "train.json"
    uri = f"sqlite:///{db}"
    if db.exists() and info.exists():
        out = json.loads(info.read_text())
        print(f"reusing the version trained in {workdir}: {out['data']}", flush=True)
        return Version(uri, "models:/storecast@champion", out["stores"], out["data"], workdir, out.get("metrics", {}))
    data = shared_rossmann()
    if data is not None:
        label = "real Rossmann data"
    else:
        data = workdir / "synthetic.csv.gz"
        label = "synthetic data (../shared/data/rossmann not found)"
        subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "synth", "--stores", "1115", "--seed", "1",
                        "--out", str(data)], check=True, cwd=workdir)
    stores = ["--limit", str(args.stores)] if args.stores else []
    print(f"training every store of the {label} once into {workdir} ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--data", str(data), "--tracking-uri", uri, "--alias",
         "champion", "--json", "--no-progress", "--workers", str(os.cpu_count() or 1), *stores],
        check=True, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"trained {out['stores']} stores in {time.perf_counter() - t0:.1f} s", flush=True)
    out["data"] = label
    info.write_text(json.dumps(out))
    return Version(uri, "models:/storecast@champion", out["stores"], label, workdir, out.get("metrics", {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A ModelServer subprocess on loopback ports."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    started: float
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.01) -> float:
        """Seconds from process start until ``/v2/models/storecast/ready`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/{MODEL}/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(poll)
        raise TimeoutError(f"not ready after {timeout} s; see {self.log}")

    def rss_mb(self) -> float:
        import psutil

        proc = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(command: list[str], log: Path, env: dict[str, str] | None = None, extra: list[str] = ()) -> Server:
    """Start a server command with fresh loopback ports (its output goes to ``log``)."""
    http_port, grpc_port = free_port(), free_port()
    full = [*command, "--host", "127.0.0.1", "--http_port", str(http_port), "--grpc_port", str(grpc_port), *extra]
    with open(log, "wb") as fh:
        started = time.perf_counter()
        # the benchmarks' business requests use the default window (today), years after the Rossmann data
        # the version ends with: widen the servers' --max-days-ahead so they are answered as before (6,000
        # days, to 2031; the version check evaluates every store that far, and far beyond it a store's
        # interval overflows, so the version would be refused)
        environ = {**os.environ, "STORECAST_MAX_DAYS_AHEAD": "6000", **(env or {})}
        proc = subprocess.Popen(full, cwd=REPO, env=environ, stdout=fh, stderr=subprocess.STDOUT)
    return Server(proc, http_port, grpc_port, started, log)


@contextlib.contextmanager
def stack(version: Version, name: str, protocol: str = "grpc-v2") -> Iterator[tuple[Server, Server]]:
    """A predictor and a transformer in front of it (``protocol`` between them) serving ``version``,
    both ready; stopped on leaving. Logs: ``<workdir>/<name>-predictor.log`` and ``-transformer.log``."""
    env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
    pred = start(PREDICTOR, version.workdir / f"{name}-predictor.log", env)
    front = None
    try:
        pred.wait_ready(600)
        port = pred.grpc_port if protocol == "grpc-v2" else pred.http_port
        front = start(TRANSFORMER, version.workdir / f"{name}-transformer.log", env,
                      ["--predictor_host", f"127.0.0.1:{port}", "--predictor_protocol", protocol])
        front.wait_ready(120)
        yield pred, front
    finally:
        for s in (front, pred):
            if s is not None:
                s.stop()
