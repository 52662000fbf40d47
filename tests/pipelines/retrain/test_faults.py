"""The job store's faults, for real: a retrain service whose files cannot grow (RLIMIT_FSIZE set on the
running process, what a full disk does to its writes), and a state file deleted under it.

- While nothing can be written: a request is refused with 503 naming the job store (never 202 and then
  lost), ``/healthz`` answers 503 "degraded" with the reason, and the job that was running when the
  disk filled waits; the worker thread survives. Once writes work again both run to the end.
- A deleted state file is noticed (``/healthz`` "degraded" with the incident) and recreated from the
  open connection, also when the service is stopped right after: after a restart every job is there.
"""

from __future__ import annotations

import resource
import time

import httpx
import pytest

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from tests.support import alias, log_tail, send, start_service, stop, train, wait_job

MODEL = "storecast-faults"


def files_can_grow(pid: int, yes: bool) -> None:
    """Lift, or set to one byte, the service's RLIMIT_FSIZE: writes past it fail (EFBIG), as on a full disk."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if yes else 1, hard))


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/healthz", timeout=30)


def until(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    sales = synthesize(3, seed=51)
    write_sales(sales[sales["Date"] <= "2015-06-30"], root / "old.csv.gz")
    latest = write_sales(sales, root / "latest.csv.gz")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return {"root": root, "latest": latest, "uri": uri, "first": train(root / "old.csv.gz", uri, MODEL, root)}


def test_a_full_disk_refuses_requests_and_the_worker_waits_then_resumes(world: dict) -> None:
    svc = start_service(world["latest"], world["uri"], MODEL, world["root"], "--retry-seconds", "0.5", name="full",
                        env={"STORECAST_FAULT_PAUSE": "fitting:5"})
    try:
        job_id = send(svc.url, {"store_ids": ["1"]}, "before-full").json()["job_id"]
        wait_job(svc.url, job_id, until=("running",))  # paused at "fitting": the disk fills meanwhile
        files_can_grow(svc.proc.pid, False)
        h = health(svc.url)
        assert h.status_code == 503 and h.json()["status"] == "degraded", h.text
        assert "jobs.sqlite" in h.json()["job_store"]["error"] and not h.json()["job_store"]["ok"]
        r = send(svc.url, {"store_ids": ["2"]}, "while-full")
        assert r.status_code == 503 and "job store" in r.json()["error"] and r.headers["retry-after"], r.text
        assert r.json()["retry"] is True
        # the running job meets the full disk after its pause: it waits, the worker lives on
        until(lambda: health(svc.url).json()["worker"].startswith(f"waiting: job {job_id}"), "the worker waiting")
        assert httpx.get(f"{svc.url}/jobs/{job_id}", timeout=10).status_code == 200  # reads still answer

        files_can_grow(svc.proc.pid, True)
        until(lambda: health(svc.url).status_code == 200, "healthz ok again")
        done = wait_job(svc.url, job_id)
        assert done["status"] == "done", (done, log_tail(svc))
        assert alias(world["uri"], MODEL) == done["result"]["version"]
        again = send(svc.url, {"store_ids": ["2"]}, "while-full")  # the refused event, redelivered: taken now
        assert again.status_code == 202, again.text
        assert wait_job(svc.url, again.json()["job_id"])["status"] == "done"
        h = health(svc.url).json()
        assert h["status"] == "ok" and h["worker"] == "running", h
        metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
        assert "storecast_retrain_job_store_up 1.0" in metrics
    finally:
        if svc.proc.poll() is None:
            files_can_grow(svc.proc.pid, True)
        stop(svc.proc)


def test_a_deleted_state_file_is_noticed_and_nothing_is_lost(world: dict) -> None:
    root = world["root"]
    svc = start_service(world["latest"], world["uri"], MODEL, root, name="deleted")
    state = root / "deleted-state" / "jobs.sqlite"
    try:
        job_id = send(svc.url, {"store_ids": ["3"]}, "before-delete").json()["job_id"]
        assert wait_job(svc.url, job_id)["status"] == "done"
        for f in state.parent.glob("jobs.sqlite*"):  # `rm -f jobs.sqlite*` under the running service
            f.unlink()
        h = health(svc.url)
        assert h.json()["status"] == "degraded" and "was deleted" in h.json()["job_store"]["incident"], h.text
        assert h.json()["job_store"]["ok"] and state.exists()  # recreated from the open connection
        up = send(svc.url, {"store_ids": ["3"]}, "after-delete")
        assert up.status_code == 200 and up.json()["status"] == "up_to_date"
        for f in state.parent.glob("jobs.sqlite*"):  # deleted again, and the service stopped before any write
            f.unlink()
    finally:
        stop(svc.proc)
    assert state.exists()  # written back as the service let go of it
    svc = start_service(world["latest"], world["uri"], MODEL, root, name="deleted", port=svc.http_port)
    try:  # a restart reads the recreated file: every job is there
        before = httpx.get(f"{svc.url}/jobs/{job_id}", timeout=10).json()
        assert before["status"] == "done" and before["job_id"] == job_id
        assert send(svc.url, {"store_ids": ["3"]}, "before-delete").json()["job_id"] == job_id  # still de-duplicated
        assert send(svc.url, {"store_ids": ["3"]}, "after-delete").json()["job_id"] == up.json()["job_id"]
        assert health(svc.url).json()["status"] == "ok"
    finally:
        stop(svc.proc)
