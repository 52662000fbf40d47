"""manifests/overlays/ray (issue 16): the first training as a KubeRay RayJob, validated offline.

The overlay renders with ``kubectl kustomize``; its RayJob validates against the KubeRay v1.7.0
CRD schema (schemas/ray.io), is the document ``pipelines.training.rayjob.build_rayjob`` writes (plus the
overlay's hardening: a read-only root filesystem, the driver's MLflow credentials), runs a
``storecast train`` that the CLI accepts against the in-cluster MLflow on an ephemeral cluster (with
the calendars uploaded to the sales store, issue 21), with
sized, non-root pods that the NetworkPolicies cover; the rest of the overlay is base unchanged.
The general checks of tests/manifests/test_manifests.py (namespace, RBAC, secrets, ...) run on it too.
"""

from __future__ import annotations

import copy
import shlex

import pytest
import yaml

from pipelines.cli.main import build_parser
from pipelines.training import rayjob
from tests.support import (
    MANIFESTS,
    NAMESPACE,
    find,
    gk,
    json_patch,
    one,
    quantity,
    render,
    schema_errors,
    selects,
    workloads,
)

TARGET = "overlays/ray"
OVERLAY = MANIFESTS / TARGET
FIRST_CALENDAR = ("--calendar-ref", "all")  # every calendar uploaded to the sales store (issue 21)
RAYJOB = ("ray.io", "RayJob")


def the_rayjob() -> dict:
    [job] = find(render(TARGET), RAYJOB)
    return job


def pods(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"]["template"]),
            *((f"worker {g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]),
            ("submitter", job["spec"]["submitterPodTemplate"])]


def test_overlay_is_base_plus_one_rayjob():
    base, docs = render("base"), render(TARGET)
    assert [d for d in docs if gk(d) != RAYJOB] == base
    assert len(find(docs, RAYJOB)) == 1


def test_rayjob_validates_and_validation_is_strict():
    job = the_rayjob()
    assert schema_errors(job) == []
    for mutate in (lambda d: d["spec"].update(ttlSecondAfterFinished=60),
                   lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(replicas=1),
                   lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="4"),
                   lambda d: d["metadata"]["labels"].update({"x/n": 1})):
        broken = copy.deepcopy(job)
        mutate(broken)
        assert schema_errors(broken), "a broken RayJob passed validation"


def test_rayjob_is_what_the_builder_writes_plus_the_hardening():
    """rayjob.yaml is build_rayjob's document; the overlay adds a read-only root filesystem with /tmp and the
    driver's MLflow credentials (harden.yaml), and nothing else."""
    written = yaml.safe_load((OVERLAY / "rayjob.yaml").read_text())
    image = written["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    command = rayjob.entrypoint(alias="champion", extra=FIRST_CALENDAR)
    assert written == rayjob.build_rayjob("storecast-train", image=image, command=command, namespace=NAMESPACE)
    assert the_rayjob() == json_patch(written, yaml.safe_load((OVERLAY / "harden.yaml").read_text()))
    pods_ = dict(pods(the_rayjob()))
    head = pods_["head"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "storecast-mlflow-writer"}}]  # the driver registers
    for role, pod in pods_.items():
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True, role
        assert role == "head" or "envFrom" not in pod["spec"]["containers"][0], f"{role}: MLflow credentials"


def test_rayjob_trains_against_the_in_cluster_mlflow():
    docs = render(TARGET)
    job = the_rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["storecast", "train"]
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown flag
    assert (args.backend, args.ray_address, args.alias, args.model_name) == ("ray", "auto", "champion", "storecast")
    service = one(docs, ("", "Service"), "mlflow")
    mlflow = f"http://mlflow.{NAMESPACE}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    assert args.tracking_uri == mlflow
    [retrain] = [c for _, _, c in workloads(docs) if c["args"][0] == "retrain"]
    assert args.data == retrain["args"][retrain["args"].index("--data") + 1], "not the retrain service's sales table"
    # the first version takes the calendars uploaded to that sales store (`storecast calendar upload --sales`)
    assert args.calendar_ref == "all" and args.calendar is None


def test_cluster_is_deleted_when_the_job_ends():
    spec = the_rayjob()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
    assert spec["activeDeadlineSeconds"] > 0
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"  # the submitter runs in this namespace


def test_pods_are_sized_non_root_and_run_the_image():
    docs = render(TARGET)
    serving = ("predictor", "transformer", "deadletter")  # the serving image; the RayJob runs the full one
    images = {c["image"] for _, _, c in workloads(docs) if c["args"][0] not in serving}
    for label, pod in pods(the_rayjob()):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec, label
        for c in spec["containers"]:
            assert {c["image"]} == images, f"{label}: not the image of the other components"
            res = c["resources"]
            for r in ("cpu", "memory"):
                assert quantity(res["requests"][r]) <= quantity(res["limits"][r]), (label, r)
            security = {**spec.get("securityContext", {}), **c["securityContext"]}
            assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False, label
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, label


def test_ray_resources_match_the_pods():
    cluster = the_rayjob()["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "fits belong on the workers"
    assert cluster["authOptions"] == {"mode": "token"}
    for group in cluster["workerGroupSpecs"]:
        [c] = group["template"]["spec"]["containers"]
        cpus = group["rayStartParams"]["num-cpus"]
        assert cpus == c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"], "one fit per CPU"
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] >= 1
        assert quantity(c["resources"]["limits"]["memory"]) >= int(cpus) * 2**30, "~1 GiB per fitting process"
    for _, pod in pods(the_rayjob())[:-1]:  # Ray's object store: a shared-memory /dev/shm, not the 64 MB default
        [c] = pod["spec"]["containers"]
        [shm] = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == shm]
        assert volume["emptyDir"]["medium"] == "Memory"


def test_network_policies_cover_the_ray_pods():
    """Each pod is under a policy; head, workers and submitter reach each other (tests/manifests/test_network.py
    evaluates the rest: MLflow from the head only, the operator to the head's dashboard, nothing outside)."""
    policies = find(render(TARGET), ("networking.k8s.io", "NetworkPolicy"))
    for label, pod in pods(the_rayjob()):
        labels = pod["metadata"]["labels"]
        covering = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert covering, f"{label} pod is not covered by a NetworkPolicy"
        assert any(peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "storecast-train"}}}
                   for p in covering for rule in p["spec"].get("ingress", []) for peer in rule["from"]), label


def test_retrain_service_may_create_and_read_rayjobs_only():
    [role] = find(render(TARGET), ("rbac.authorization.k8s.io", "Role"))
    ray_rules = [r for r in role["rules"] if "ray.io" in r["apiGroups"]]
    assert ray_rules == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}]


@pytest.mark.parametrize("cpus", [1, 4])
def test_builder_keeps_ray_cpus_and_pod_cpus_in_step(cpus):
    job = rayjob.build_rayjob("x", image="i", command="c", size=rayjob.ClusterSize(worker_cpus=cpus))
    [group] = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["rayStartParams"]["num-cpus"] == group["template"]["spec"]["containers"][0]["resources"][
        "limits"]["cpu"] == str(cpus)
