"""--fleet-backend rayjob: a fleet job becomes a KubeRay RayJob; the challenger it registers is rolled out.

A recording stand-in for the Kubernetes API (as in tests/pipelines/training/test_rayjob.py) that, when the RayJob
is created, plays KubeRay and the job's driver: the RayJob SUCCEEDED and a new version is the challenger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow import MlflowClient

from pipelines.retrain.jobs import RetrainManager, Settings
from pipelines.retrain.jobstore import Job
from tests.support import RAYJOBS, Recorder, kubeconfig, rayjob_template


def test_a_fleet_job_runs_as_a_rayjob_and_hands_its_challenger_on(tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = MlflowClient(uri)
    mlflow.create_registered_model("storecast")
    mlflow.create_model_version("storecast", source=str(tmp_path))
    mlflow.set_registered_model_alias("storecast", "champion", "1")
    state = {"storecast-train": rayjob_template()}

    def respond(method: str, path: str, body: bytes):
        name = path.removeprefix(RAYJOBS + "/")
        if method == "GET" and name in state:
            return 200, state[name]
        if method == "POST" and path == RAYJOBS:
            doc = json.loads(body)
            doc["metadata"]["uid"] = "uid-9"
            doc["status"] = {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}
            state[doc["metadata"]["name"]] = doc
            v = mlflow.create_model_version("storecast", source=str(tmp_path)).version  # what the driver registers
            mlflow.set_registered_model_alias("storecast", "challenger", str(v))
            return 201, doc
        return 404, {"kind": "Status", "code": 404}

    api = Recorder(respond)
    config = kubeconfig(tmp_path / "kubeconfig", api.url, token="t0ken", namespace="storecast")
    monkeypatch.setenv("KUBECONFIG", str(config))
    manager = RetrainManager(Settings(str(tmp_path / "sales.csv.gz"), uri=uri, state=str(tmp_path / "s.sqlite"),
                                      promote="challenger", fleet_backend="rayjob"))
    try:
        manager.store.put(Job("fleet1", None, "nightly", "ping", "challenger"))
        manager._queue.put("fleet1")
        deadline = time.monotonic() + 60
        while (job := manager.job("fleet1")).status not in ("done", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    finally:
        manager.close()
        api.close()
    assert job.status == "done", job.error
    assert job.result["rayjob"] == "storecast-retrain-fleet1" and job.result["version"] == "2"
    assert job.result["promoted"] == "challenger"
    created = json.loads(next(r["body"] for r in api.requests if r["method"] == "POST"))
    assert "--alias challenger" in created["spec"]["entrypoint"] and "--model-name storecast" in \
        created["spec"]["entrypoint"]
    assert created["metadata"]["annotations"]["storecast/reason"] == "nightly"
