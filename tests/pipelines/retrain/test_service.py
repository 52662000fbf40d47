"""The retrain service for real: CloudEvents over HTTP, a real `mlflow server`, a sink, an alias-following predictor.

The champion is trained on data up to 2015-06-30; the service reads data up to 2015-07-31, so every
store starts stale.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from mlflow import MlflowClient

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import Service, free_port, wait_ready
from tests.support import Recorder, run_cli, stop

MODEL = "storecast-rt"


def versions(uri: str, model: str = MODEL) -> list[str]:
    return sorted((str(v.version) for v in MlflowClient(uri).search_model_versions(f"name='{model}'")), key=int)


def champion(uri: str, model: str = MODEL, alias: str = "champion") -> str:
    return str(MlflowClient(uri).get_model_version_by_alias(model, alias).version)


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("retrain")
    sales = synthesize(6, seed=11)
    write_sales(sales[sales["Date"] <= "2015-06-30"], root / "old.csv.gz")
    latest = write_sales(sales, root / "latest.csv.gz")
    run_cli("train", "--data", str(root / "old.csv.gz"), "--tracking-uri", mlflow_server, "--model-name", MODEL,
            "--alias", "champion", "--workers", "1", "--no-progress", cwd=root)
    sink = Recorder()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "K_SINK": sink.url}
    port, p_http, p_grpc = free_port(), free_port(), free_port()
    procs = []
    try:
        svc = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "--data", str(latest), "--port", str(port),
                                "--host", "127.0.0.1", "--model-name", MODEL], env=env, cwd=root,
                               stdout=subprocess.DEVNULL, stderr=(root / "retrain.log").open("w"))
        procs.append(svc)
        pred = subprocess.Popen([sys.executable, "-m", "predictor", "--model_uri", f"models:/{MODEL}@champion",
                                 "--refresh-seconds", "1", "--http_port", str(p_http), "--grpc_port", str(p_grpc)],
                                env=env, stdout=subprocess.DEVNULL, stderr=(root / "predictor.log").open("w"))
        procs.append(pred)
        wait_ready(f"http://127.0.0.1:{port}/healthz", Service("retrain", svc, port, log=root / "retrain.log"), 120)
        wait_ready(f"http://127.0.0.1:{p_http}/v2/models/storecast/ready",
                   Service("predictor", pred, p_http, log=root / "predictor.log"), 120)
        yield {"url": f"http://127.0.0.1:{port}", "uri": mlflow_server, "sink": sink,
               "predictor": f"http://127.0.0.1:{p_http}", "first": champion(mlflow_server), "root": root,
               "latest": latest}
    finally:
        for p in procs:
            stop(p)
        sink.close()


def send(url: str, stores: list[str] | None, event_id: str, kind: str = "com.storecast.retrain.requested",
         structured: bool = False) -> httpx.Response:
    data = {"store_ids": stores, "reason": "test"} if stores is not None else None
    ev = CloudEvent({"type": kind, "source": "tests", "id": event_id}, data)
    headers, body = (to_structured if structured else to_binary)(ev)
    return httpx.post(url, headers=headers, content=body, timeout=30)


def wait_job(url: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("done", "failed", "up_to_date"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def forecast(predictor: str, store: str) -> tuple[str, list[float]]:
    meta = httpx.get(f"{predictor}/v2/models/storecast", timeout=10).json()
    r = httpx.post(f"{predictor}/v2/models/storecast/infer", json={"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [3], "data": [store] * 3},
        {"name": "ds", "datatype": "BYTES", "shape": [3], "data": ["2015-08-03", "2015-08-04", "2015-08-05"]}]},
        timeout=10)
    return meta["versions"][0], r.json()["outputs"][0]["data"]


def test_four_concurrent_requests_make_one_fit_and_one_version(world: dict) -> None:
    before = versions(world["uri"])
    version0, yhat0 = forecast(world["predictor"], "4")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: send(world["url"], ["4"], f"four-{i}", structured=i % 2 == 1), range(4)))
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    job_ids = {a.json()["job_id"] for a in answers}
    assert len(job_ids) == 1  # the three later requests wait for the first one's fit
    job = wait_job(world["url"], job_ids.pop())
    assert job["status"] == "done", job
    after = versions(world["uri"])
    assert len(after) == len(before) + 1
    new = job["result"]["version"]
    assert champion(world["uri"]) == new and job["result"]["promoted"] == "champion"
    assert job["result"]["parent_version"] == world["first"]
    registered = [e for e in world["sink"].events() if e["type"] == "com.storecast.model.registered"]
    assert [e["data"]["store_ids"] for e in registered] == [["4"]]
    assert registered[0]["data"]["version"] == new and registered[0]["data"]["gate"]["4"] in ("pass", "n/a")
    mv = MlflowClient(world["uri"]).get_model_version(MODEL, new)
    assert mv.tags["parent_version"] == world["first"] and mv.tags["stores"] == "6"
    assert mv.tags["data_end"] == "2015-07-31"

    # the alias-following predictor swaps to the new version by itself
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and forecast(world["predictor"], "4")[0] != new:
        time.sleep(0.3)
    version1, yhat1 = forecast(world["predictor"], "4")
    assert (version0, version1) == (world["first"], new)
    assert not np.allclose(yhat0, yhat1)  # refitted on a month more data
    assert forecast(world["predictor"], "1")[1] == forecast(world["predictor"], "1")[1]


def test_up_to_date_store_is_not_refitted(world: dict) -> None:
    before = versions(world["uri"])
    r = send(world["url"], ["4"], "again-4")
    assert r.status_code == 200 and r.json()["status"] == "up_to_date"
    assert versions(world["uri"]) == before


def test_redelivered_event_does_nothing_new(world: dict) -> None:
    before, events_before = versions(world["uri"]), len(world["sink"].requests)
    r = send(world["url"], ["4"], "four-0")  # the id of the first request above
    assert r.status_code == 202
    assert wait_job(world["url"], r.json()["job_id"])["status"] == "done"
    time.sleep(0.5)
    assert versions(world["uri"]) == before and len(world["sink"].requests) == events_before


def test_dedupe_is_by_source_and_id_and_an_empty_id_is_refused(world: dict) -> None:
    first = send(world["url"], ["4"], "four-0").json()["job_id"]  # the first test's event, redelivered
    other = CloudEvent({"type": "com.storecast.retrain.requested", "source": "another-source", "id": "four-0"},
                       {"store_ids": ["4"]})
    headers, body = to_binary(other)
    r = httpx.post(world["url"], headers=headers, content=body, timeout=30)
    assert r.json()["job_id"] != first and r.json()["status"] == "up_to_date"  # its own answer, not the other's
    for attr in ("id", "source"):
        headers = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "tests",
                   "ce-type": "com.storecast.retrain.requested", "content-type": "application/json", f"ce-{attr}": ""}
        r = httpx.post(world["url"], headers=headers, content=b'{"store_ids": ["4"]}', timeout=30)
        assert r.status_code == 400 and f"'{attr}' is empty" in r.json()["error"], r.text


def test_store_without_data_fails_and_moves_no_alias(world: dict) -> None:
    before_champion, before = champion(world["uri"]), versions(world["uri"])
    r = send(world["url"], ["9999"], "no-data")
    assert r.status_code == 202
    job = wait_job(world["url"], r.json()["job_id"])
    assert job["status"] == "failed" and "9999" in job["error"]
    deadline = time.monotonic() + 30  # the result event is sent after the job is marked failed
    while True:
        failed = [e for e in world["sink"].events() if e["type"] == "com.storecast.retrain.failed"
                  and e["data"].get("store_ids") == ["9999"]]
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert failed, world["sink"].events()
    assert champion(world["uri"]) == before_champion and versions(world["uri"]) == before


@pytest.mark.parametrize(("kind", "data"), [("com.example.other", {"store_ids": ["1"]}),
                                            ("com.storecast.retrain.requested", {"stores": ["1"]}),
                                            ("com.storecast.retrain.requested", {"store_ids": []})])
def test_bad_events_get_400(world: dict, kind: str, data: dict) -> None:
    headers, body = to_binary(CloudEvent({"type": kind, "source": "tests", "id": f"bad-{kind}-{data}"}, data))
    r = httpx.post(world["url"], headers=headers, content=body, timeout=10)
    assert r.status_code == 400 and r.json()["error"]


def test_ping_refits_every_stale_store_then_nothing(world: dict) -> None:
    r = send(world["url"], None, "ping-1", kind="dev.knative.sources.ping")
    assert r.status_code == 202
    job = wait_job(world["url"], r.json()["job_id"])
    assert job["status"] == "done" and job["stores"] == ["1", "2", "3", "5", "6"]  # 4 is fresh already
    again = send(world["url"], None, "ping-2", kind="dev.knative.sources.ping")
    assert again.status_code == 200 and again.json()["status"] == "up_to_date"


def test_health_and_unknown_job(world: dict) -> None:
    health = httpx.get(f"{world['url']}/healthz").json()
    assert health["status"] == "ok" and health["data_source"]["ok"] and health["data_source"]["error"] is None
    assert health["dry_run"] is False
    assert httpx.get(f"{world['url']}/jobs/nope").status_code == 404


def test_cli_retrain_waits_for_the_version(world: dict, tmp_path: Path) -> None:
    out = run_cli("retrain", "--store", "2", "--url", world["url"], "--wait", "--json", cwd=tmp_path)
    assert '"status": "up_to_date"' in out.stdout  # refitted by the ping above


def test_a_fit_that_finished_while_a_job_waited_is_not_repeated(world: dict, tmp_path: Path) -> None:
    """A job whose stores a finished fit already covers (it waited in the queue meanwhile) fits nothing."""
    from pipelines.retrain.jobs import RetrainManager, Settings
    from pipelines.retrain.jobstore import Job

    manager = RetrainManager(Settings(str(world["latest"]), model_name=MODEL, uri=world["uri"],
                                      state=str(tmp_path / "jobs.sqlite")))
    try:
        before = versions(world["uri"])
        job = Job("queued-late", ["4"], "test", "requested", "champion")  # 4 was refitted by the first test
        manager.store.put(job)
        manager._queue.put(job.id)
        deadline = time.monotonic() + 60
        while (done := manager.job(job.id)).status not in ("up_to_date", "done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert done.status == "up_to_date" and done.result["version"] == champion(world["uri"])
        assert versions(world["uri"]) == before
    finally:
        manager.close()


def test_canary_policy_builds_one_candidate_on_the_challenger(mlflow_server: str, world: dict) -> None:
    """With --promote challenger, refits accumulate in the challenger (each derived from the last), a store
    already in it is up to date, and the champion never moves."""
    from pipelines.versions.registry import download
    from predictor.table import ParamTable

    model, root = "storecast-canary", world["root"]
    run_cli("train", "--data", str(root / "old.csv.gz"), "--tracking-uri", mlflow_server, "--model-name", model,
            "--alias", "champion", "--workers", "1", "--no-progress", cwd=root)
    first = champion(mlflow_server, model)
    port = free_port()
    log = root / "retrain-canary.log"
    svc = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "--data", str(world["latest"]), "--port",
                            str(port), "--host", "127.0.0.1", "--model-name", model, "--promote", "challenger"],
                           env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}, cwd=root,
                           stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/healthz", Service("retrain", svc, port, log=log), 120)
        one = wait_job(url, send(url, ["1"], "canary-1").json()["job_id"])
        assert one["status"] == "done" and one["result"]["promoted"] == "challenger", one
        assert one["result"]["parent_version"] == first
        again = send(url, ["1"], "canary-1-again")  # refitted into the challenger: not refitted again
        assert again.status_code == 200 and again.json()["status"] == "up_to_date"
        assert again.json()["result"]["version"] == one["result"]["version"]
        two = wait_job(url, send(url, ["2"], "canary-2").json()["job_id"])
        assert two["status"] == "done" and two["result"]["parent_version"] == one["result"]["version"]
        assert champion(mlflow_server, model) == first
        assert champion(mlflow_server, model, "challenger") == two["result"]["version"]
        assert versions(mlflow_server, model) == [first, one["result"]["version"], two["result"]["version"]]

        def table(version: str) -> ParamTable:
            path = download(f"models:/{model}/{version}", root / f"v{version}", "params.npz", mlflow_server)
            return ParamTable.load(path)

        def param(t: ParamTable, name: str, store: str) -> float:
            return getattr(t, name)[t.store_id.tolist().index(store)]

        old, cand1, cand2 = table(first), table(one["result"]["version"]), table(two["result"]["version"])
        # store 1's refit is carried into the second candidate as it was; store 2 is refitted there
        assert param(cand2, "k", "1") == param(cand1, "k", "1") != param(old, "k", "1")
        assert param(cand1, "last_day", "1") > param(old, "last_day", "1")
        assert param(cand2, "last_day", "2") > param(cand1, "last_day", "2") == param(old, "last_day", "2")
    finally:
        stop(svc)


def calendar_event(url: str, data: dict, event_id: str) -> httpx.Response:
    headers, body = to_binary(CloudEvent({"type": "com.storecast.calendar.updated", "source": "tests",
                                          "id": event_id}, data))
    return httpx.post(url, headers=headers, content=body, timeout=60)


def test_calendar_updated_event_is_served_without_a_refit(world: dict) -> None:
    """com.storecast.calendar.updated names a calendar held in the sales store: the champion again with it
    (same parameters), served."""
    from pipelines.data.calendar import read_calendar
    from pipelines.data.sales_store import SalesStore
    from pipelines.versions.registry import download
    from predictor.table import ParamTable

    path = world["root"] / "calendar.csv"
    path.write_text("Store,Date,Open,Promo,StateHoliday,SchoolHoliday\n1,2015-08-04,1,1,0,0\n1,2015-08-05,0,0,a,0\n")
    ref = SalesStore(str(world["latest"])).put_calendar(read_calendar(path))  # `storecast calendar upload`
    before = champion(world["uri"])
    _, values = forecast(world["predictor"], "1")
    r = calendar_event(world["url"], {"calendar": ref}, "cal-1")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["calendar"] == ref and out["parent_version"] == before
    assert out["version"] == champion(world["uri"]) != before
    tags = MlflowClient(world["uri"]).get_model_version(MODEL, out["version"]).tags
    assert tags["calendar_source"] == ref and tags["change"] == "calendar"
    old = ParamTable.load(download(f"models:/{MODEL}/{before}", world["root"] / "c-old", "params.npz",
                                   uri=world["uri"]))
    new = ParamTable.load(download(f"models:/{MODEL}/{out['version']}", world["root"] / "c-new", "params.npz",
                                   uri=world["uri"]))
    assert np.array_equal(old.beta, new.beta) and np.array_equal(old.reg_beta, new.reg_beta)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and forecast(world["predictor"], "1")[0] != out["version"]:
        time.sleep(0.3)
    version, now = forecast(world["predictor"], "1")
    assert version == out["version"] and now[1] > values[1]  # 2015-08-04: a promotion now
    again = calendar_event(world["url"], {"calendar": ref}, "cal-1").json()
    assert again.get("duplicate") and champion(world["uri"]) == out["version"]


def test_calendar_updates_that_cannot_be_taken_get_400_and_move_nothing(world: dict) -> None:
    from pipelines.data.calendar import read_calendar
    from pipelines.data.sales_store import SalesStore

    before, versions_before = champion(world["uri"]), versions(world["uri"])
    secret = world["root"] / "secret.csv"
    secret.write_text("Store,Date,Open\nTOP-SECRET-CELL,2015-08-04,1\n")
    cases = {  # data -> what the error must name
        "path": ({"path": str(world["root"] / "calendar.csv")}, "data.path"),
        "none": ({}, "data.calendar"),
        "outside": ({"calendar": "../secret.csv"}, "not allowed"),
        "absolute": ({"calendar": str(secret)}, "not allowed"),
        "unknown": ({"calendar": "calendar-20990101T000000000000Z-nope.csv.gz"}, "not allowed"),
    }
    path = world["root"] / "foreign.csv"
    path.write_text("Store,Date,Open,Promo,StateHoliday,SchoolHoliday\n77,2015-08-04,1,1,0,0\n")
    cases["foreign store"] = ({"calendar": SalesStore(str(world["latest"])).put_calendar(read_calendar(path))}, "77")
    for name, (data, named) in cases.items():
        r = calendar_event(world["url"], data, f"bad-cal-{name}")
        assert r.status_code == 400 and named in r.json()["error"], (name, r.text)
        assert "TOP-SECRET" not in r.text
    assert champion(world["uri"]) == before and versions(world["uri"]) == versions_before


def test_a_calendar_update_while_the_sales_store_is_down_is_a_503(world: dict) -> None:
    port, dead = free_port(), free_port()
    log = world["root"] / "retrain-down.log"
    svc = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "--port", str(port), "--model-name", MODEL,
                            "--data", f"http://127.0.0.1:{dead}/api/2.0/mlflow-artifacts/artifacts/sales/s.csv.gz",
                            "--no-drift", "--state", str(world["root"] / "down-state" / "jobs.sqlite")],
                           env={**os.environ, "MLFLOW_TRACKING_URI": world["uri"]}, cwd=world["root"],
                           stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/healthz", Service("retrain", svc, port, log=log), 120)
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["status"] == "degraded" and not health["data_source"]["ok"]
        r = calendar_event(url, {"calendar": "calendar-20150801T000000000000Z-abc.csv.gz"}, "down-1")
        assert r.status_code == 503 and r.headers["retry-after"] and "unreachable" in r.json()["error"], r.text
    finally:
        stop(svc)
