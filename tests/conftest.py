"""Shared fixtures: synthetic sales, a trained sqlite registry, a real `mlflow server` on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import Service, free_port, wait_ready
from tests.support import BIN, stop


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


