"""Shared fixtures: synthetic sales, a trained sqlite registry, a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import Service, free_port, wait_ready

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


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty synthetic stores, written as the Rossmann CSV layout."""
    return write_sales(synthesize(20, seed=3), tmp_path_factory.mktemp("data") / "sales.csv.gz")


@pytest.fixture(scope="session")
def synth_sales(synth_csv: Path):
    return read_sales(synth_csv)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` process on loopback, serving artifacts; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=log, cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{uri}/health", Service("mlflow", proc, port, log=root / "server.log"), timeout=300)
        yield uri
    finally:
        stop(proc)
        log.close()


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
