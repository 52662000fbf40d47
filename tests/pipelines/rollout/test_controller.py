"""Fleet versions roll out by themselves, locally end to end with real processes.

A `mlflow server`, two predictors (one following ``champion``, one following ``challenger``: the
canary), the retrain service with ``--promote challenger --rollout local``, and traffic on both
predictors. The rollout's policy reads the real ``/metrics`` of the challenger predictor: with clean
traffic the candidate is promoted (champion moved, the champion-following predictor serves it); when
a share of the canary's requests fail (a store id it does not know) it is rolled back, the reason on
the version and in a CloudEvent. A calendar pushed onto the champion while a candidate is in its canary
is not lost: the rollout promotes by compare-and-set the candidate with what the champion gained
(``lineage.carry_over``), and both the refit and the calendar are served.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from mlflow import MlflowClient

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import Service, free_port, wait_ready
from tests.support import ADMIN_KEY, Recorder, admin_auth, alias, log_tail, send, start_service, stop, train, wait_job

MODEL = "storecast-rollout"
STORES = [str(s) for s in range(1, 7)]


def predictor(uri: str, model_uri: str, root, name: str) -> Service:
    http, grpc = free_port(), free_port()
    log = root / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "predictor", "--model_uri", model_uri, "--refresh-seconds", "1",
                             "--http_port", str(http), "--grpc_port", str(grpc),
                             "--auth-file", str(admin_auth(root))],  # reloads need admin: the rollout's key
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))
    svc = Service(name, proc, http, grpc, log)
    wait_ready(f"{svc.url}/v2/models/storecast/ready", svc, 120)
    return svc


def served(svc: Service) -> str:
    return httpx.get(f"{svc.url}/v2/models/storecast", timeout=10).json()["versions"][0]


class Traffic:
    """Requests on both predictors, all the time; ``bad`` is the share of the canary's for an unknown store."""

    def __init__(self, champion: Service, canary: Service) -> None:
        self.bad = 0.0
        self.sent = {"champion": 0, "canary": 0}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(champion, "champion", 0.05), daemon=True),
                         threading.Thread(target=self._loop, args=(canary, "canary", 0.02), daemon=True)]
        for t in self._threads:
            t.start()

    def _loop(self, svc: Service, name: str, pause: float) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                store = "77" if name == "canary" and random.random() < self.bad else random.choice(STORES)
                try:
                    client.post(f"{svc.url}/v2/models/storecast/infer", json={"inputs": [
                        {"name": "store_id", "datatype": "BYTES", "shape": [1], "data": [store]},
                        {"name": "ds", "datatype": "BYTES", "shape": [1], "data": ["2015-08-03"]}]})
                    self.sent[name] += 1
                except httpx.HTTPError:
                    pass
                time.sleep(pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("rollout")
    sales = synthesize(len(STORES), seed=31)
    write_sales(sales[sales["Date"] <= "2015-06-30"], root / "old.csv.gz")
    latest = write_sales(sales, root / "latest.csv.gz")
    first = train(root / "old.csv.gz", mlflow_server, MODEL, root)
    MlflowClient(mlflow_server).set_registered_model_alias(MODEL, "challenger", first)
    sink = Recorder()
    services: list[Service] = []
    traffic = None
    try:
        stable = predictor(mlflow_server, f"models:/{MODEL}@champion", root, "stable")
        services.append(stable)
        canary = predictor(mlflow_server, f"models:/{MODEL}@challenger", root, "canary")
        services.append(canary)
        svc = start_service(latest, mlflow_server, MODEL, root, "--promote", "challenger", "--rollout", "local",
                            "--canary-url", canary.url, "--reload-url", stable.url, "--rollout-steps", "10,50",
                            "--rollout-watch-seconds", "4", "--rollout-poll-seconds", "0.5",
                            "--canary-min-requests", "20", "--canary-max-error-ratio", "0.05",
                            "--canary-max-p95-ms", "2000", "--rollout-ready-timeout", "90",
                            env={"K_SINK": sink.url, "STORECAST_RETRAIN_PREDICTOR_API_KEY": ADMIN_KEY})
        services.append(svc)
        traffic = Traffic(stable, canary)
        yield {"uri": mlflow_server, "svc": svc, "stable": stable, "canary": canary, "sink": sink, "first": first,
               "traffic": traffic}
    finally:
        if traffic is not None:
            traffic.stop()
        for s in reversed(services):
            stop(s.proc)
        sink.close()


def wait_rollout(url: str, version: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = [d for d in httpx.get(f"{url}/rollouts", timeout=10).json()["rollouts"] if d["version"] == version]
        if docs and docs[0]["status"] != "running":
            return docs[0]
        time.sleep(0.3)
    raise TimeoutError(f"rollout of {version}")


def show(doc: dict) -> None:
    print(f"\nrollout of version {doc['version']}: {doc['status']} {doc.get('reason', '')}")
    for row in doc["timeline"]:
        print("  ", json.dumps(row))


def test_a_clean_canary_is_promoted(world: dict) -> None:
    svc, uri = world["svc"], world["uri"]
    job = wait_job(svc.url, send(svc.url, {"store_ids": ["1", "2"]}, "fleet-1").json()["job_id"])
    assert job["status"] == "done" and job["result"]["promoted"] == "challenger", (job, log_tail(svc))
    version = job["result"]["version"]
    doc = wait_rollout(svc.url, version)
    show(doc)
    assert doc["status"] == "promoted", (doc, log_tail(svc))
    assert [r["event"] for r in doc["timeline"]] == ["started", "canary", "ready", "passed", "canary", "ready",
                                                     "passed", "promoted"]
    assert [r["percent"] for r in doc["timeline"] if r["event"] == "passed"] == [10, 50]
    assert all(r["requests"] >= 20 and r["errors"] == 0 for r in doc["timeline"] if r["event"] == "passed")
    assert alias(uri, MODEL) == version and alias(uri, MODEL, "challenger") is None
    assert served(world["stable"]) == version  # the champion-following predictor serves it now
    tags = MlflowClient(uri).get_model_version(MODEL, version).tags
    assert tags["rollout"] == "promoted"
    promoted = [e for e in world["sink"].events() if e["type"] == "com.storecast.rollout.promoted"]
    assert [e["data"]["version"] for e in promoted] == [version]
    assert wait_job(svc.url, job["job_id"])["result"]["rollout"]["status"] == "promoted"


def test_a_failing_canary_is_rolled_back_with_the_reason(world: dict) -> None:
    svc, uri = world["svc"], world["uri"]
    champion = alias(uri, MODEL)
    world["traffic"].bad = 0.3  # three in ten of the canary's requests name a store it does not know
    try:
        job = wait_job(svc.url, send(svc.url, {"store_ids": ["3"]}, "fleet-2").json()["job_id"])
        assert job["status"] == "done" and job["result"]["promoted"] == "challenger", job
        version = job["result"]["version"]
        doc = wait_rollout(svc.url, version)
    finally:
        world["traffic"].bad = 0.0
    show(doc)
    assert doc["status"] == "rolledback" and doc["reason"].startswith("step 10%: error ratio"), doc
    assert doc["timeline"][-2]["event"] == "failed" and doc["timeline"][-2]["error_ratio"] > 0.05
    assert alias(uri, MODEL) == champion and alias(uri, MODEL, "challenger") is None
    assert served(world["stable"]) == champion
    tags = MlflowClient(uri).get_model_version(MODEL, version).tags
    assert tags["rollout"] == "rolledback" and "error ratio" in tags["rollout_reason"]
    back = [e for e in world["sink"].events() if e["type"] == "com.storecast.rollout.rolledback"]
    assert [e["data"]["version"] for e in back] == [version] and "error ratio" in back[0]["data"]["reason"]
    metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
    assert 'storecast_rollouts_total{outcome="promoted"} 1.0' in metrics
    assert 'storecast_rollouts_total{outcome="rolledback"} 1.0' in metrics


def test_a_canary_that_never_turns_ready_is_rolled_back(tmp_path) -> None:
    from pipelines.rollout.controller import LocalTarget, Rollout, RolloutPolicy
    from pipelines.versions.registry import Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("storecast")
    for _ in range(2):
        client.create_model_version("storecast", source=str(tmp_path))
    client.set_registered_model_alias("storecast", "champion", "1")
    client.set_registered_model_alias("storecast", "challenger", "2")
    policy = RolloutPolicy(steps=(10,), ready_timeout=1, poll_seconds=0.2, watch_seconds=1)
    doc = Rollout(Registry(uri), LocalTarget("http://127.0.0.1:9"), policy).run("2")
    assert doc["status"] == "rolledback" and doc["reason"].startswith("canary not ready after 1 s: canary predictor")
    assert "unreachable" in doc["reason"]
    assert str(client.get_model_version_by_alias("storecast", "champion").version) == "1"
    assert client.get_model_version("storecast", "2").tags["rollout"] == "rolledback"


def test_a_calendar_pushed_during_the_canary_is_in_the_promoted_version(world: dict, tmp_path) -> None:
    import numpy as np

    from pipelines.data.calendar import read_calendar
    from pipelines.versions.calendar_push import push
    from pipelines.versions.lineage import store_grid
    from pipelines.versions.registry import Registry

    svc, uri = world["svc"], world["uri"]
    job = wait_job(svc.url, send(svc.url, {"store_ids": ["4"]}, "fleet-3").json()["job_id"])
    assert job["status"] == "done" and job["result"]["promoted"] == "challenger", job
    version = job["result"]["version"]
    deadline = time.monotonic() + 120
    while not any(d["version"] == version and any(r["event"] == "canary" for r in d["timeline"])
                  for d in httpx.get(f"{svc.url}/rollouts", timeout=10).json()["rollouts"]):
        assert time.monotonic() < deadline, "the canary never started"
        time.sleep(0.2)
    path = tmp_path / "calendar.csv"
    path.write_text("Store,Date,Open,Promo,StateHoliday,SchoolHoliday\n5,2015-08-04,1,1,0,0\n5,2015-08-05,0,0,a,0\n")
    pushed = push(read_calendar(path), tracking_uri=uri, model_name=MODEL, alias="champion", source="test push")
    doc = wait_rollout(svc.url, version)
    show(doc)
    assert doc["status"] == "promoted", (doc, log_tail(svc))
    final = alias(uri, MODEL)
    assert final == doc["promoted_version"]
    registry = Registry(uri, MODEL)
    table, candidate = registry.table(final), registry.table(version)
    start, grid = store_grid(table, "5")
    day = int(np.datetime64("2015-08-04", "D").astype(np.int64))
    assert grid[day - start][1] == 1 and grid[day + 1 - start][0] == 0  # the pushed promotion and closure
    ids = table.store_id.tolist()
    assert table.last_day[ids.index("4")] == candidate.last_day[candidate.store_id.tolist().index("4")]  # the refit
    if final != version:  # the push landed during the canary: carried over, and it says so
        tags = MlflowClient(uri).get_model_version(MODEL, final).tags
        assert tags["change"] == "carry-over" and tags["carried_from"] == pushed.version, tags
