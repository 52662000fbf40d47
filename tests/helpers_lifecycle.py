"""Helpers of the lifecycle tests: a retrain service process, CloudEvents, waiting for jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from mlflow import MlflowClient

from pipelines.stack import Service, free_port, wait_ready
from tests.conftest import run_cli

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
