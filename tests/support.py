"""What the tests share: processes on loopback, trained registries, stock Prophet as the oracle, clients.

One module on purpose (issue 22: shared helpers in one support module), in sections: the
processes (``run_cli``, ``stop``, ``wait_until``, ``Recorder``, ``LoopbackServer``), the predictor and
transformer as real servers (``Predictor``, ``Transformer``, ``make_registry``), the session's
served stack (``served``), the retrain service (``start_service``, ``send``, ``wait_job``), the
dashboard (``start_dashboard``), stock Prophet's forecast (``stock_forecast``), the real Rossmann data
(``shared_rossmann``), a snapshot's plain evaluation (``evaluate``), Prometheus text (``metric``), a
random parameter table (``random_table``), an OIDC issuer (``Issuer``), an ASGI app under uvicorn
(``UvicornServer``), the Kubernetes manifests (``render``, ``schema_errors``, ``find``, ``workloads``) and
KubeRay's API (``rayjob_template``, ``kubeconfig``). It is longer than 400 lines for that reason: every
section is small, and a test imports only from here (never from another test module).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import numpy as np
import uvicorn
import yaml
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from mlflow import MlflowClient

from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.retrain.jobstore import FINISHED
from pipelines.stack import LocalStack, Service, free_port, wait_ready
from pipelines.training.export import future_frame
from pipelines.training.intervals import default_grid
from predictor.table import ParamTable
from serving.contract import MODEL_NAME as MODEL

if TYPE_CHECKING:
    import jsonschema

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def stop(proc: subprocess.Popen) -> None:
    """Terminate a child process, killing it if it does not exit promptly."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``storecast`` console script; fail the test with its stderr if it fails."""
    proc = subprocess.run([str(BIN / "storecast"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class Recorder:
    """A real HTTP server on loopback that records every request and answers with ``respond``.

    ``respond(method, path, body) -> (status, json_body)``; the default answers 202 with no body.
    """

    def __init__(self, respond=None) -> None:
        self.requests: list[dict] = []
        self.respond = respond or (lambda method, path, body: (202, None))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.requests.append({"method": self.command, "path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, answer = recorder.respond(self.command, self.path, body)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        """The CloudEvents received (binary mode): type and data."""
        return [{"type": r["headers"].get("ce-type"), "id": r["headers"].get("ce-id"),
                 "data": json.loads(r["body"] or b"null")} for r in self.requests if "ce-type" in r["headers"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``predicate`` every 0.1 s; False when it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --- loopback HTTP servers ----------------------------------------------------
class QuietHandler(BaseHTTPRequestHandler):
    """A handler that logs nothing and answers with ``_send``."""

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class LoopbackServer:
    """Base of the tests' stand-in servers: ``serve(Handler)`` on 127.0.0.1, ``close()``."""

    server: ThreadingHTTPServer
    url: str

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the dashboard ---------------------------------------------------------------
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM = "/usr/bin/chromium"


def start_dashboard(*args: str, log: Path, env: dict[str, str] | None = None) -> Service:
    """``python -m dashboard`` on a free loopback port (run from the source tree), ready at /healthz."""
    port = free_port()
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--port", str(port), *args], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    service = Service("dashboard", proc, port, log=log)
    try:
        wait_ready(f"{service.url}/healthz", service, 60)
    except BaseException:
        stop_service(service)
        raise
    return service


def stop_service(service: Service) -> None:
    stop(service.proc)


Answer = tuple[int, object, dict[str, str]]


class FakeUpstream(LoopbackServer):
    """A real HTTP server on loopback answering ``respond(method, path, headers, body) -> (status, json, headers)``.

    For what the real stack cannot produce on demand (a 429 from a rate limiter); records every request.
    """

    def __init__(self, respond: Callable[[str, str, dict[str, str], bytes], Answer]) -> None:
        self.requests: list[dict] = []
        fake = self

        class Handler(QuietHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
                status, answer, extra = respond(self.command, self.path, headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.serve(Handler)


# --- the retrain service (FINISHED: the job states that end a job, pipelines.retrain.jobstore's) -------
def train(data: Path, uri: str, model: str, root: Path, *extra: str) -> str:
    """A champion of ``data`` (every store); returns its version."""
    run_cli("train", "--data", str(data), "--tracking-uri", uri, "--model-name", model, "--alias", "champion",
            "--workers", "1", "--no-progress", *extra, cwd=root)
    return alias(uri, model)


def alias(uri: str, model: str, name: str = "champion") -> str | None:
    try:
        return str(MlflowClient(uri).get_model_version_by_alias(model, name).version)
    except Exception:
        return None


def versions(uri: str, model: str) -> list[str]:
    return sorted((str(v.version) for v in MlflowClient(uri).search_model_versions(f"name='{model}'")), key=int)


def start_service(data: Path | str, uri: str, model: str, root: Path, *extra: str, env: dict | None = None,
                  name: str = "retrain", port: int | None = None, wait: bool = True) -> Service:
    """``python -m pipelines.retrain`` as a real process on loopback (its log in ``root/<name>.log``)."""
    port = port or free_port()
    log = root / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "--data", str(data), "--port", str(port),
                             "--model-name", model, "--state", str(root / f"{name}-state" / "jobs.sqlite"), *extra],
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, **(env or {})}, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=log.open("a"))
    svc = Service(name, proc, port, log=log)
    if wait:
        wait_ready(f"{svc.url}/healthz", svc, 120)
    return svc


def send(url: str, data: dict | None, event_id: str, kind: str = "com.storecast.retrain.requested",
         source: str = "tests") -> httpx.Response:
    ev = CloudEvent({"type": kind, "source": source, "id": event_id}, data)
    headers, body = to_binary(ev)
    return httpx.post(url, headers=headers, content=body, timeout=60)


def wait_job(url: str, job_id: str, timeout: float = 180, until: tuple[str, ...] = FINISHED) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if job.get("status") in until:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id}: {job}")


def log_tail(svc: Service, n: int = 3000) -> str:
    return svc.log.read_text()[-n:] if svc.log and svc.log.exists() else ""


# --- the predictor and transformer as real servers ----------------------------


@dataclass
class TrainedRegistry:
    """A sqlite MLflow store with one trained version (alias champion)."""

    root: Path
    uri: str
    version: str
    result: Any  # pipelines.training.train.TrainResult

    @property
    def table(self) -> Any:
        return self.result.table


def make_registry(root: Path, sales: Any, **train_kwargs: Any) -> TrainedRegistry:
    """Train ``sales`` (workers=1) and register it as version 1 @champion in a sqlite store under ``root``."""
    import mlflow

    from pipelines.training.fitting import FitConfig
    from pipelines.training.train import train
    from pipelines.versions.registry import register

    root.mkdir(parents=True, exist_ok=True)
    sales = typed(sales, root / "sales.csv.gz")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    MlflowClient().create_experiment(MODEL, artifact_location=(root / "artifacts").as_uri())
    result = train(sales, train_kwargs.pop("cfg", FitConfig()), workers=1, progress=False, **train_kwargs)
    reg = register(result, uri=uri, model_name=MODEL, alias="champion")
    return TrainedRegistry(root, uri, reg.version, result)


def typed(sales: Any, path: Path) -> Any:
    """Sales as ``read_sales`` returns them (string store ids, ...), via a file like the CLI."""

    return read_sales(write_sales(sales, path))


def stock_models(registry: TrainedRegistry, version: str, dst: Path) -> dict[str, Any]:
    """The stock Prophet models of a registered version, from its ``prophet_models.zip``."""
    import logging

    from prophet.serialize import model_from_json

    from pipelines.versions.registry import download

    logging.getLogger("cmdstanpy").disabled = True
    use(registry)
    path = download(f"models:/{MODEL}/{version}", dst, "prophet_models.zip")
    with zipfile.ZipFile(path) as zf:
        return {name.removesuffix(".json.gz"): model_from_json(gzip.decompress(zf.read(name)).decode())
                for name in zf.namelist()}


def band_gaps(table: Any, store_id: str, days: np.ndarray, out: dict[str, np.ndarray], ref: Any
              ) -> dict[str, np.ndarray]:
    """How far the served bounds are from stock Prophet's sampled ones, in units of Prophet's band width, once
    the served offsets are divided by the widening of the store's rare days (``predictor.special_days``)."""
    from predictor.forecast import regressor_matrix
    from predictor.special_days import widening

    rows = np.full(len(days), int(table.index(np.array([store_id]))[0]))
    wide = widening(regressor_matrix(table, rows, days), table.reg_iv[rows])
    width = (ref["yhat_upper"] - ref["yhat_lower"]).to_numpy()
    return {name: np.abs((out[name] - out["yhat"]) / wide - (ref[name] - ref["yhat"]).to_numpy()) / width
            for name in ("yhat_lower", "yhat_upper")}


def use(registry: TrainedRegistry) -> None:
    """Point this process's MLflow client at the registry (as pipelines.versions.registry does)."""
    import mlflow

    mlflow.set_tracking_uri(registry.uri)


class TcpProxy:
    """A loopback TCP forwarder to ``target_port`` that can be cut off (a registry outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self.open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone would not)
        self.listener.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class Predictor:
    """``python -m predictor`` on free loopback ports; always ``stop()`` it."""

    MODULE = "predictor"

    def __init__(self, log: Path, args: list[str] = (), tracking_uri: str | None = None,
                 env: dict[str, str] | None = None, ports: tuple[int, int] | None = None) -> None:
        self.http_port, self.grpc_port = ports or (free_port(), free_port())
        self.log = log
        environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        if tracking_uri:
            environ["MLFLOW_TRACKING_URI"] = tracking_uri
        environ.update(env or {})
        command = [sys.executable, "-m", self.MODULE, "--host", "127.0.0.1", "--http_port", str(self.http_port),
                   "--grpc_port", str(self.grpc_port), "--enable_latency_logging", "false", *args]
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(command, cwd=REPO, env=environ, stdout=fh, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30)

    def wait_ready(self, timeout: float = 90.0) -> Predictor:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.MODULE} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if self.http.get(f"/v2/models/{MODEL}/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.MODULE} not ready after {timeout} s:\n{self.output()[-3000:]}")

    def wait_live(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get("/v2/health/live").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"predictor not live after {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def infer(self, store_ids: list[str], dates: list[str], **extra: Any) -> httpx.Response:
        return self.http.post(f"/v2/models/{MODEL}/infer", json=v2_body(store_ids, dates, **extra))

    def forecast(self, store_ids: list[str], dates: list[str]) -> tuple[dict[str, np.ndarray], str]:
        """Outputs of a V2 request (asserting 200) and the version that answered."""
        r = self.infer(store_ids, dates)
        assert r.status_code == 200, r.text
        body = r.json()
        return {o["name"]: np.array(o["data"], dtype=np.float64) for o in body["outputs"]}, body["model_version"]

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Transformer(Predictor):
    """``python -m transformer`` on free loopback ports, its shard watch off (``--watch-seconds 0``)."""

    MODULE = "transformer"

    def __init__(self, log: Path, args: list[str] = ()) -> None:
        super().__init__(log, ["--watch-seconds", "0", *args])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def v1(self, body: Any, timeout: float = 60) -> httpx.Response:
        return self.http.post(f"/v1/models/{MODEL}:predict", json=body, timeout=timeout)


class MLServer(Predictor):
    """``storecast mlserver`` (a real ``mlserver start`` with the storecast runtime) on free loopback ports.

    ``storecast mlserver`` makes MLServer's environment on first use and then becomes ``mlserver start``: this
    process is MLServer, and ``stop()`` stops it."""

    MODULE = "mlserver"

    def __init__(self, log: Path, model_uri: str, tracking_uri: str | None = None, args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = log
        self.state = log.with_suffix("")
        environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        if tracking_uri:
            environ["MLFLOW_TRACKING_URI"] = tracking_uri
        environ.update(env or {})
        command = [str(BIN / "storecast"), "mlserver", "--model-uri", model_uri, "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
                   "--state", str(self.state), *args]
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(command, cwd=REPO, env=environ, stdout=fh, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30)

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text


def v2_body(store_ids: list[str], dates: list[str], **extra: Any) -> dict[str, Any]:
    return {"inputs": [
        {"name": "store_id", "shape": [len(store_ids)], "datatype": "BYTES", "data": list(store_ids)},
        {"name": "ds", "shape": [len(dates)], "datatype": "BYTES", "data": list(dates)},
    ], **extra}


def dates(first: str, n: int) -> list[str]:
    return (np.datetime64(first) + np.arange(n)).astype(str).tolist()


def day_after(table: Any, row: int, ahead: int) -> str:
    """The ISO date ``ahead`` days after a store's last history day."""
    return str(np.datetime64(int(table.last_day[row]), "D") + ahead)


# --- the session's served stack ------------------------------------------------------
STORES = 4


@dataclass
class Served:
    """The shared stack and what the tests need to know about its version."""

    stack: LocalStack
    version: str
    table: Any  # predictor.table.ParamTable of the version
    root: Path

    @property
    def predictor(self) -> Service:
        return self.stack.predictors[0]

    @property
    def transformer(self) -> Service:
        return self.stack.transformer

    def server(self, kind: str) -> Service:
        return self.predictor if kind == "predictor" else self.transformer

    @property
    def stores(self) -> list[str]:
        return self.table.store_id.tolist()

    @property
    def data_end(self) -> str:
        return str(np.datetime64(int(self.table.last_day.max()), "D"))

    def day(self, ahead: int) -> str:
        """The ISO date ``ahead`` days after the version's last day of data."""
        return str(np.datetime64(int(self.table.last_day.max()) + ahead, "D"))

    def healthy(self) -> bool:
        """Both servers still answer a forecast."""
        body = {"instances": [{"storeId": self.stores[0], "beginDate": self.day(1), "endDate": self.day(3)}]}
        r = httpx.post(f"{self.transformer.url}/v1/models/{MODEL}:predict", json=body, timeout=30)
        p = httpx.post(f"{self.predictor.url}/v1/models/{MODEL}:predict", timeout=30,
                       json={"instances": [{"store_id": self.stores[0], "ds": self.day(1)}]})
        return r.status_code == 200 and p.status_code == 200 and self.stack.predictors[0].proc.poll() is None


_SERVED: Served | None = None


def served(tmp_path_factory: Any) -> Served:
    """The session's stack: 4 synthetic stores with their known-ahead calendar, trained once."""
    global _SERVED
    if _SERVED is None:
        from pipelines.data.calendar import read_calendar
        from pipelines.data.synth import synthesize_with_calendar

        root = tmp_path_factory.mktemp("served")
        sales, calendar = synthesize_with_calendar(STORES, seed=5, calendar_days=40)
        cal = read_calendar(write_sales(calendar, root / "calendar.csv.gz"))
        registry = make_registry(root / "registry", sales, calendar=cal)
        stack = LocalStack(f"models:/{MODEL}@champion", registry.uri, log_dir=root / "logs",
                           predictor_args=["--enable_latency_logging", "false"],
                           transformer_args=["--enable_latency_logging", "false", "--watch-seconds", "1"])
        stack.start(timeout=180)
        atexit.register(stack.stop)
        deadline = time.monotonic() + 30  # the transformer learns the predictor's version within a second
        while "versions" not in httpx.get(f"{stack.transformer.url}/v2/models/{MODEL}").json():
            assert time.monotonic() < deadline, "the transformer never learned the predictor's version"
            time.sleep(0.1)
        _SERVED = Served(stack, registry.version, registry.table, root)
    return _SERVED


# --- stock Prophet, the oracle ------------------------------------------------
def stock_forecast(model: Any, table: Any, store_id: str, days: np.ndarray) -> dict[str, np.ndarray]:
    """Stock ``Prophet.predict`` on the store's future frame (``ds`` + every regressor), back on the sales scale."""
    days = np.asarray(days, dtype=np.int64)
    out = model.predict(future_frame(table, store_id, days))
    inv = np.expm1 if table.transform == "log1p" else np.asarray
    return {k: inv(out[k].to_numpy()) for k in ("yhat", "yhat_lower", "yhat_upper")}


def days_of(dates: Any) -> np.ndarray:
    """Int days since 1970-01-01 of dates (strings, datetimes, a DatetimeIndex)."""
    return np.asarray(dates, dtype="datetime64[D]").astype(np.int64)


# --- the real Rossmann data, a snapshot's plain evaluation (test-only, moved out of the packages) -------------
ROSSMANN_ENV = "STORECAST_ROSSMANN"


def shared_rossmann() -> Path | None:
    """Path of the real Rossmann ``train.csv.gz`` ($STORECAST_ROSSMANN or ../shared beside the repo)."""
    env = os.environ.get(ROSSMANN_ENV)
    path = Path(env).expanduser() if env else REPO.parent / "shared" / "data" / "rossmann" / "train.csv.gz"
    return path if path.is_file() else None


def evaluate(snapshot: Any, store_ids: list[str], days: np.ndarray,
             open_rate: bool = False) -> tuple[np.ndarray, ...]:
    """yhat, yhat_lower, yhat_upper of every (store, day) row of a ``predictor.snapshot.Snapshot`` (and, with
    ``open_rate``, the share of that weekday the store was open lately)."""
    names = ("yhat", "yhat_lower", "yhat_upper", *(("open_rate",) if open_rate else ()))
    out = snapshot.outputs(store_ids, days, names)
    return tuple(out[n] for n in names)


# --- Prometheus text -----------------------------------------------------------------
def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first ``name`` sample of a /metrics text whose labels include ``labels`` (None: none)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


# --- a random parameter table ----------------------------------------------------------
def random_table(n: int = 40, seed: int = 0) -> ParamTable:
    """A table of plausible random parameters (varying changepoints and seasonalities)."""
    rng = np.random.default_rng(seed)
    grid = default_grid()
    start = float((np.datetime64("2013-01-01") - np.datetime64("1970-01-01")).astype(np.int64) * 86400)
    rows = []
    for i in range(n):
        t_scale = float(rng.integers(300, 950) * 86400)
        n_cp = int(rng.integers(0, 26))
        features = [(7.0, h, c) for h in range(1, 4) for c in (False, True)]
        if i % 3:
            features += [(365.25, h, c) for h in range(1, 11) for c in (False, True)]
        spread = np.sqrt(1 + grid / 30.0) * rng.uniform(0.05, 0.2)
        rows.append({
            "store_id": str(i + 1) if i % 7 else f"s{i}", "start": start, "t_scale": t_scale,
            "y_scale": float(rng.uniform(3e3, 3e4)), "floor": 0.0, "k": float(rng.normal(0, 0.1)),
            "m": float(rng.uniform(0.3, 0.6)), "sigma_obs": 0.05, "delta": rng.normal(0, 0.05, n_cp),
            "cp_t": np.sort(rng.uniform(0, 0.8, n_cp)), "beta": rng.normal(0, 0.05, len(features)),
            "features": features, "last_day": round((start + t_scale) / 86400), "iv_lower": -spread * 1e3,
            "iv_upper": spread * 1.1e3, "iv_trend_var": float(rng.uniform(0, 10)), "iv_noise_var": 4e4,
        })
    return ParamTable.from_rows(rows, grid, 0.95, {"data_end": "2015-07-31"})


# --- an OIDC issuer: its JWKS over HTTP on loopback, real RS256 signatures ---------------
AUDIENCE = "serving.kserve.io/inferenceservice/storecast/storecast"  # the transformer's (Knative's naming)
SUBJECT = "system:serviceaccount:storecast:storecast-forecast-requested-oidc-eventing.knative.dev-trigger"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
    """The public half of ``key`` as a JWKS entry."""
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig", "alg": "RS256"}


class Issuer:
    """A real HTTP server on loopback: /.well-known/openid-configuration and /jwks, counting fetches."""

    def __init__(self) -> None:
        self.keys = {"k1": new_key()}
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.fetches += 1
                    body = {"keys": [jwk(k, kid) for kid, k in issuer.keys.items()]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def token(self, kid: str = "k1", key=None, **claims) -> str:
        """A signed token for ``AUDIENCE`` and ``SUBJECT``; ``claims`` override (None drops a claim)."""
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + 3600, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- an ASGI app under uvicorn -----------------------------------------------------------
class UvicornServer:
    """A uvicorn server in a thread on loopback."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# --- Kubernetes manifests: kubectl kustomize, the CRD schemas, kubernetes-validate -------
# pytest, jsonschema and kubernetes-validate are test extras, imported where used: the benchmarks import this module.
MANIFESTS = REPO / "manifests"
SCHEMAS = REPO / "schemas"
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.32"  # core kinds are validated against this Kubernetes release
NAMESPACE = "storecast"
TARGETS = ("base", *sorted(f"overlays/{p.name}" for p in (MANIFESTS / "overlays").iterdir() if p.is_dir()))
ISVC = ("serving.kserve.io", "InferenceService")
KSVC = ("serving.knative.dev", "Service")
TRIGGER = ("eventing.knative.dev", "Trigger")
SERVING_RUNTIME = ("serving.kserve.io", "ServingRuntime")
# the fields of a ``model`` that are not container fields
MODEL_ONLY = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")
CRD_GROUPS = {p.name for p in SCHEMAS.iterdir() if p.is_dir() and not p.name.startswith("_")}


@functools.cache
def _render(target: str) -> tuple[dict, ...]:
    proc = subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / target)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(target: str) -> list[dict]:
    """The rendered documents of a kustomize target (a deep copy: tests may not alter the cache)."""
    if KUBECTL is None:
        import pytest

        pytest.skip("kubectl is not installed, so the kustomize overlays cannot be rendered")
    return copy.deepcopy(list(_render(target)))


def by_target(fn: Callable) -> Callable:
    """Run the test once per kustomize target (base and every overlay)."""
    import pytest

    return pytest.mark.parametrize("target", TARGETS)(fn)


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def gk(doc: dict) -> tuple[str, str]:
    return group_of(doc["apiVersion"]), doc["kind"]


def find(docs: list[dict], kind: tuple[str, str], name: str | None = None) -> list[dict]:
    return [d for d in docs if gk(d) == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: tuple[str, str], name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind[1]} {name!r}, found {len(found)}"
    return found[0]


def resolves(docs: list[dict], ref: dict, namespace: str) -> bool:
    """Does a Knative/Kubernetes object reference point at an object of the rendered set?"""
    return any(gk(d) == (group_of(ref["apiVersion"]), ref["kind"]) and d["metadata"]["name"] == ref["name"]
               and d["metadata"].get("namespace") == ref.get("namespace", namespace) for d in docs)


def components(isvc: dict) -> dict[str, dict]:
    return {name: spec for name, spec in isvc["spec"].items() if name in ("predictor", "transformer", "explainer")}


def workloads(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(label, pod-spec-like dict, container) for every container the manifests run."""
    out = []
    for d in docs:
        name = f"{d['kind']} {d['metadata']['name']}"
        if gk(d) == ISVC:
            specs = [(f"{name} {c}", spec) for c, spec in components(d).items()]
        elif gk(d) == KSVC or d["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs = [(name, d["spec"]["template"]["spec"])]
        else:
            continue
        out += [(label, spec, c) for label, spec in specs for c in spec.get("containers", [])]
    return out


def _merged(base: list[dict], over: list[dict], key: str) -> list[dict]:
    """Two lists of objects merged by ``key``, as a strategic merge patch merges a list-map: ``over`` wins."""
    out = {item[key]: item for item in base}
    out.update({item[key]: item for item in over})
    return list(out.values())


def as_served(docs: list[dict], spec: dict) -> dict:
    """An InferenceService component as KServe runs it: a ``model`` gets its ServingRuntime's containers and
    volumes, with the model's own container fields laid over the runtime's kserve-container (KServe's strategic
    merge: env by name, mounts by path); a custom component is returned as it is."""
    if "model" not in spec:
        return spec
    runtime = one(docs, SERVING_RUNTIME, spec["model"]["runtime"])["spec"]
    own = {k: v for k, v in spec["model"].items() if k not in MODEL_ONLY}
    containers = [c if c["name"] != "kserve-container" else {
        **c, **own, "env": _merged(c.get("env", []), own.get("env", []), "name"),
        "volumeMounts": _merged(c.get("volumeMounts", []), own.get("volumeMounts", []), "mountPath"),
        "securityContext": {**c.get("securityContext", {}), **own.get("securityContext", {})}}
        for c in runtime["containers"]]
    return {**{k: v for k, v in spec.items() if k != "model"}, "containers": containers,
            "volumes": _merged(runtime.get("volumes", []), spec.get("volumes", []), "name")}


def pods(docs: list[dict]) -> list[tuple[str, dict[str, str], dict]]:
    """(label, pod labels, pod-spec-like dict) of every pod the manifests make, the RayJob's included.

    Pod labels are the ones these manifests set (an InferenceService component's ``labels``, a template's
    ``metadata.labels``); controllers add their own (Knative's, KServe's, KubeRay's) besides. A ``model``
    component is its pod as KServe makes it from the ServingRuntime (``served``)."""
    out = []
    for d in docs:
        name, spec = f"{d['kind']} {d['metadata']['name']}", d.get("spec", {})
        if gk(d) == ISVC:
            out += [(f"{name} {c}", s.get("labels", {}), as_served(docs, s)) for c, s in components(d).items()]
        elif gk(d) == KSVC or d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((name, spec["template"].get("metadata", {}).get("labels", {}), spec["template"]["spec"]))
        elif gk(d) == ("ray.io", "RayJob"):
            cluster = spec["rayClusterSpec"]
            templates = [("head", cluster["headGroupSpec"]["template"]),
                         *((f"worker {g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]),
                         ("submitter", spec["submitterPodTemplate"])]
            out += [(f"{name} {role}", t.get("metadata", {}).get("labels", {}), t["spec"]) for role, t in templates]
    return out


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """A JSON patch (RFC 6902: add, replace, remove, test) applied to a copy of ``doc``, as an API server or
    kustomize applies one."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key: Any = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"test failed at {op['path']}"
        elif op["op"] == "remove":
            del node[key]
        elif op["op"] == "add" and isinstance(node, list):
            node.insert(key, op["value"])
        else:
            exists = key < len(node) if isinstance(node, list) else key in node
            assert op["op"] in ("add", "replace") and (op["op"] == "add" or exists), op
            node[key] = op["value"]
    return doc


def quantity(text: str) -> float:
    """A Kubernetes resource quantity (``500m``, ``2Gi``, ``4``) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if str(text).endswith(unit):
            return float(str(text)[: -len(unit)]) * factor
    return float(text)


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, op = labels.get(e["key"]), e["operator"]
        ok = {"In": value in e.get("values", []), "NotIn": value not in e.get("values", []),
              "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[op]
        if not ok:
            return False
    return True


def _close_webhook_strict(node: Any) -> None:
    """Close the objects Knative's webhook decodes with DisallowUnknownFields (schemas/README.md)."""
    if isinstance(node, dict):
        if node.get("x-webhook-disallows-unknown-fields") and "properties" in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_webhook_strict(value)
    elif isinstance(node, list):
        for value in node:
            _close_webhook_strict(value)


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft7Validator:
    import jsonschema

    path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    assert path.exists(), f"no schema for {kind} {group}/{version} in {SCHEMAS.name}/ (not a served version?)"
    schema = json.loads(path.read_text())
    _close_webhook_strict(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: dict) -> list[str]:
    """Every schema violation of one document, as readable lines."""
    import kubernetes_validate

    group, version = doc["apiVersion"].rsplit("/", 1) if "/" in doc["apiVersion"] else ("", doc["apiVersion"])
    if group in CRD_GROUPS:
        errors = crd_validator(group, doc["kind"], version).iter_errors(doc)
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    return []


# --- KubeRay's API: the template RayJob, a kubeconfig for a stand-in API server ------------
RAYJOBS = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"


def rayjob_template() -> dict:
    """manifests/overlays/ray's template RayJob as the API server holds it after its first run (SUCCEEDED)."""
    doc = yaml.safe_load((MANIFESTS / "overlays" / "ray" / "rayjob.yaml").read_text())
    doc["metadata"]["namespace"] = NAMESPACE
    doc["status"] = {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}
    return doc


def kubeconfig(path: Path, server: str, token: str, namespace: str) -> Path:
    """A kubeconfig at ``path`` whose one context talks to ``server`` with a bearer ``token`` in ``namespace``."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        "users": [{"name": "test", "user": {"token": token}}]}))
    return path


# --- an OIDC issuer whose JWKS turns slow: one byte every 2 s, status line and headers included ----------
class TricklingIssuer(LoopbackServer):
    """``Issuer``'s keys and tokens; while ``trickle`` is set, its /jwks answer goes out one byte every
    ``interval`` seconds (status line, headers, body: each byte beats any per-read timeout above ``interval``).
    ``trickling`` is set when such an answer begins, ``hung_up`` when its client hangs up before the end;
    ``close()`` ends the trickles."""

    token = Issuer.token

    def __init__(self, interval: float = 2.0) -> None:
        self.keys = {"k1": new_key()}
        self.fetches = 0
        self.interval = interval
        self.trickle, self.trickling, self.hung_up, self.closing = (threading.Event() for _ in range(4))
        issuer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks":
                    self._send(404, b"")
                    return
                issuer.fetches += 1
                body = json.dumps({"keys": [jwk(k, kid) for kid, k in issuer.keys.items()]}).encode()
                if not issuer.trickle.is_set():
                    self._send(200, body)
                    return
                self.close_connection = True
                answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                issuer.trickling.set()
                try:
                    for i in range(len(answer)):
                        self.wfile.write(answer[i:i + 1])
                        if issuer.closing.wait(issuer.interval):
                            return
                except OSError:  # the client hung up
                    issuer.hung_up.set()

        self.serve(Handler)

    def close(self) -> None:
        self.closing.set()
        super().close()


# --- a predictor whose model repository may be used: anyone forecasts, ADMIN_KEY loads and unloads ----------
# (without an auth file the repository is refused: serving.access.auth_file.open_config has no ``admin``)
ADMIN_KEY = "sc_test-admin"
ADMIN = {"x-api-key": ADMIN_KEY}


def admin_auth(folder: Path) -> Path:
    """An auth file in ``folder``: an ``anonymous`` tier with ``forecast`` and no limit, and one identity,
    ``ops``, with ``forecast`` and ``admin``, whose key is ``ADMIN_KEY``; give it to a predictor with
    ``--auth-file`` and send ``ADMIN`` with its repository calls."""
    from serving.access.auth_file import hash_key

    path = folder / "admin-auth.yaml"
    path.write_text("tiers:\n"
                    "  anonymous: {requests_per_second: null, concurrent: null, permissions: [forecast]}\n"
                    "  ops: {requests_per_second: null, concurrent: null, permissions: [forecast, admin]}\n"
                    f"identities:\n  - {{name: ops, tier: ops, key_sha256: \"{hash_key(ADMIN_KEY)}\"}}\n")
    return path


# --- an attacker's tools: hand-written HTTP/1.1, gRPC without KServe's stubs, audit lines -----------------
@dataclass(frozen=True)
class RawAnswer:
    """What a server answered a hand-written request: ``status`` 0 when the connection ended without one."""

    status: int
    body: bytes


def raw_request(port: int, method: str, path: str, headers: list[tuple[str, str]] = (), body_bytes: int = 0,
                timeout: float = 30) -> RawAnswer:
    """A hand-written HTTP/1.1 request, for what httpx will not send (dot segments kept, a NUL or a control byte
    in a header, a 1 MB header): the head and ``body_bytes`` of filler go out in 64 KiB pieces only while the
    server has not answered, so an early answer (401, 413, 431) is read rather than lost to a reset. Each socket
    operation is bounded by ``timeout`` (a server that neither reads nor answers raises ``TimeoutError``)."""
    import select

    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n"
    head += f"content-length: {body_bytes}\r\n" if body_bytes else ""
    data = (head + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        sent, total = 0, len(data) + body_bytes
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total and not select.select([s], [], [], 0)[0]:
                piece = data[sent:sent + 65536] if sent < len(data) else b"x" * min(65536, total - sent)
                s.sendall(piece)
                sent += len(piece)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    top, _, rest = answer.partition(b"\r\n\r\n")
    status = top.split(b" ", 2)[1] if top.startswith(b"HTTP/") else b"0"
    return RawAnswer(int(status), rest)


def proto_string(field_number: int, text: str) -> bytes:
    """One protobuf string field (shorter than 128 bytes), e.g. a request's ``model_name``."""
    value = text.encode()
    return bytes([field_number << 3 | 2, len(value)]) + value


def grpc_code(port: int, method: str, message: bytes = b"", metadata: tuple[tuple[str, str], ...] = (),
              timeout: float = 30) -> str:
    """The status code name (``OK``, ``UNAUTHENTICATED``, ...) of one call to
    ``/inference.GRPCInferenceService/METHOD`` on loopback with a hand-encoded ``message`` (no KServe stubs:
    ``import kserve`` parses sys.argv); ``DEADLINE_EXCEEDED`` when no answer came within ``timeout``."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        try:
            call(message, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def audit_lines(log: str) -> list[dict]:
    """The audit lines of a server's log (``DATE TIME PID storecast.audit INFO {...}``), parsed."""
    fields = [line.split(" ", 5) for line in log.splitlines()]
    return [json.loads(f[5]) for f in fields if len(f) == 6 and f[3:5] == ["storecast.audit", "INFO"]]


# --- a planner-and-service auth file ------------------------------------------------
def planner_service_auth(path: Path, identities: dict[str, tuple[str, str]]) -> Path:
    """An auth file at ``path`` with unlimited tiers ``planner`` (forecast, refresh) and ``service`` (+ retrain),
    and ``identities``: name -> (tier, key)."""
    from serving.access.auth_file import hash_key

    who = "".join(f'  - {{name: {name}, tier: {tier}, key_sha256: "{hash_key(key)}"}}\n'
                  for name, (tier, key) in identities.items())
    path.write_text("tiers:\n"
                    "  planner: {requests_per_second: null, concurrent: null, permissions: [forecast, refresh]}\n"
                    "  service: {requests_per_second: null, concurrent: null, permissions: [forecast, refresh, "
                    "retrain]}\n"
                    f"identities:\n{who}")
    return path
