"""Canary tooling: the exact JSON patches, and the `kubernetes` client's calls.

No Kubernetes API server can run here, so the client talks to a local HTTP server that serves the
InferenceService and records every call; the patches are compared as JSON, exactly as documented.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.rollout import canary
from tests.support import Recorder, run_cli

ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "storecast", "namespace": "storecast"},
    "spec": {"predictor": {"minReplicas": 0, "containers": [{
        "name": "kserve-container", "image": "storecast:dev",
        "args": ["predictor", "--model_name=storecast", "--model_uri=models:/storecast/1", "--http_port=8080"]}]}},
    "status": {"components": {"predictor": {"traffic": [
        {"revisionName": "storecast-predictor-00002", "percent": 10, "latestRevision": True, "tag": "latest"},
        {"revisionName": "storecast-predictor-00001", "percent": 90, "latestRevision": False, "tag": "prev"}]}}},
}
ARG = "/spec/predictor/containers/0/args/2"
CANARY = "/spec/predictor/canaryTrafficPercent"
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/storecast/inferenceservices/storecast"


def test_start_patch_pins_the_version_and_sets_the_percent() -> None:
    assert canary.start_patch(ISVC, "storecast", 7, 10) == [
        {"op": "test", "path": ARG, "value": "--model_uri=models:/storecast/1"},
        {"op": "add", "path": CANARY, "value": 10},
        {"op": "replace", "path": ARG, "value": "--model_uri=models:/storecast/7"},
    ]
    with pytest.raises(ValueError, match=r"0\.\.100"):
        canary.start_patch(ISVC, "storecast", 7, 101)


def test_split_args_and_a_running_canary() -> None:
    isvc = copy.deepcopy(ISVC)
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 10
    isvc["spec"]["predictor"]["containers"][0]["args"] = ["predictor", "--model_uri", "models:/storecast/7"]
    assert canary.start_patch(isvc, "storecast", 8, 25) == [
        {"op": "test", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast/7"},
        {"op": "test", "path": CANARY, "value": 10},
        {"op": "replace", "path": CANARY, "value": 25},
        {"op": "replace", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast/8"},
    ]
    assert canary.promote_patch(isvc) == [  # the predictor follows champion again (moved to 7 first)
        {"op": "test", "path": CANARY, "value": 10}, {"op": "remove", "path": CANARY},
        {"op": "test", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast/7"},
        {"op": "replace", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast@champion"}]
    assert canary.rollback_follow_patch(isvc, "storecast") == [
        {"op": "test", "path": CANARY, "value": 10}, {"op": "replace", "path": CANARY, "value": 0},
        {"op": "test", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast/7"},
        {"op": "replace", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast@champion"}]
    assert canary.rollback_patch(isvc, "storecast", 1) == [
        {"op": "test", "path": CANARY, "value": 10},
        {"op": "replace", "path": CANARY, "value": 0},
        {"op": "test", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast/7"},
        {"op": "replace", "path": "/spec/predictor/containers/0/args/2", "value": "models:/storecast/1"},
    ]


def test_promote_needs_a_canary_and_a_pinned_version() -> None:
    with pytest.raises(ValueError, match="no canary"):
        canary.promote_patch(ISVC)
    with pytest.raises(ValueError, match="not pinned"):
        canary.version_of("models:/storecast@champion")


def test_traffic_split_from_status() -> None:
    assert canary.traffic(ISVC) == [
        {"revision": "storecast-predictor-00002", "percent": 10, "tag": "latest", "latest": True},
        {"revision": "storecast-predictor-00001", "percent": 90, "tag": "prev", "latest": False}]


@pytest.fixture
def kube(tmp_path: Path):
    """A recording stand-in for the API server, and a kubeconfig pointing at it."""
    state = {"isvc": copy.deepcopy(ISVC)}
    api = Recorder(lambda method, path, body: (200, state["isvc"]) if path == PATH else (404, {"kind": "Status"}))
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": api.url}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "storecast"}}],
        "users": [{"name": "test", "user": {"token": "t0ken"}}]}))
    yield api, state, {"KUBECONFIG": str(config)}
    api.close()


def test_cli_start_sends_the_json_patch(kube: tuple, tmp_path: Path) -> None:
    api, _, env = kube
    out = run_cli("canary", "start", "--version", "7", "--percent", "10", env=env, cwd=tmp_path)
    patches = [r for r in api.requests if r["method"] == "PATCH"]
    assert [r["path"] for r in patches] == [PATH]
    assert patches[0]["headers"]["content-type"] == "application/json-patch+json"
    assert patches[0]["headers"]["authorization"] == "Bearer t0ken"
    sent = json.loads(patches[0]["body"])
    assert sent == canary.start_patch(ISVC, "storecast", 7, 10)
    assert json.dumps(sent) in out.stdout  # what it printed is what it sent


def test_cli_dry_run_changes_nothing(kube: tuple, tmp_path: Path) -> None:
    api, _, env = kube
    out = run_cli("canary", "rollback", "--to-version", "1", "--dry-run", env=env, cwd=tmp_path)
    assert api.requests == []  # a dry run never calls the API (nor reads the kubeconfig)
    assert "kubectl -n storecast patch inferenceservice storecast --type=json" in out.stdout


def test_cli_status_shows_the_split(kube: tuple, tmp_path: Path) -> None:
    _, _, env = kube
    out = run_cli("canary", "status", env=env, cwd=tmp_path).stdout
    assert "pinned to models:/storecast/1" in out
    assert "storecast-predictor-00002" in out and "10%" in out and "90%" in out


def test_cli_promote_patches_and_moves_champion(kube: tuple, tmp_path: Path) -> None:
    api, state, env = kube
    state["isvc"]["spec"]["predictor"]["canaryTrafficPercent"] = 10
    state["isvc"]["spec"]["predictor"]["containers"][0]["args"][2] = "--model_uri=models:/storecast/2"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("storecast")
    client.create_model_version("storecast", source=str(tmp_path))
    client.create_model_version("storecast", source=str(tmp_path), tags={"parent_version": "1"})  # nothing to carry
    client.set_registered_model_alias("storecast", "champion", "1")
    run_cli("canary", "promote", "--tracking-uri", uri, env=env, cwd=tmp_path)
    (patch,) = [json.loads(r["body"]) for r in api.requests if r["method"] == "PATCH"]
    assert patch == [{"op": "test", "path": CANARY, "value": 10}, {"op": "remove", "path": CANARY},
                     {"op": "test", "path": ARG, "value": "--model_uri=models:/storecast/2"},
                     {"op": "replace", "path": ARG, "value": "--model_uri=models:/storecast@champion"}]
    assert str(client.get_model_version_by_alias("storecast", "champion").version) == "2"


# ---- the automatic rollout against the Kubernetes API (pipelines.rollout.controller + canary.KubeTarget) ----------
PODS = "/api/v1/namespaces/storecast/pods"


def apply_patch(doc: dict, ops: list[dict]) -> tuple[bool, dict]:
    """RFC 6902 test/add/replace/remove on a copy of ``doc`` (what the API server does; False: a test failed)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p for p in op["path"].split("/")[1:]]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            if node[key] != op["value"]:
                return False, doc
        elif op["op"] in ("add", "replace"):
            node[key] = op["value"]
        elif op["op"] == "remove":
            del node[key]
    return True, doc


class FakeKServe:
    """The InferenceService as KServe would show it: every predictor spec change is a new ready revision;
    canaryTrafficPercent splits the traffic between it and the last revision rolled out."""

    def __init__(self, metrics_port: int) -> None:
        isvc = copy.deepcopy(ISVC)
        isvc["spec"]["predictor"]["containers"][0]["args"][2] = "--model_uri=models:/storecast@champion"
        isvc["status"] = {"components": {"predictor": {
            "latestCreatedRevision": "storecast-predictor-00001", "latestReadyRevision": "storecast-predictor-00001",
            "latestRolledoutRevision": "storecast-predictor-00001",
            "traffic": [{"revisionName": "storecast-predictor-00001", "percent": 100, "latestRevision": True}]}}}
        self.isvc, self.revisions, self.pod_queries = isvc, 1, []
        self.api = Recorder(self.respond)
        self.metrics_port = metrics_port

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if path == PATH and method == "GET":
            return 200, self.isvc
        if path == PATH and method == "PATCH":
            ok, new = apply_patch(self.isvc, json.loads(body))
            if not ok:
                return 422, {"kind": "Status", "message": "test operation failed"}
            st = new["status"]["components"]["predictor"]
            if new["spec"]["predictor"]["containers"] != self.isvc["spec"]["predictor"]["containers"]:
                self.revisions += 1
                st["latestCreatedRevision"] = st["latestReadyRevision"] = f"storecast-predictor-{self.revisions:05d}"
            percent = new["spec"]["predictor"].get("canaryTrafficPercent")
            latest = {"revisionName": st["latestCreatedRevision"], "latestRevision": True,
                      "percent": 100 if percent is None else percent}
            if percent is None:
                st["latestRolledoutRevision"], st["traffic"] = st["latestCreatedRevision"], [latest]
            else:
                st["traffic"] = [latest, {"revisionName": st["latestRolledoutRevision"], "latestRevision": False,
                                          "percent": 100 - percent}]
            self.isvc = new
            return 200, new
        if path.startswith(PODS):
            self.pod_queries.append(path)
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                {"metadata": {"name": "canary-pod"}, "status": {"phase": "Running", "podIP": "127.0.0.1"}}]}
        return 404, {"kind": "Status"}

    def patches(self) -> list[list[dict]]:
        return [json.loads(r["body"]) for r in self.api.requests if r["method"] == "PATCH"]


class PredictorMetrics:
    """A canary pod's /metrics: each read shows 40 more requests, ``bad`` of them answered 4xx."""

    def __init__(self, bad: float) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.reads = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                me.reads += 1
                n = 40 * me.reads
                text = (f'storecast_requests_total{{component="predictor",outcome="ok",protocol="grpc"}} '
                        f'{n * (1 - bad)}\n'
                        f'storecast_requests_total{{component="predictor",outcome="4xx",protocol="grpc"}} {n * bad}\n'
                        f'request_predict_seconds_bucket{{le="0.005",model_name="storecast"}} {n}\n'
                        f'request_predict_seconds_bucket{{le="+Inf",model_name="storecast"}} {n}\n')
                data = text.encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rollout_against(tmp_path: Path, bad: float) -> tuple[dict, FakeKServe, MlflowClient]:
    from kubernetes import client, config

    from pipelines.rollout.controller import Rollout, RolloutPolicy
    from pipelines.versions.registry import Registry

    metrics = PredictorMetrics(bad)
    kserve = FakeKServe(metrics.port)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = MlflowClient(uri)
    mlflow.create_registered_model("storecast")
    mlflow.create_model_version("storecast", source=str(tmp_path))
    mlflow.create_model_version("storecast", source=str(tmp_path), tags={"parent_version": "1"})  # derived from 1
    mlflow.set_registered_model_alias("storecast", "champion", "1")
    mlflow.set_registered_model_alias("storecast", "challenger", "2")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": kserve.api.url}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}], "users": [{"name": "t", "user": {}}]}))
    config.load_kube_config(config_file=str(kubeconfig))
    target = canary.KubeTarget(api=client.CustomObjectsApi(), core=client.CoreV1Api(), metrics_port=metrics.port)
    policy = RolloutPolicy(steps=(10, 50), watch_seconds=0.3, poll_seconds=0.1, ready_timeout=5, min_requests=20)
    try:
        doc = Rollout(Registry(uri), target, policy).run("2", "job-1")
    finally:
        kserve.api.close()
        metrics.close()
    return doc, kserve, mlflow


def test_rollout_promotes_through_the_exact_api_calls(tmp_path: Path) -> None:
    doc, kserve, mlflow = rollout_against(tmp_path, bad=0.0)
    assert doc["status"] == "promoted", doc
    follow = "--model_uri=models:/storecast@champion"
    assert kserve.patches() == [
        [{"op": "test", "path": ARG, "value": follow}, {"op": "add", "path": CANARY, "value": 10},
         {"op": "replace", "path": ARG, "value": "--model_uri=models:/storecast/2"}],
        [{"op": "test", "path": CANARY, "value": 10}, {"op": "replace", "path": CANARY, "value": 50}],
        [{"op": "test", "path": CANARY, "value": 50}, {"op": "remove", "path": CANARY},
         {"op": "test", "path": ARG, "value": "--model_uri=models:/storecast/2"},
         {"op": "replace", "path": ARG, "value": follow}]]
    # the canary's metrics come from the pods of the canary revision, found by Knative's label
    from urllib.parse import parse_qs, urlsplit

    queries = {(urlsplit(q).path, parse_qs(urlsplit(q).query)["labelSelector"][0]) for q in kserve.pod_queries}
    assert queries == {(PODS, "serving.knative.dev/revision=storecast-predictor-00002")}
    assert str(mlflow.get_model_version_by_alias("storecast", "champion").version) == "2"
    assert mlflow.get_model_version("storecast", "2").tags["rollout"] == "promoted"
    assert kserve.isvc["spec"]["predictor"]["containers"][0]["args"][2] == follow  # the stable form again
    assert "canaryTrafficPercent" not in kserve.isvc["spec"]["predictor"]


def test_rollout_rolls_back_through_the_exact_api_calls(tmp_path: Path) -> None:
    doc, kserve, mlflow = rollout_against(tmp_path, bad=0.25)
    assert doc["status"] == "rolledback" and "error ratio 25.0%" in doc["reason"], doc
    follow = "--model_uri=models:/storecast@champion"
    assert kserve.patches() == [
        [{"op": "test", "path": ARG, "value": follow}, {"op": "add", "path": CANARY, "value": 10},
         {"op": "replace", "path": ARG, "value": "--model_uri=models:/storecast/2"}],
        # at once no traffic to the canary, the spec following champion again ...
        [{"op": "test", "path": CANARY, "value": 10}, {"op": "replace", "path": CANARY, "value": 0},
         {"op": "test", "path": ARG, "value": "--model_uri=models:/storecast/2"},
         {"op": "replace", "path": ARG, "value": follow}],
        # ... and once that revision is ready, the stable form
        [{"op": "test", "path": CANARY, "value": 0}, {"op": "remove", "path": CANARY},
         {"op": "test", "path": ARG, "value": follow}, {"op": "replace", "path": ARG, "value": follow}]]
    assert str(mlflow.get_model_version_by_alias("storecast", "champion").version) == "1"
    tags = mlflow.get_model_version("storecast", "2").tags
    assert tags["rollout"] == "rolledback" and "error ratio" in tags["rollout_reason"]
