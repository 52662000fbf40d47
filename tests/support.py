"""What the tests share: processes on loopback, trained registries, stock Prophet as the oracle, clients.

One module on purpose (issue 22: shared helpers in one support module), in sections: the
processes (``run_cli``, ``stop``, ``wait_until``, ``Recorder``, ``LoopbackServer``), the predictor and
transformer as real servers (``Predictor``, ``Transformer``, ``make_registry``), the session's
served stack (``served``), the retrain service (``start_service``, ``send``, ``wait_job``), the
dashboard (``start_dashboard``) and stock Prophet's forecast (``stock_forecast``). It is longer than
400 lines for that reason: every section is small, and a test imports only from here.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from mlflow import MlflowClient

from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.stack import LocalStack, Service, free_port, wait_ready
from pipelines.training.export import future_frame
from serving.contract import MODEL_NAME as MODEL

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
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    if service.proc.poll() is None:
        service.proc.terminate()
        try:
            service.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=10)


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


# --- the retrain service ------------------------------------------------------
FINISHED = ("done", "failed", "up_to_date")


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
class Registry:
    """A sqlite MLflow store with one trained version (alias champion)."""

    root: Path
    uri: str
    version: str
    result: Any  # pipelines.training.train.TrainResult

    @property
    def table(self) -> Any:
        return self.result.table


def make_registry(root: Path, sales: Any, **train_kwargs: Any) -> Registry:
    """Train ``sales`` (workers=1) and register it as version 1 @champion in a sqlite store under ``root``."""
    import mlflow
    from mlflow import MlflowClient

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
    return Registry(root, uri, reg.version, result)


def typed(sales: Any, path: Path) -> Any:
    """Sales as ``read_sales`` returns them (string store ids, ...), via a file like the CLI."""

    return read_sales(write_sales(sales, path))


def stock_models(registry: Registry, version: str, dst: Path) -> dict[str, Any]:
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


def use(registry: Registry) -> None:
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
        from pipelines.data.sales_csv import write_sales
        from pipelines.data.synth import synthesize_with_calendar
        from tests.support import make_registry

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
