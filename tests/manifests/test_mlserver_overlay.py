"""manifests/overlays/mlserver (issue 24): KServe serving the storecast MLServer runtime, checked offline.

The overlay renders and validates with every target (test_manifests.py: the ServingRuntime against KServe's
schema); here what it promises:

* the predictor is a ``model`` whose format the ServingRuntime supports, over a protocol it speaks and the
  transformer uses; the runtime runs the storecast-mlserver image with the storecast runtime class, the champion,
  parallel workers off (adaptive batching needs them off), the model name the transformer asks for, and probes
  the model's readiness on its REST port, while Knative routes its gRPC port;
* the pod KServe makes of runtime and model is locked down like base's and reads MLflow as the reader;
* the transformer holds no key for a predictor that checks none; nothing else of base changes;
* MLServer has no authentication: the predictor's pods take traffic from the Knative data plane only, no pod of
  the namespace reaches them directly (evaluated as Kubernetes does, test_network.py's evaluator).
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field

import pytest

from tests.support import ISVC, NAMESPACE, REPO, find, one, render, schema_errors, selects

TARGET = "overlays/mlserver"
RUNTIME = ("serving.kserve.io", "ServingRuntime")
POLICY = ("networking.k8s.io", "NetworkPolicy")
RUNTIME_CLASS = "mlserver_runtime.runtime.StorecastRuntime"
MLSERVER_IMAGE = "registry.example.com/storecast/storecast-mlserver"
KEY = "storecast-transformer-predictor-key"
MODEL_ONLY = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")


# NetworkPolicies evaluated as Kubernetes does (as test_network.py does): a connection needs the source's egress
# (if a policy with Egress selects it) and the destination's ingress (likewise); policies add up.
@dataclass
class Pod:
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE


def _rule(rule: dict, side: str, other: Pod, port: int) -> bool:
    def peer(p: dict) -> bool:
        return "ipBlock" not in p and selects(p.get("podSelector", {}), other.labels) and (
            selects(p["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
            if "namespaceSelector" in p else other.namespace == NAMESPACE)
    return (side not in rule or any(peer(p) for p in rule[side])) and (
        "ports" not in rule or any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in rule["ports"]))


@dataclass
class Net:
    policies: list[dict]

    def applying(self, pod: Pod, kind: str) -> list[dict]:
        return [p["spec"] for p in self.policies if pod.namespace == NAMESPACE and kind in p["spec"]["policyTypes"]
                and selects(p["spec"]["podSelector"], pod.labels)]

    def allows(self, src: Pod, dst: Pod, port: int) -> bool:
        out, into = self.applying(src, "Egress"), self.applying(dst, "Ingress")
        return (not out or any(_rule(r, "to", dst, port) for s in out for r in s.get("egress", []))) and (
            not into or any(_rule(r, "from", src, port) for s in into for r in s.get("ingress", [])))


def name(n: str) -> Pod:
    return Pod({"app.kubernetes.io/name": n})


PREDICTOR, TRANSFORMER, RETRAIN = name("storecast-predictor"), name("storecast-transformer"), name("storecast-retrain")
DASHBOARD, DEADLETTER, MLFLOW = name("storecast-dashboard"), name("storecast-dead-letter"), name("mlflow")
STRANGER, ELSEWHERE = Pod({"run": "debug"}), Pod({"app": "web"}, "shop")
GATEWAY = Pod({"app": "3scale-kourier-gateway"}, "kourier-system")
ACTIVATOR = Pod({"app": "activator"}, "knative-serving")
BROKER = Pod({"app": "broker-ingress"}, "knative-eventing")


def isvc(target: str = TARGET) -> dict:
    return one(render(target), ISVC, "storecast")


def runtime() -> dict:
    return one(render(TARGET), RUNTIME, isvc()["spec"]["predictor"]["model"]["runtime"])


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def by(items: list[dict], key: str, over: list[dict]) -> list[dict]:
    merged = {i[key]: i for i in items}
    merged.update({i[key]: i for i in over})
    return list(merged.values())


def predictor_pod() -> tuple[dict, dict]:
    """(pod spec, kserve-container) as KServe makes them: the runtime's container with the model's fields laid over
    it (a strategic merge: env by name, mounts by path), the predictor's pod fields, the runtime's volumes."""
    spec, rt = isvc()["spec"]["predictor"], runtime()["spec"]
    own = {k: v for k, v in spec["model"].items() if k not in MODEL_ONLY}
    [base] = [c for c in rt["containers"] if c["name"] == "kserve-container"]
    container = {**base, **own, "env": by(base.get("env", []), "name", own.get("env", [])),
                 "volumeMounts": by(base.get("volumeMounts", []), "mountPath", own.get("volumeMounts", [])),
                 "securityContext": {**base.get("securityContext", {}), **own.get("securityContext", {})}}
    pod = {**{k: v for k, v in spec.items() if k != "model"}, "containers": [container],
           "volumes": by(rt.get("volumes", []), "name", spec.get("volumes", []))}
    return pod, container


# ---------------------------------------------------------------------------------------------
# The runtime and the predictor


def test_the_runtime_validates_strictly():
    doc = runtime()
    assert not schema_errors(doc)
    broken = copy.deepcopy(doc)
    broken["spec"]["supportedModelFormat"] = broken["spec"].pop("supportedModelFormats")
    assert schema_errors(broken)


def test_the_predictor_is_a_model_the_runtime_supports():
    spec = isvc()["spec"]
    predictor, rt = spec["predictor"], runtime()["spec"]
    assert "containers" not in predictor, "a custom container and a model: KServe refuses two implementations"
    model = predictor["model"]
    formats = {(f["name"], f.get("version")) for f in rt["supportedModelFormats"]}
    wanted = model["modelFormat"]
    assert any(name == wanted["name"] and wanted.get("version") in (None, version) for name, version in formats)
    assert not rt.get("disabled")
    assert {"v2", "grpc-v2"} <= set(rt["protocolVersions"])
    assert model["protocolVersion"] in rt["protocolVersions"]
    transformer = spec["transformer"]["containers"][0]["args"]
    assert arg(transformer, "--predictor_protocol") in rt["protocolVersions"]
    assert arg(transformer, "--predictor_host") == "storecast-predictor.storecast.svc.cluster.local:80"


def test_the_runtime_serves_the_champion_with_the_storecast_class_in_process():
    _, c = predictor_pod()
    assert c["image"].split(":")[0] == MLSERVER_IMAGE
    assert "args" not in c and "command" not in c, "the image's own command: mlserver start"
    env = env_of(c)
    module, _, cls = env["MLSERVER_MODEL_IMPLEMENTATION"].rpartition(".")
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == RUNTIME_CLASS
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, f"{module} defines no {cls}"
    assert env["MLSERVER_MODEL_URI"] == "models:/storecast@champion"
    assert env["MLSERVER_PARALLEL_WORKERS"] == "0", "adaptive batching needs inference in the server process"
    assert int(env["MLSERVER_MODEL_MAX_BATCH_SIZE"]) == 1 and 0 < float(env["MLSERVER_MODEL_MAX_BATCH_TIME"]) < 0.1
    transformer = isvc()["spec"]["transformer"]["containers"][0]["args"]
    assert env["MLSERVER_MODEL_NAME"] == arg(transformer, "--model_name"), "the model the transformer asks for"
    [port] = c["ports"]
    assert port["name"] == "h2c" and str(port["containerPort"]) == env["MLSERVER_GRPC_PORT"], "Knative routes gRPC"
    probe = c["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v2/models/{env['MLSERVER_MODEL_NAME']}/ready", "the model's readiness, not the server's"
    assert str(probe["port"]) == env["MLSERVER_HTTP_PORT"]
    assert runtime()["spec"]["annotations"]["prometheus.kserve.io/port"] == env["MLSERVER_METRICS_PORT"]


def test_the_predictor_reads_mlflow_as_bases_predictor_does():
    _, c = predictor_pod()
    base = isvc("base")["spec"]["predictor"]["containers"][0]
    assert env_of(c)["MLFLOW_TRACKING_URI"] == env_of(base)["MLFLOW_TRACKING_URI"]
    assert c["envFrom"] == base["envFrom"] == [{"secretRef": {"name": "storecast-mlflow-reader"}}]
    assert float(env_of(c)["STORECAST_REFRESH_SECONDS"]) == float(arg(base["args"], "--refresh-seconds"))
    assert c["resources"] == base["resources"]


def test_the_predictors_pod_is_locked_down():
    pod, c = predictor_pod()
    sec = c["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"] == {"drop": ["ALL"]}
    assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    [tmp] = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    [volume] = [v for v in pod["volumes"] if v["name"] == tmp]
    assert volume["emptyDir"]["sizeLimit"]
    assert not [v for v in pod["volumes"] if "secret" in v], "MLServer reads no auth file"


# ---------------------------------------------------------------------------------------------
# The transformer and the rest of base


def test_the_transformer_holds_no_key_for_a_predictor_that_checks_none():
    docs = render(TARGET)
    transformer = isvc()["spec"]["transformer"]
    env = env_of(transformer["containers"][0])
    assert not {"STORECAST_PREDICTOR_API_KEY", "STORECAST_PREDICTOR_API_KEY_FILE"} & env.keys()
    assert env["STORECAST_AUTH_FILE"], "its callers are still checked"
    assert KEY not in str(docs) and "storecast-predictor-auth" not in str(docs)


def test_nothing_else_of_base_changes():
    base, ours = render("base"), render(TARGET)
    changed = {("serving.kserve.io", "InferenceService", "storecast"), ("networking.k8s.io", "NetworkPolicy",
                                                                          "storecast-ingress")}

    def rest(rendered: list[dict]) -> list[dict]:
        return [d for d in rendered if (d["apiVersion"].split("/")[0], d["kind"], d["metadata"]["name"]) not in changed]
    added = [d for d in rest(ours) if d not in rest(base)]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in added) == [
        ("NetworkPolicy", "storecast-predictor-ingress"), ("ServingRuntime", "storecast-mlserver")]
    assert [d for d in rest(base) if d not in rest(ours)] == []
    b, o = isvc("base")["spec"], isvc()["spec"]
    assert {k: v for k, v in o["predictor"].items() if k != "model"} == {
        k: v for k, v in b["predictor"].items() if k not in ("containers", "volumes")}
    t = copy.deepcopy(b["transformer"])  # base's transformer less its key for the predictors
    t["volumes"] = [v for v in t["volumes"] if v.get("secret", {}).get("secretName") != KEY]
    c = t["containers"][0]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] in {v["name"] for v in t["volumes"]}]
    c["env"] = [e for e in c["env"] if e["name"] != "STORECAST_PREDICTOR_API_KEY_FILE"]
    assert o["transformer"] == t


# ---------------------------------------------------------------------------------------------
# Who reaches the predictor


def net(target: str = TARGET) -> Net:
    return Net(find(render(target), POLICY))


PORTS = (8012, 8013, 8080, 8081, 8082)  # queue-proxy (HTTP, h2c); MLServer's HTTP, gRPC, metrics


def test_only_the_knative_data_plane_reaches_the_predictor():
    n = net()
    for port in PORTS:
        assert n.allows(ACTIVATOR, PREDICTOR, port) and n.allows(GATEWAY, PREDICTOR, port), port
        for src in (TRANSFORMER, RETRAIN, DASHBOARD, DEADLETTER, MLFLOW, STRANGER, Pod({}), BROKER, ELSEWHERE):
            assert not n.allows(src, PREDICTOR, port), (src, port)
    # the transformer reaches it the one way Knative routes it: through the gateway or the activator
    assert n.allows(TRANSFORMER, GATEWAY, 8081) and n.allows(TRANSFORMER, ACTIVATOR, 8013)


@pytest.mark.parametrize(("src", "dst", "port"), [
    (STRANGER, TRANSFORMER, 8012), (GATEWAY, TRANSFORMER, 8012), (BROKER, RETRAIN, 8012),
    (PREDICTOR, MLFLOW, 5000), (RETRAIN, MLFLOW, 5000), (STRANGER, DASHBOARD, 8012)])
def test_the_other_pods_keep_bases_network(src, dst, port):
    assert net().allows(src, dst, port) == net("base").allows(src, dst, port)


def test_what_the_overlay_closes():
    """base's predictor (it checks keys) takes its namespace's pods: the retrain service reads its /metrics."""
    assert net("base").allows(RETRAIN, PREDICTOR, 8080) and not net().allows(RETRAIN, PREDICTOR, 8080)
    policy = one(render(TARGET), POLICY, "storecast-ingress")["spec"]["podSelector"]["matchExpressions"][0]
    assert PREDICTOR.labels["app.kubernetes.io/name"] in policy["values"] and policy["operator"] == "NotIn"
