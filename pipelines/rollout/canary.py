"""Canary rollouts of a model version on the InferenceService, with the ``kubernetes`` client.

Every step is one JSON Patch (RFC 6902) on ``spec.predictor`` of the InferenceService, guarded by
``test`` operations so it never applies to an object that changed under it:

- start N P: set ``canaryTrafficPercent`` to P and pin the predictor's ``--model_uri`` to version N;
- promote: remove ``canaryTrafficPercent`` (the new revision takes all traffic) and move the MLflow
  ``champion`` alias to the pinned version;
- rollback: set ``canaryTrafficPercent`` to 0 and pin ``--model_uri`` back to the champion version.
``--dry-run`` prints the exact patch instead of sending it.

The automatic rollout (``pipelines.rollout.controller``) drives the same InferenceService through ``KubeTarget``:
the stable predictor follows ``models:/NAME@champion``; a canary step pins version N with
``canaryTrafficPercent``; promote moves the alias and restores the stable form (``restore_patch``:
no percent, ``--model_uri`` following champion again); a rollback first sends the canary no traffic
(percent 0, at once) and then restores the stable form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serving.contract import MODEL_NAME

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
URI_FLAGS = ("--model_uri", "--model-uri")
CANARY = "/spec/predictor/canaryTrafficPercent"


@dataclass(frozen=True)
class UriArg:
    """Where the predictor's model URI sits in its container args."""

    path: str  # JSON Pointer of the arg holding the value
    value: str  # the whole arg as it is now
    inline: bool  # "--model_uri=URI" (True) or "--model_uri", "URI" (False)
    flag: str

    @property
    def uri(self) -> str:
        return self.value.split("=", 1)[1] if self.inline else self.value

    def arg(self, uri: str) -> str:
        return f"{self.flag}={uri}" if self.inline else uri


def uri_arg(isvc: dict[str, Any]) -> UriArg:
    """Find ``--model_uri`` in the predictor's containers (KServe custom predictor)."""
    containers = isvc.get("spec", {}).get("predictor", {}).get("containers", [])
    for c, container in enumerate(containers):
        args = container.get("args", [])
        for i, arg in enumerate(args):
            for flag in URI_FLAGS:
                if arg.startswith(flag + "="):
                    return UriArg(f"/spec/predictor/containers/{c}/args/{i}", arg, True, flag)
                if arg == flag and i + 1 < len(args):
                    return UriArg(f"/spec/predictor/containers/{c}/args/{i + 1}", args[i + 1], False, flag)
    raise ValueError("the InferenceService's predictor has no --model_uri argument")


def version_uri(model_name: str, version: str | int) -> str:
    return f"models:/{model_name}/{version}"


def version_of(uri: str) -> str:
    """The version number of a pinned ``models:/NAME/N`` URI."""
    tail = uri.rstrip("/").rsplit("/", 1)[-1]
    if not uri.startswith("models:/") or not tail.isdigit():
        raise ValueError(f"the predictor is not pinned to a version: {uri!r} (expected models:/NAME/N)")
    return tail


def _canary_op(isvc: dict[str, Any], percent: int) -> list[dict[str, Any]]:
    current = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if current is None:
        return [{"op": "add", "path": CANARY, "value": percent}]
    return [{"op": "test", "path": CANARY, "value": current}, {"op": "replace", "path": CANARY, "value": percent}]


def start_patch(isvc: dict[str, Any], model_name: str, version: str | int, percent: int) -> list[dict[str, Any]]:
    """Pin version N and send ``percent`` of the traffic to it."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0..100, got {percent}")
    arg = uri_arg(isvc)
    return [{"op": "test", "path": arg.path, "value": arg.value}, *_canary_op(isvc, percent),
            {"op": "replace", "path": arg.path, "value": arg.arg(version_uri(model_name, version))}]


def promote_patch(isvc: dict[str, Any], model_name: str = MODEL_NAME) -> list[dict[str, Any]]:
    """The canary takes all traffic: remove ``canaryTrafficPercent``, and the predictor follows
    ``champion`` again (move the alias to the canary's version first: both revisions then serve it)."""
    current = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if current is None:
        raise ValueError("no canary in progress: spec.predictor.canaryTrafficPercent is not set")
    return restore_patch(isvc, model_name)


def rollback_patch(isvc: dict[str, Any], model_name: str, champion: str | int) -> list[dict[str, Any]]:
    """No traffic to the canary, and the predictor pinned back to the champion version."""
    arg = uri_arg(isvc)
    return [*_canary_op(isvc, 0), {"op": "test", "path": arg.path, "value": arg.value},
            {"op": "replace", "path": arg.path, "value": arg.arg(version_uri(model_name, champion))}]


def rollback_follow_patch(isvc: dict[str, Any], model_name: str, alias: str = "champion") -> list[dict[str, Any]]:
    """No traffic to the canary at once (the stable revision takes it all), and the predictor spec back
    to following ``alias``; removing the percent once that revision is ready restores the stable form."""
    arg = uri_arg(isvc)
    return [*_canary_op(isvc, 0), {"op": "test", "path": arg.path, "value": arg.value},
            {"op": "replace", "path": arg.path, "value": arg.arg(f"models:/{model_name}@{alias}")}]


def percent_patch(isvc: dict[str, Any], percent: int) -> list[dict[str, Any]]:
    """Only the share of the canary changes (the next step of a rollout)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0..100, got {percent}")
    return _canary_op(isvc, percent)


def restore_patch(isvc: dict[str, Any], model_name: str, alias: str = "champion") -> list[dict[str, Any]]:
    """The stable form: no ``canaryTrafficPercent``, the predictor following ``models:/NAME@alias``."""
    arg = uri_arg(isvc)
    current = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    ops: list[dict[str, Any]] = []
    if current is not None:
        ops += [{"op": "test", "path": CANARY, "value": current}, {"op": "remove", "path": CANARY}]
    return [*ops, {"op": "test", "path": arg.path, "value": arg.value},
            {"op": "replace", "path": arg.path, "value": arg.arg(f"models:/{model_name}@{alias}")}]


def traffic(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    """The predictor's traffic split from ``status.components.predictor.traffic``."""
    rows = isvc.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", []) or []
    return [{"revision": t.get("revisionName", ""), "percent": t.get("percent", 0), "tag": t.get("tag", ""),
             "latest": bool(t.get("latestRevision", False))} for t in rows]


class Canary:
    """Reads and patches one InferenceService through the Kubernetes API (kubeconfig or in-cluster)."""

    def __init__(self, name: str, namespace: str, api: Any = None) -> None:
        self.name, self.namespace = name, namespace
        if api is None:
            from kubernetes import client, config

            try:
                config.load_kube_config()
            except config.ConfigException:
                config.load_incluster_config()
            api = client.CustomObjectsApi()
        self.api = api

    def get(self) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def patch(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, ops,
                                                       _content_type="application/json-patch+json")


def show(ops: list[dict[str, Any]], isvc: str, namespace: str) -> str:
    """The patch as a ``kubectl patch`` command a person can read or run."""
    return (f"kubectl -n {namespace} patch inferenceservice {isvc} --type=json -p '"
            + json.dumps(ops) + "'")


# --- dry runs: no cluster ---------------------------------------------------------------------
# `storecast canary ... --dry-run` never reads a kubeconfig nor calls the API: it computes the patch
# against an InferenceService from a file (`kubectl get isvc storecast -o json`, or a rendered
# manifest), or else against the predictor as manifests/base declares it (tests/pipelines/cli/test_cli.py
# checks that this stays in step with the manifest).
BASE_PREDICTOR_ARGS = ["predictor", "--model_uri", f"models:/{MODEL_NAME}@champion", "--model_name", MODEL_NAME]


def offline(name: str, namespace: str, path: str | None = None) -> tuple[dict[str, Any], str]:
    """(InferenceService, where it came from) for a dry run: the one named ``name`` in ``path``
    (JSON or YAML, several documents allowed), or the predictor of manifests/base."""
    if path is None:
        isvc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"predictor": {"containers": [{"name": "kserve-container", "args": BASE_PREDICTOR_ARGS}]}}}
        return isvc, "the predictor as manifests/base declares it (give --from-file for the cluster's)"
    import yaml

    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if isinstance(d, dict)]
    items = [i for d in docs for i in (d.get("items") or [d])]  # a `kubectl get -o json` List too
    found = [d for d in items if d.get("kind") == "InferenceService" and d.get("metadata", {}).get("name") == name]
    if not found:
        raise ValueError(f"no InferenceService {name!r} in {path}")
    return found[0], path


# --- the declarative canary: the values of manifests/components/canary --------------------------------
# `storecast canary start --version N --percent P --emit` prints them; the component sets them on the
# InferenceService of the overlay it is added to (tests/manifests/test_canary_component.py renders it on each).
COMPONENT_VALUES = "manifests/components/canary/values/canary.yaml"


def component_values(model_name: str, version: str | int, percent: int) -> str:
    """The canary component's values file (``COMPONENT_VALUES``): version N of ``model_name`` on ``percent``
    of the predictor's traffic (a kustomize local-config object: read by kustomize, never applied)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0..100, got {percent}")
    if not str(version).isdigit():
        raise ValueError(f"version must be a model version number, got {version!r}")
    return ("# What to canary: edit modelUri (and percent), or write this file with\n"
            f"#   storecast canary start --version N --percent 10 --emit > {COMPONENT_VALUES}\n"
            "# kustomize reads it (local-config) and never applies it: no such object reaches the cluster.\n"
            "apiVersion: storecast/v1\n"
            "kind: Canary\n"
            "metadata:\n"
            "  name: storecast\n"
            "  annotations:\n"
            '    config.kubernetes.io/local-config: "true"\n'
            "spec:\n"
            f"  modelUri: {version_uri(model_name, int(version))} # the version to canary: models:/{model_name}/N\n"
            f"  percent: {percent} # its share of the predictor's traffic, 0..100; the rest stays on the serving "
            "revision\n")


# --- the rollout's target on a cluster -----------------------------------------------------------
REVISION_LABEL = "serving.knative.dev/revision"


class KubeTarget:
    """``pipelines.rollout.controller`` target: the InferenceService's predictor canary, through the Kubernetes API.

    Calls (RBAC of the retrain service: get/patch inferenceservices, list pods): GET and JSON-patch the
    InferenceService; list the pods of the canary revision (label ``serving.knative.dev/revision``)
    and read each one's ``/metrics`` on the predictor's REST port (inside the pod network).
    """

    def __init__(self, name: str = "storecast", namespace: str = "storecast", model_name: str = MODEL_NAME,
                 metrics_port: int = 8080, api: Any = None, core: Any = None, timeout: float = 5.0) -> None:
        if api is None or core is None:
            from kubernetes import client, config

            try:
                config.load_kube_config()
            except config.ConfigException:
                config.load_incluster_config()
            api, core = api or client.CustomObjectsApi(), core or client.CoreV1Api()
        self.isvc = Canary(name, namespace, api)
        self.core, self.namespace, self.model_name = core, namespace, model_name
        self.metrics_port, self.timeout = metrics_port, timeout
        self._before: str | None = None  # the newest revision before the canary was pinned
        self._percent: int | None = None

    def start(self, version: str, percent: int) -> None:
        isvc = self.isvc.get()
        pinned = uri_arg(isvc).uri == version_uri(self.model_name, version)
        if not pinned:
            self._before = _predictor_status(isvc).get("latestCreatedRevision")
        ops = percent_patch(isvc, percent) if pinned else start_patch(isvc, self.model_name, version, percent)
        self._percent = percent
        self.isvc.patch(ops)

    def ready(self, version: str) -> tuple[bool, str]:
        isvc = self.isvc.get()
        st = _predictor_status(isvc)
        created, ready = st.get("latestCreatedRevision"), st.get("latestReadyRevision")
        if uri_arg(isvc).uri != version_uri(self.model_name, version):
            return False, f"the predictor is pinned to {uri_arg(isvc).uri}, not version {version}"
        if not created or created == self._before:
            return False, "KServe has not created the canary revision yet"
        if ready != created:
            return False, f"canary revision {created} not ready (latest ready: {ready or '-'})"
        latest = [t for t in traffic(isvc) if t["latest"]]
        if self._percent is not None and (not latest or latest[0]["percent"] != self._percent):
            return False, f"traffic not split yet: {traffic(isvc)}"
        return True, f"revision {created} ready with {self._percent}%"

    def metrics(self) -> list[str]:
        import httpx

        rev = _predictor_status(self.isvc.get()).get("latestCreatedRevision")
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{REVISION_LABEL}={rev}")
        texts = []
        for pod in pods.items:
            ip = pod.status.pod_ip if pod.status else None
            if ip and pod.status.phase == "Running":
                texts.append(httpx.get(f"http://{ip}:{self.metrics_port}/metrics", timeout=self.timeout)
                             .raise_for_status().text)
        return texts

    def promote(self, version: str) -> None:
        """After the champion alias moved: no percent, following champion (until its new revision is
        ready Knative routes to the newest ready one, the canary: the same version)."""
        self.isvc.patch(promote_patch(self.isvc.get(), self.model_name))

    def rollback(self, version: str, wait: float = 300.0, poll: float = 2.0) -> None:
        """Percent 0 and the spec following champion in one patch (the stable revision takes every
        request at once); once the new revision is ready, the percent is removed (the stable form)."""
        import time

        isvc = self.isvc.get()
        before = _predictor_status(isvc).get("latestCreatedRevision")
        self.isvc.patch(rollback_follow_patch(isvc, self.model_name))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            isvc = self.isvc.get()
            st = _predictor_status(isvc)
            if st.get("latestCreatedRevision") not in (None, before) and \
                    st.get("latestReadyRevision") == st.get("latestCreatedRevision"):
                self.isvc.patch(restore_patch(isvc, self.model_name))
                return
            time.sleep(poll)
        # left at percent 0: safe (nothing reaches the canary); the next rollout or `kubectl apply -k` tidies up


def _predictor_status(isvc: dict[str, Any]) -> dict[str, Any]:
    return (isvc.get("status") or {}).get("components", {}).get("predictor", {}) or {}
