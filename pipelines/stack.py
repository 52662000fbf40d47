"""The local stack: predictor shard(s) and transformer (and optionally ``mlflow server``) on loopback.

``LocalStack`` starts real processes, waits for model-level readiness and stops every child on exit;
``storecast serve`` wraps it for people, tests and the load test use it directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.contract import MODEL_NAME

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """One child process and where it listens."""

    name: str
    proc: subprocess.Popen
    http_port: int
    grpc_port: int | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"


@dataclass
class LocalStack:
    """Predictor shard(s) + transformer (+ MLflow server) as child processes on loopback."""

    model_uri: str
    tracking_uri: str | None = None
    shards: int = 1
    http_port: int = 0
    grpc_port: int = 0
    mlflow_server: bool = False
    log_dir: Path | None = None
    predictor_args: list[str] = field(default_factory=list)
    transformer_args: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    # Optional: the planners' dashboard (python -m dashboard) in front of the transformer; None = none.
    dashboard_args: list[str] | None = None
    dashboard_port: int = 0

    @property
    def transformer(self) -> Service:
        return next(s for s in self.services if s.name == "transformer")

    @property
    def predictors(self) -> list[Service]:
        return [s for s in self.services if s.name.startswith("predictor")]

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        return env

    def _spawn(self, name: str, argv: list[str], http_port: int, grpc_port: int | None = None) -> Service:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{name}.log"
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(argv, env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        service = Service(name, proc, http_port, grpc_port, log)
        self.services.append(service)
        return service

    def start(self, timeout: float = 120.0) -> LocalStack:
        """Start every process and wait until each model is ready; on failure stop all and raise."""
        try:
            if self.mlflow_server:
                self._start_mlflow(timeout)
            grpc_hosts = []
            for k in range(self.shards):
                http, grpc = free_port(), free_port()
                shard = ["--shard", f"{k}/{self.shards}"] if self.shards > 1 else []
                self._spawn(f"predictor-{k}" if self.shards > 1 else "predictor",
                            [sys.executable, "-m", "predictor", "--host", HOST, "--model_uri", self.model_uri,
                             "--http_port", str(http), "--grpc_port", str(grpc), *shard, *self.predictor_args],
                            http, grpc)
                grpc_hosts.append(f"{HOST}:{grpc}")
            http = self.http_port or free_port()
            grpc = self.grpc_port or free_port()
            self._spawn("transformer", [sys.executable, "-m", "transformer", "--host", HOST, "--predictor_hosts",
                                        ",".join(grpc_hosts), "--shards", str(self.shards), "--http_port", str(http),
                                        "--grpc_port", str(grpc), *self.transformer_args], http, grpc)
            for s in self.services:
                if s.name != "mlflow":
                    wait_ready(f"{s.url}/v2/models/{MODEL_NAME}/ready", s, timeout)
            if self.dashboard_args is not None:
                self._start_dashboard(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_mlflow(self, timeout: float) -> None:
        backend = self.tracking_uri or "sqlite:///mlflow.db"
        if backend.startswith("http"):
            raise ValueError("--mlflow-server serves a local store: give a sqlite:/// tracking URI")
        port = free_port()
        artifacts = Path(self.log_dir or ".") / "mlartifacts"
        svc = self._spawn("mlflow", [str(Path(sys.executable).parent / "mlflow"), "server", "--host", HOST, "--port",
                                     str(port), "--workers", "1", "--backend-store-uri", backend, "--serve-artifacts",
                                     "--artifacts-destination", str(artifacts)], port)
        wait_ready(f"{svc.url}/health", svc, timeout)
        self.tracking_uri = svc.url

    # ---- the optional dashboard (issue 15) -------------------------------------------------------
    @property
    def dashboard(self) -> Service | None:
        return next((s for s in self.services if s.name == "dashboard"), None)

    def _start_dashboard(self, timeout: float) -> None:
        port = self.dashboard_port or free_port()
        registry = ["--tracking-uri", self.tracking_uri] if self.tracking_uri else []
        svc = self._spawn("dashboard", [sys.executable, "-m", "dashboard", "--host", HOST, "--port", str(port),
                                        "--api-url", self.transformer.url, *registry, *self.dashboard_args], port)
        wait_ready(f"{svc.url}/healthz", svc, timeout)

    def stop(self) -> None:
        """SIGTERM every child (its whole process group), then SIGKILL what is left after 10 s."""
        for s in reversed(self.services):
            if s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                    os.killpg(s.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for s in self.services:
            try:
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                    os.killpg(s.proc.pid, signal.SIGKILL)
                s.proc.wait(timeout=10)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(url: str, service: Service, timeout: float) -> None:
    """Poll ``url`` until 200; raise with the tail of the service's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}{_tail(service)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{service.name} not ready at {url} after {timeout:.0f} s{_tail(service)}")


def _tail(service: Service, lines: int = 15) -> str:
    if service.log is None or not service.log.exists():
        return ""
    tail = service.log.read_text(errors="replace").splitlines()[-lines:]
    return f"; see {service.log}; log tail:\n" + "\n".join(tail)

