"""Training on a Ray cluster in Kubernetes: a KubeRay ``RayJob`` running ``storecast train --backend ray``.

A RayJob (``ray.io/v1``) brings up its own RayCluster (one head for the driver, a group of fitting
workers), runs the entrypoint on it through Ray's job API, and with ``shutdownAfterJobFinishes``
deletes the cluster ``ttlSecondsAfterFinished`` seconds after the job ended; the RayJob object stays
as the record (status, logs while the cluster lives). The driver reads the sales table from MLflow's
artifact proxy, fits every store as Ray tasks and registers one version in the in-cluster MLflow.

``manifests/overlays/ray`` holds the RayJob of the first training (``storecast-train``), written
with ``build_rayjob`` (``tests/manifests/test_ray.py`` checks they agree). The retrain service starts a
fleet-wide retrain with ``submit_fleet_retrain``: a new RayJob with the cluster of that template (so
the image and sizes are the ones deployed) and a ``storecast train`` of its own settings, created
through the Kubernetes API (RBAC: ``create`` and ``get`` on ``rayjobs`` in the namespace); a refit
of a few stores stays in the retrain service's process.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import uuid
from dataclasses import dataclass
from typing import Any

from serving.contract import MODEL_NAME

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
NAMESPACE = "storecast"
TEMPLATE = "storecast-train"  # the first training's RayJob (manifests/overlays/ray), template of retrains
MLFLOW = f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
SALES = f"{MLFLOW}/api/2.0/mlflow-artifacts/artifacts/sales/train.csv.gz"
UID = 10001  # the image's numeric non-root user (Dockerfile)
SHM = "/dev/shm"  # Ray's object store lives in shared memory; a pod's default /dev/shm is 64 MB
NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")  # KubeRay appends suffixes to the cluster's name


@dataclass(frozen=True)
class ClusterSize:
    """The RayCluster of one training: a head for the driver (no fits on it) and fitting workers."""

    workers: int = 4
    worker_cpus: int = 2  # Ray CPUs of a worker pod = its CPU request and limit (one fit per CPU)
    worker_memory: str = "4Gi"  # ~0.5 GiB per fitting process, plus the raylet and the object store
    head_cpus: int = 2  # driver, GCS, job server
    head_memory: str = "6Gi"  # the driver holds the sales table and every store's result
    shm: str = "2Gi"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.worker_cpus < 1 or self.head_cpus < 1:
            raise ValueError("a cluster needs at least one worker, and one CPU per pod")


def entrypoint(*, data: str = SALES, tracking_uri: str = MLFLOW, model_name: str = MODEL_NAME,
               alias: str = "challenger", extra: tuple[str, ...] = ()) -> str:
    """The driver's command: ``storecast train`` on the cluster this job runs in (``--ray-address auto``)."""
    return shlex.join(["storecast", "train", "--backend", "ray", "--ray-address", "auto", "--data", data,
                       "--tracking-uri", tracking_uri, "--model-name", model_name, "--alias", alias,
                       "--no-progress", "--json", *extra])


def _security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(cpus: int, memory: str, cpu_request: str | None = None) -> dict[str, Any]:
    return {"requests": {"cpu": cpu_request or str(cpus), "memory": memory},
            "limits": {"cpu": str(cpus), "memory": memory}}


def _pod(container: dict[str, Any], shm: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"automountServiceAccountToken": False, "containers": [container],
                            "securityContext": {"runAsNonRoot": True, "fsGroup": UID}}
    if shm:
        container["volumeMounts"] = [{"name": "shm", "mountPath": SHM}]
        spec["volumes"] = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]
    return {"metadata": {"labels": {"app.kubernetes.io/name": "storecast-train"}}, "spec": spec}


def _probe(port: int, path: str) -> dict[str, Any]:
    """HTTP probes (KubeRay's default probes exec ``wget``, which the slim image does not have)."""
    return {"httpGet": {"path": path, "port": port}, "initialDelaySeconds": 10, "periodSeconds": 5,
            "timeoutSeconds": 2, "failureThreshold": 12}


def cluster_spec(image: str, size: ClusterSize = ClusterSize()) -> dict[str, Any]:
    """The RayCluster: token auth, a head that runs no fits (``num-cpus: 0``), ``size.workers`` workers."""
    head = {"name": "ray-head", "image": image, "resources": _resources(size.head_cpus, size.head_memory, "1"),
            "ports": [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
                      {"name": "client", "containerPort": 10001}],
            "readinessProbe": _probe(8265, "/api/gcs_healthz"),
            "livenessProbe": _probe(52365, "/api/local_raylet_healthz"),
            "securityContext": _security()}
    worker = {"name": "ray-worker", "image": image, "resources": _resources(size.worker_cpus, size.worker_memory),
              "readinessProbe": _probe(52365, "/api/local_raylet_healthz"),
              "livenessProbe": _probe(52365, "/api/local_raylet_healthz"),
              "securityContext": _security()}
    return {
        "rayVersion": "2.60.0",  # the image's Ray (pyproject's storecast[ray] pin)
        "authOptions": {"mode": "token"},  # KubeRay keeps the token in a Secret and gives it to every pod
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                          "template": _pod(head, size.shm)},
        "workerGroupSpecs": [{"groupName": "fit", "replicas": size.workers, "minReplicas": size.workers,
                              "maxReplicas": size.workers, "rayStartParams": {"num-cpus": str(size.worker_cpus)},
                              "template": _pod(worker, size.shm)}],
    }


def build_rayjob(name: str, *, image: str, command: str, size: ClusterSize = ClusterSize(),
                 namespace: str | None = NAMESPACE, ttl_seconds: int = 300, deadline_seconds: int = 3 * 3600,
                 labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A RayJob running ``command`` on an ephemeral RayCluster, deleted ``ttl_seconds`` after the job ends."""
    if not NAME.fullmatch(name):
        raise ValueError(f"RayJob name {name!r}: lower-case letters, digits and '-', at most 40 characters")
    metadata: dict[str, Any] = {"name": name,
                                "labels": {"app.kubernetes.io/part-of": "storecast",
                                           "app.kubernetes.io/component": "training", **(labels or {})}}
    if namespace:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = dict(annotations)
    submitter = {"name": "ray-job-submitter", "image": image, "resources": _resources(1, "512Mi", "100m"),
                 "securityContext": _security()}
    submitter_pod = _pod(submitter, None)
    submitter_pod["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob", "metadata": metadata,
        "spec": {
            "entrypoint": command,
            "shutdownAfterJobFinishes": True,  # the RayCluster goes once the job is done ...
            "ttlSecondsAfterFinished": ttl_seconds,  # ... this long after (time to read its logs)
            "activeDeadlineSeconds": deadline_seconds,
            "backoffLimit": 0,  # a failed training is not rerun on its own: Ray already retried lost tasks
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": submitter_pod,
            "rayClusterSpec": cluster_spec(image, size),
        },
    }


# ---- the Kubernetes API -----------------------------------------------------------------------
def kube_api() -> Any:
    """``CustomObjectsApi`` from the kubeconfig (``$KUBECONFIG`` as it is now), else the pod's service account."""
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # the client reads it once, at import
    except config.ConfigException:
        config.load_incluster_config()
    return client.CustomObjectsApi()


def submit(doc: dict[str, Any], namespace: str = NAMESPACE, api: Any = None) -> dict[str, Any]:
    """Create the RayJob; if one of that name exists already (a redelivered request), return it."""
    from kubernetes.client.exceptions import ApiException

    api = api or kube_api()
    try:
        return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
    except ApiException as exc:
        if exc.status != 409:
            raise
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc["metadata"]["name"])


def status(name: str, namespace: str = NAMESPACE, api: Any = None) -> dict[str, Any]:
    """What KubeRay says of a RayJob: jobStatus (PENDING, RUNNING, SUCCEEDED, FAILED, ...), deployment status."""
    obj = (api or kube_api()).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    st = obj.get("status") or {}
    return {"name": name, "job_status": st.get("jobStatus", ""), "deployment_status": st.get("jobDeploymentStatus", ""),
            "message": st.get("message", ""), "cluster": st.get("rayClusterName", "")}


def submit_fleet_retrain(*, reason: str, data: str = SALES, tracking_uri: str = MLFLOW,
                         model_name: str = MODEL_NAME, alias: str = "challenger", namespace: str = NAMESPACE,
                         template: str = TEMPLATE, job_id: str | None = None, api: Any = None) -> dict[str, Any]:
    """Retrain every store as a RayJob: the cluster of the ``template`` RayJob, this training's entrypoint
    (``storecast train --parent @champion --force``: a version derived from the champion, so every store's
    calendar and the stores without new data carry over).

    ``job_id`` (the retrain job's id) names the RayJob, so a redelivered request finds the one it made.
    Returns ``{"name", "namespace", "uid", "entrypoint"}`` of the RayJob.
    """
    from kubernetes.client.exceptions import ApiException

    api = api or kube_api()
    try:
        base = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, template)
    except ApiException as exc:
        if exc.status == 404:
            raise LookupError(f"no RayJob {template!r} in namespace {namespace!r} to take the cluster from: "
                              "apply manifests/overlays/ray first") from None
        raise
    suffix = re.sub(r"[^a-z0-9]", "", (job_id or uuid.uuid4().hex).lower())[:12] or uuid.uuid4().hex[:12]
    # derived from the champion (every store refitted): its calendar and stores carry over (pipelines.versions.lineage)
    command = entrypoint(data=data, tracking_uri=tracking_uri, model_name=model_name, alias=alias,
                         extra=("--parent", "@champion", "--force"))
    spec = {k: copy.deepcopy(v) for k, v in base["spec"].items()
            if k not in ("entrypoint", "jobId", "suspend", "clusterSelector")}
    doc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
           "metadata": {"name": f"storecast-retrain-{suffix}", "namespace": namespace,
                        "labels": {"app.kubernetes.io/part-of": "storecast", "app.kubernetes.io/component": "retrain"},
                        "annotations": {"storecast/reason": reason[:250], "storecast/template": template}},
           "spec": {**spec, "entrypoint": command}}
    made = submit(doc, namespace, api)
    meta = made.get("metadata", {})
    return {"name": meta.get("name", doc["metadata"]["name"]), "namespace": namespace, "uid": meta.get("uid", ""),
            "entrypoint": command}
