"""Helpers of the predictor tests: a trained registry, predictor processes on loopback, request builders."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pipelines.stack import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = "storecast"


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
    from pipelines.data.sales_csv import read_sales, write_sales

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
