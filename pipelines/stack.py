"""The local stack: predictor shard(s) and transformer (and optionally ``mlflow server``) on loopback.

``LocalStack`` starts real processes, waits for model-level readiness and stops every child on exit;
``storecast serve`` wraps it for people, tests and the load test use it directly.

With ``auth_file`` the stack is protected as a deployment is: the transformer checks that file, and every
predictor checks a copy of it (``predictor-auth.yaml``, made at start) holding one more identity, the
transformer's own (``local-transformer``: ``forecast``, no rate limit), whose fresh key the transformer
reads from a file only this user may read (``STORECAST_PREDICTOR_API_KEY_FILE``). So a predictor whose
file denies anonymous callers serves the transformer at full rate. The copy is not re-read when
``auth_file`` changes: restart the stack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.contract import MODEL_NAME

HOST = "127.0.0.1"
SERVICE = "local-transformer"  # the transformer's identity (and tier) in the predictors' auth file


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
    # Access: the transformer's auth file; the predictors get a copy with the transformer's own identity
    auth_file: str | Path | None = None
    predictor_auth_file: Path | None = None  # that copy, made at start
    service_key_file: Path | None = None  # the transformer's key (mode 0600), made at start
    _scratch: Path | None = None  # where those go without a log_dir (removed at stop)

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

    def _spawn(self, name: str, argv: list[str], http_port: int, grpc_port: int | None = None,
               env: dict[str, str] | None = None) -> Service:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{name}.log"
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(argv, env=env or self._env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        service = Service(name, proc, http_port, grpc_port, log)
        self.services.append(service)
        return service

    def start(self, timeout: float = 120.0) -> LocalStack:
        """Start every process and wait until each model is ready; on failure stop all and raise."""
        try:
            if self.mlflow_server:
                self._start_mlflow(timeout)
            predictor_access, transformer_access, transformer_env = self._protect()
            grpc_hosts = []
            for k in range(self.shards):
                http, grpc = free_port(), free_port()
                shard = ["--shard", f"{k}/{self.shards}"] if self.shards > 1 else []
                self._spawn(f"predictor-{k}" if self.shards > 1 else "predictor",
                            [sys.executable, "-m", "predictor", "--host", HOST, "--model_uri", self.model_uri,
                             "--http_port", str(http), "--grpc_port", str(grpc), *shard, *predictor_access,
                             *self.predictor_args],
                            http, grpc)
                grpc_hosts.append(f"{HOST}:{grpc}")
            http = self.http_port or free_port()
            grpc = self.grpc_port or free_port()
            self._spawn("transformer", [sys.executable, "-m", "transformer", "--host", HOST, "--predictor_hosts",
                                        ",".join(grpc_hosts), "--shards", str(self.shards), "--http_port", str(http),
                                        "--grpc_port", str(grpc), *transformer_access, *self.transformer_args],
                        http, grpc, transformer_env)
            for s in self.services:
                if s.name != "mlflow":
                    wait_ready(f"{s.url}/v2/models/{MODEL_NAME}/ready", s, timeout)
            if self.dashboard_args is not None:
                self._start_dashboard(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _protect(self) -> tuple[list[str], list[str], dict[str, str] | None]:
        """With ``auth_file``: the predictors' copy of it with the transformer's own identity, and the
        transformer's key file; the arguments of the predictors and the transformer, and the transformer's
        environment. Without: nothing (the stack is open, on loopback)."""
        if self.auth_file is None:
            return [], [], None
        import yaml

        from pipelines.cli.auth import new_key
        from serving.access.auth_file import hash_key, load, parse

        source = Path(self.auth_file)
        load(source)  # the stack's file must be valid (AuthFileError names the field)
        doc = yaml.safe_load(source.read_text())
        if self.log_dir is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="storecast-stack-"))
        folder = self.log_dir or self._scratch
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        key = new_key()
        doc["tiers"][SERVICE] = {"requests_per_second": None, "concurrent": None, "permissions": ["forecast"],
                                 "description": "the local stack's transformer: bounded by its own --max-inflight"}
        doc["identities"] = [*(i for i in doc.get("identities") or [] if not isinstance(i, dict)
                               or i.get("name") != SERVICE),
                             {"name": SERVICE, "tier": SERVICE, "key_sha256": hash_key(key),
                              "description": "made by the local stack at start; its key is in transformer.key"}]
        text = (f"# made by the local stack from {source.name} (not re-read: restart the stack after changing it), "
                "with the transformer's own identity\n" + yaml.safe_dump(doc, sort_keys=False))
        parse(text, str(folder / "predictor-auth.yaml"))
        self.predictor_auth_file = _private(folder / "predictor-auth.yaml", text)
        self.service_key_file = _private(folder / "transformer.key", key + "\n")
        env = {k: v for k, v in self._env().items() if k != "STORECAST_PREDICTOR_API_KEY"}
        env["STORECAST_PREDICTOR_API_KEY_FILE"] = str(self.service_key_file)
        return (["--auth-file", str(self.predictor_auth_file)], ["--auth-file", str(source)], env)

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
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _private(path: Path, text: str) -> Path:
    """``text`` written to ``path`` (replaced), readable by this user only."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
    return path


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

