"""Crash-safe jobs, with real processes: the retrain service SIGKILLed mid-job and restarted, and a
registry that fails for a while (a proxy in front of a real `mlflow server` answering 503).

The kill lands at a known point through the service's fault-injection pause (``STORECAST_FAULT_PAUSE``:
the job sleeps when it reaches that phase), so each case is exact, not a race.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from mlflow import MlflowClient

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from tests.support import (
    LoopbackServer,
    QuietHandler,
    alias,
    log_tail,
    send,
    start_service,
    stop,
    train,
    versions,
    wait_job,
)

MODEL = "storecast-crash"


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("crash")
    sales = synthesize(4, seed=21)
    write_sales(sales[sales["Date"] <= "2015-06-30"], root / "old.csv.gz")
    latest = write_sales(sales, root / "latest.csv.gz")
    return {"root": root, "latest": latest, "uri": mlflow_server,
            "first": train(root / "old.csv.gz", mlflow_server, MODEL, root)}


def wait_phase(url: str, job_id: str, phase: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if job["phase"] == phase:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never reached {phase}")


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_killed_after_registering_is_recovered_and_resumed(world: dict) -> None:
    root, uri = world["root"], world["uri"]
    svc = start_service(world["latest"], uri, MODEL, root, name="svc-a",
                        env={"STORECAST_FAULT_PAUSE": "registered:120"})
    try:
        job_id = send(svc.url, {"store_ids": ["2"]}, "kill-me").json()["job_id"]
        job = wait_phase(svc.url, job_id, "registered")
        orphan, run_id = job["version"], job["run_id"]
        kill(svc.proc)  # between registering the version and moving champion
    finally:
        stop(svc.proc)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # what a kill leaves behind
    assert alias(uri, MODEL) == world["first"]  # champion never moved to it

    svc = start_service(world["latest"], uri, MODEL, root, name="svc-a", port=svc.http_port)
    try:
        after = httpx.get(f"{svc.url}/jobs/{job_id}", timeout=10).json()  # answers after the restart
        assert after["job_id"] == job_id and after["attempts"][0]["error"].startswith("interrupted")
        assert after["attempts"][0]["phase"] == "registered"
        done = wait_job(svc.url, job_id)
        assert done["status"] == "done" and done["attempt"] == 2, log_tail(svc)
        new = done["result"]["version"]
        assert new != orphan and alias(uri, MODEL) == new
        assert client.get_run(run_id).info.status == "FAILED"  # ended by the recovery
        tags = client.get_model_version(MODEL, orphan).tags
        assert "never served" in tags["orphaned"] and job_id in tags["orphaned"]
        assert "orphaned" not in client.get_model_version(MODEL, new).tags
        assert done["attempts"][0]["run_ended"] is True and done["attempts"][0]["orphan_tagged"] is True
        # the same event redelivered after the restart gets the same job, nothing new
        again = send(svc.url, {"store_ids": ["2"]}, "kill-me")
        assert again.json()["job_id"] == job_id
        metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
        assert 'storecast_retrain_jobs_total{outcome="interrupted"} 1.0' in metrics
    finally:
        stop(svc.proc)


def test_killed_mid_fit_too_often_is_failed_with_the_reason(world: dict) -> None:
    root, uri = world["root"], world["uri"]
    before = versions(uri, MODEL)
    svc = start_service(world["latest"], uri, MODEL, root, "--max-attempts", "1", name="svc-b",
                        env={"STORECAST_FAULT_PAUSE": "fitting:120"})
    try:
        job_id = send(svc.url, {"store_ids": ["3"]}, "kill-mid-fit").json()["job_id"]
        wait_phase(svc.url, job_id, "fitting")
        kill(svc.proc)
    finally:
        stop(svc.proc)
    svc = start_service(world["latest"], uri, MODEL, root, "--max-attempts", "1", name="svc-b", port=svc.http_port)
    try:
        job = httpx.get(f"{svc.url}/jobs/{job_id}", timeout=10).json()
        assert job["status"] == "failed"
        assert "interrupted: the service stopped while the job was running (fitting)" in job["error"]
        assert "gave up after 1 attempt" in job["error"]
        assert versions(uri, MODEL) == before
    finally:
        stop(svc.proc)


class FlakyRegistry(LoopbackServer):
    """A proxy in front of the mlflow server; while ``failing`` it answers alias lookups with 503."""

    def __init__(self, upstream: str) -> None:
        self.failing = threading.Event()
        self.refused = 0
        proxy = self

        class Handler(QuietHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if proxy.failing.is_set() and "registered-models/alias" in self.path:
                    proxy.refused += 1
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.request(self.command, upstream + self.path, headers=headers, content=body, timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.serve(Handler)


@pytest.fixture
def flaky(world: dict) -> Iterator[FlakyRegistry]:
    proxy = FlakyRegistry(world["uri"])
    yield proxy
    proxy.close()


def test_a_registry_blip_is_retried_never_a_smaller_version(world: dict, flaky: FlakyRegistry) -> None:
    root, uri = world["root"], world["uri"]
    svc = start_service(world["latest"], flaky.url, MODEL, root, "--retry-seconds", "1", "--retries", "4",
                        name="svc-c", env={"STORECAST_FAULT_PAUSE": "fitting:2",
                                           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    try:
        flaky.failing.set()  # while it cannot say who the champion is, nothing is accepted as "no champion"
        r = send(svc.url, {"store_ids": ["4"]}, "during-blip")
        assert r.status_code == 503 and "registry" in r.json()["error"] and r.headers["retry-after"]
        flaky.failing.clear()
        champion_before = alias(uri, MODEL)
        job_id = send(svc.url, {"store_ids": ["4"]}, "blip-in-job").json()["job_id"]
        flaky.failing.set()  # the job meets the blip when it starts (after its 2 s pause)
        wait_job(svc.url, job_id, until=("retrying",), timeout=60)
        flaky.failing.clear()
        job = wait_job(svc.url, job_id)
        assert job["status"] == "done", (job, log_tail(svc))
        assert any("RegistryUnavailable" in a["error"] for a in job["attempts"])
        v = job["result"]["version"]
        mv = MlflowClient(uri).get_model_version(MODEL, v)
        assert mv.tags["stores"] == "4" and mv.tags["parent_version"] == champion_before  # every store kept
        assert alias(uri, MODEL) == v and flaky.refused >= 2
    finally:
        stop(svc.proc)
