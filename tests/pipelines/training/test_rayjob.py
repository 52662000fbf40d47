"""RayJobs of fleet retrains (issue 16): the document, and the exact Kubernetes API calls that submit it.

No Kubernetes API server runs here: the ``kubernetes`` client talks to a local HTTP server that
serves the template RayJob and records every call (as tests/pipelines/rollout/test_canary.py does); the documents are
validated against the KubeRay v1.7.0 CRD schema in schemas/ray.io.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest

from pipelines.cli.main import build_parser
from pipelines.training import rayjob
from tests.support import RAYJOBS, Recorder, kubeconfig, rayjob_template, schema_errors


def _train_args(command: str):
    argv = shlex.split(command)
    assert argv[:2] == ["storecast", "train"]
    return build_parser().parse_args(argv[1:])


def test_built_rayjob_validates_and_the_schema_is_strict():
    doc = rayjob.build_rayjob("storecast-retrain-1", image="registry.example.com/storecast:1",
                              command=rayjob.entrypoint())
    assert schema_errors(doc) == []
    broken = copy.deepcopy(doc)
    broken["spec"]["shutdownAfterJobFinish"] = True  # misspelt
    assert schema_errors(broken)
    broken = copy.deepcopy(doc)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 3
    assert schema_errors(broken)


def test_entrypoint_is_a_train_on_the_cluster_it_runs_in():
    args = _train_args(rayjob.entrypoint(alias="champion", extra=("--model", "seed")))
    assert (args.backend, args.ray_address, args.alias, args.model) == ("ray", "auto", "champion", "seed")
    assert args.data == rayjob.SALES and args.tracking_uri == rayjob.MLFLOW and args.json and args.no_progress


def test_cluster_is_ephemeral_sized_and_unprivileged():
    size = rayjob.ClusterSize(workers=8, worker_cpus=4, worker_memory="8Gi")
    spec = rayjob.build_rayjob("t", image="img", command="x", size=size)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    [group] = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 8
    [worker] = group["template"]["spec"]["containers"]
    assert group["rayStartParams"]["num-cpus"] == worker["resources"]["limits"]["cpu"] == "4"
    assert worker["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no fits next to the driver
    assert cluster["authOptions"] == {"mode": "token"}
    for pod in (cluster["headGroupSpec"]["template"], group["template"], spec["submitterPodTemplate"]):
        assert pod["spec"]["automountServiceAccountToken"] is False
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsUser"] == 10001
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
    with pytest.raises(ValueError, match="at least one worker"):
        rayjob.ClusterSize(workers=0)
    for bad in ("Storecast", "a_b", "x" * 41, "-x"):
        with pytest.raises(ValueError, match="RayJob name"):
            rayjob.build_rayjob(bad, image="img", command="x")


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A recording stand-in for the API server holding the template RayJob; KUBECONFIG points at it."""
    state: dict[str, dict] = {"storecast-train": rayjob_template()}

    def respond(method: str, path: str, body: bytes):
        name = path.removeprefix(RAYJOBS + "/")
        if method == "GET" and name in state:
            return 200, state[name]
        if method == "POST" and path == RAYJOBS:
            doc = json.loads(body)
            if doc["metadata"]["name"] in state:
                return 409, {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409}
            doc["metadata"]["uid"] = "uid-1"
            state[doc["metadata"]["name"]] = doc
            return 201, doc
        return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}

    api = Recorder(respond)
    config = kubeconfig(tmp_path / "kubeconfig", api.url, token="t0ken", namespace="storecast")
    monkeypatch.setenv("KUBECONFIG", str(config))
    yield api, state
    api.close()


FLEET = ("--parent", "@champion", "--force")


def test_fleet_retrain_is_one_get_and_one_create(kube):
    api, _ = kube
    out = rayjob.submit_fleet_retrain(reason="nightly: 1115 stale stores", job_id="Job-7f3a", alias="challenger")
    assert out == {"name": "storecast-retrain-job7f3a", "namespace": "storecast", "uid": "uid-1",
                   "entrypoint": rayjob.entrypoint(alias="challenger", extra=FLEET)}
    assert [(r["method"], r["path"]) for r in api.requests] == [
        ("GET", f"{RAYJOBS}/storecast-train"), ("POST", RAYJOBS)]
    post = api.requests[1]
    assert post["headers"]["authorization"] == "Bearer t0ken"
    assert post["headers"]["accept"] == "application/json"
    sent = json.loads(post["body"])
    expected_spec = {k: v for k, v in rayjob_template()["spec"].items() if k != "entrypoint"}
    assert sent == {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": "storecast-retrain-job7f3a", "namespace": "storecast",
                     "labels": {"app.kubernetes.io/part-of": "storecast", "app.kubernetes.io/component": "retrain"},
                     "annotations": {"storecast/reason": "nightly: 1115 stale stores",
                                     "storecast/template": "storecast-train"}},
        "spec": {**expected_spec, "entrypoint": rayjob.entrypoint(alias="challenger", extra=FLEET)}}
    assert schema_errors(sent) == []
    args = _train_args(sent["spec"]["entrypoint"])
    assert args.alias == "challenger"
    assert args.parent == "@champion" and args.force  # derived: the champion's calendars and stores carry over


def test_a_redelivered_retrain_finds_its_rayjob(kube):
    api, _ = kube
    first = rayjob.submit_fleet_retrain(reason="r", job_id="abc")
    again = rayjob.submit_fleet_retrain(reason="r", job_id="abc")
    assert again == first
    assert [(r["method"], r["path"]) for r in api.requests][-3:] == [
        ("GET", f"{RAYJOBS}/storecast-train"), ("POST", RAYJOBS), ("GET", f"{RAYJOBS}/storecast-retrain-abc")]
    assert rayjob.status("storecast-train") == {"name": "storecast-train", "job_status": "SUCCEEDED",
                                                "deployment_status": "Complete", "message": "", "cluster": ""}


def test_no_template_says_what_to_apply(kube):
    api, state = kube
    del state["storecast-train"]
    with pytest.raises(LookupError, match="apply manifests/overlays/ray first"):
        rayjob.submit_fleet_retrain(reason="r")
    assert [r["method"] for r in api.requests] == ["GET"]
