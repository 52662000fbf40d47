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

from pipelines import canary
from tests.conftest import Recorder, run_cli

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
    for _ in range(2):
        client.create_model_version("storecast", source=str(tmp_path))
    client.set_registered_model_alias("storecast", "champion", "1")
    run_cli("canary", "promote", "--tracking-uri", uri, env=env, cwd=tmp_path)
    (patch,) = [json.loads(r["body"]) for r in api.requests if r["method"] == "PATCH"]
    assert patch == [{"op": "test", "path": CANARY, "value": 10}, {"op": "remove", "path": CANARY},
                     {"op": "test", "path": ARG, "value": "--model_uri=models:/storecast/2"},
                     {"op": "replace", "path": ARG, "value": "--model_uri=models:/storecast@champion"}]
    assert str(client.get_model_version_by_alias("storecast", "champion").version) == "2"
