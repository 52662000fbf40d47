"""manifests/seldon (issue 24): the MLServer runtime on Seldon Core 2, rendered (kubectl kustomize) and checked offline.

* every document validates, Seldon's kinds strictly against the v2.6.0 CRD schemas; nothing of KServe or Knative;
* the Experiment sends 10 % to the challenger on the champion's route; every Model fits the Server; each Model's
  folder holds one model-settings.json naming the runtime class and following its alias (the runtime's parser);
* the Server runs the storecast-mlserver image, parallel workers off, MLflow as the reader, repeating what Seldon's
  agent drops from model-settings.json; the transformer calls the mesh with the route's ``seldon-model`` metadata
  and flags it has (one proposed); every pod is locked down, every Secret documented, none committed;
* the NetworkPolicies, evaluated as Kubernetes does: only envoy reaches the Server's pods, only the transformer and
  Seldon's gateways the mesh, only the Server's pods MLflow; MLflow is base's, object for object.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest

from mlserver_runtime.settings import RuntimeSettings
from tests.support import (
    CRD_GROUPS,
    ISVC,
    MANIFESTS,
    NAMESPACE,
    REPO,
    find,
    gk,
    one,
    quantity,
    render,
    schema_errors,
    selects,
)

TARGET = "seldon"
SELDON = "mlops.seldon.io"
SERVER, MODEL, EXPERIMENT = (SELDON, "Server"), (SELDON, "Model"), (SELDON, "Experiment")
DEPLOYMENT, POLICY = ("apps", "Deployment"), ("networking.k8s.io", "NetworkPolicy")
RUNTIME_CLASS = "mlserver_runtime.runtime.StorecastRuntime"
MLSERVER_IMAGE = "registry.example.com/storecast/storecast-mlserver"
# The stock ServerConfig `mlserver` of v2.6.0 (SELDON_SERVER_CAPABILITIES, its memory overcommit)
STOCK_CAPABILITIES = "mlserver,alibi-detect,alibi-explain,lightgbm,mlflow,python,sklearn,spark-mlib,xgboost"
OVERCOMMIT, SECRETS_TABLE = 1.10, "### Secrets you create"  # manifests/README.md's table
PROPOSED = {"--predictor-metadata"}  # not yet a transformer flag (issue 24: proposed to the lead)


# NetworkPolicies evaluated as Kubernetes does (as test_network.py does): a connection needs the source's egress
# (if a policy with Egress selects it) and the destination's ingress (likewise); policies add up.
@dataclass
class Pod:
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE


@dataclass(frozen=True)
class Address:
    ip: str


def _peer(peer: dict, other: Pod | Address) -> bool:
    if "ipBlock" in peer:
        return isinstance(other, Address) and ipaddress.ip_address(other.ip) in ipaddress.ip_network(
            peer["ipBlock"]["cidr"])
    return isinstance(other, Pod) and selects(peer.get("podSelector", {}), other.labels) and (
        selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
        if "namespaceSelector" in peer else other.namespace == NAMESPACE)


def _rule(rule: dict, side: str, other: Pod | Address, port: int, protocol: str) -> bool:
    return (side not in rule or any(_peer(p, other) for p in rule[side])) and (
        "ports" not in rule or any(p.get("protocol", "TCP") == protocol and p["port"] == port for p in rule["ports"]))


@dataclass
class Net:
    policies: list[dict]

    def applying(self, pod: Pod | Address, kind: str) -> list[dict]:
        return [p["spec"] for p in self.policies if isinstance(pod, Pod) and pod.namespace == NAMESPACE
                and kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.labels)]

    def allows(self, src: Pod, dst: Pod | Address, port: int, protocol: str = "TCP") -> bool:
        out, into = self.applying(src, "Egress"), self.applying(dst, "Ingress")
        return (not out or any(_rule(r, "to", dst, port, protocol) for s in out for r in s.get("egress", []))) and (
            not into or any(_rule(r, "from", src, port, protocol) for s in into for r in s.get("ingress", [])))


DNS = Pod({"k8s-app": "kube-dns"}, "kube-system")
STRANGER = Pod({"run": "debug"})  # `kubectl run` in the namespace
ELSEWHERE = Pod({"app": "web"}, "shop")
INTERNET = Address("93.184.215.14")
# Pods that Seldon's operator makes, labelled as it labels them (operator/pkg/constants, the reconcilers)
ENVOY = Pod({"app.kubernetes.io/name": "seldon-envoy"})
SCHEDULER = Pod({"app.kubernetes.io/name": "seldon-scheduler"})
GATEWAY = Pod({"app.kubernetes.io/name": "seldon-modelgateway"})
OTHER_SERVER = Pod({"app.kubernetes.io/name": "seldon-server", "seldon-server-name": "mlserver"})


def docs() -> list[dict]:
    return render(TARGET)


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def server() -> dict:
    return find(docs(), SERVER)[0]


def mlserver_container(srv: dict) -> dict:
    [c] = [c for c in srv["spec"]["podSpec"]["containers"] if c["name"] == "mlserver"]
    return c


def transformer() -> dict:
    return one(docs(), DEPLOYMENT, "storecast-transformer")["spec"]["template"]["spec"]["containers"][0]


def model_settings(model: dict) -> dict:
    """The file uploaded to a Model's storageUri: manifests/seldon/models/<its last path segment>/."""
    folder = MANIFESTS / TARGET / "models" / PurePosixPath(model["spec"]["storageUri"].rstrip("/")).name
    assert sorted(p.name for p in folder.iterdir()) == ["model-settings.json"], f"{folder}: one file only"
    return json.loads((folder / "model-settings.json").read_text())


def experiment() -> dict:
    return find(docs(), EXPERIMENT)[0]



def test_every_document_validates_and_nothing_needs_kserve_or_knative():
    rendered = docs()
    problems = [f"{d['kind']} {d['metadata']['name']}: {line}" for d in rendered for line in schema_errors(d)]
    assert not problems, "\n".join(problems)
    assert SELDON in CRD_GROUPS  # Seldon's kinds went through the CRD schemas, not "unknown kind"
    assert {gk(d)[0] for d in rendered} <= {"", "apps", "networking.k8s.io", SELDON}, "a Seldon shop has no KServe"
    assert {(SELDON, k) for k in ("Server", "Model", "Experiment")} <= {gk(d) for d in rendered}
    for d in rendered:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]["name"]


@pytest.mark.parametrize(("kind", "mutate"), [
    ("Model", lambda d: d["spec"].update(requirement=["storecast"])),
    ("Experiment", lambda d: d["spec"]["candidates"][0].pop("weight")),
    ("Server", lambda d: d["spec"].update(serverconfig="mlserver")),
    ("Server", lambda d: d["spec"]["podSpec"]["containers"][0].update(imag="x")),
])
def test_seldon_validation_is_strict(kind, mutate):
    doc = next(d for d in docs() if d["kind"] == kind)
    assert not schema_errors(doc)
    mutate(doc)
    assert schema_errors(doc), f"a broken {kind} passed validation"



@pytest.fixture
def server_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry the Server's pods read (the runtime's settings check it), as this process's variable."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_of(mlserver_container(server()))["MLFLOW_TRACKING_URI"])


def test_the_experiment_sends_ten_percent_to_the_challenger_on_the_champions_route(server_registry):
    spec = experiment()["spec"]
    models = {m["metadata"]["name"]: m for m in find(docs(), MODEL)}
    weights = {c["name"]: c["weight"] for c in spec["candidates"]}
    assert set(weights) <= set(models), f"candidates without a Model: {set(weights) - set(models)}"
    share = {name: 100 * w / sum(weights.values()) for name, w in weights.items()}
    assert spec["default"] in weights, "default must be a candidate: its route is the one split"
    assert share[spec["default"]] == 90
    [(other, rest)] = [(n, s) for n, s in share.items() if n != spec["default"]]
    assert rest == 10 and "mirror" not in spec
    alias = {name: RuntimeSettings.of(model_settings(m)["parameters"]["uri"], None).model_uri.ref
             for name, m in models.items()}
    assert alias[spec["default"]] == "champion" and alias[other] == "challenger", alias


def test_every_model_fits_the_server():
    srv = server()["spec"]
    capabilities = set(srv.get("capabilities") or STOCK_CAPABILITIES.split(",") + srv.get("extraCapabilities", []))
    assert "storecast" in capabilities and "sklearn" not in capabilities, "no other team's models land here"
    memory = quantity(mlserver_container(server())["resources"]["requests"]["memory"]) * OVERCOMMIT
    models = find(docs(), MODEL)
    for m in models:
        name, spec = m["metadata"]["name"], m["spec"]
        assert spec["requirements"] and set(spec["requirements"]) <= capabilities, name
        assert 1 <= spec["replicas"] <= srv["replicas"], f"{name}: more replicas than the Server has"
        assert spec["storageUri"].split("://")[0] in ("s3", "gs", "az", "http", "https"), name
    assert sum(quantity(m["spec"]["memory"]) for m in models) <= memory, "both Models must fit one Server pod"


@pytest.mark.parametrize("name", ["storecast", "storecast-challenger"])
def test_each_model_settings_file_loads_the_runtime_and_follows_an_alias(name, server_registry):
    settings = model_settings(one(docs(), MODEL, name))
    module, _, cls = settings["implementation"].rpartition(".")
    assert settings["implementation"] == RUNTIME_CLASS
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, f"{module} defines no {cls}"
    params = settings["parameters"]
    runtime = RuntimeSettings.of(params["uri"], params.get("extra"))  # the runtime's own parsing: unknown keys fail
    assert runtime.model_uri.kind == "alias" and runtime.model_uri.name == "storecast", params["uri"]
    assert 0 < runtime.refresh_seconds <= 60
    # adaptive batching off, as measured (bench/mlserver.py: no gain, a 5x p99); one value turns it on
    assert settings["max_batch_size"] == 1 and 0 < settings["max_batch_time"] < 0.1
    assert set(settings) <= {"name", "implementation", "max_batch_size", "max_batch_time", "parameters"}


def test_the_server_runs_the_runtime_with_mlflow_and_without_parallel_workers():
    srv = server()
    assert srv["spec"]["serverConfig"] == "mlserver"
    c = mlserver_container(srv)
    assert c["image"].split(":")[0] == MLSERVER_IMAGE
    assert c["args"][:2] == ["mlserver", "start"] and c["args"][2] == "/mnt/agent/models"  # where the agent puts them
    env = env_of(c)
    assert env["MLSERVER_PARALLEL_WORKERS"] == "0" and env["MLSERVER_MODEL_PARALLEL_WORKERS"] == "0"
    assert env["MLSERVER_MODEL_URI"] == "", "a file without parameters.uri must fail, not follow the champion"
    # base's MLflow (test_mlflow_is_bases_object_for_object) as base's predictor reaches it: its user, READ only
    base = one(render("base"), ISVC, "storecast")["spec"]["predictor"]["containers"][0]
    assert env["MLFLOW_TRACKING_URI"] == env_of(base)["MLFLOW_TRACKING_URI"]
    assert c["envFrom"] == base["envFrom"] == [{"secretRef": {"name": "storecast-mlflow-reader"}}]
    # Seldon's agent rewrites model-settings.json without batching (and, in some releases, parameters.extra):
    # the variables MLServer and the runtime fall back on carry the same values
    for m in find(docs(), MODEL):
        s = model_settings(m)
        assert float(env["MLSERVER_MODEL_MAX_BATCH_SIZE"]) == s["max_batch_size"], m["metadata"]["name"]
        assert float(env["MLSERVER_MODEL_MAX_BATCH_TIME"]) == s["max_batch_time"], m["metadata"]["name"]
        assert float(env["STORECAST_REFRESH_SECONDS"]) == s["parameters"]["extra"]["refresh_seconds"]


def test_the_servers_containers_are_locked_down():
    spec = server()["spec"]["podSpec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        sec = c["securityContext"]
        assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sec["runAsNonRoot"] is True and sec["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
    c = mlserver_container(server())
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    [tmp] = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert volumes[tmp]["emptyDir"]["sizeLimit"], "/tmp must be a bounded emptyDir"
    assert all({"cpu", "memory"} <= c["resources"][kind].keys() for kind in ("requests", "limits"))



def test_the_transformer_calls_the_mesh_on_the_experiments_route():
    c = transformer()
    args = c["args"]
    assert arg(args, "--predictor_host") == f"seldon-mesh.{NAMESPACE}.svc.cluster.local:80"
    route = experiment()["spec"]["default"]
    assert arg(args, "--predictor_protocol") == "grpc-v2" and arg(args, "--model_name") == route
    metadata = dict(item.split("=", 1) for item in arg(args, "--predictor-metadata").split(","))
    assert metadata == {"seldon-model": route}, "envoy routes on seldon-model; the experiment holds this route"
    env = env_of(c)
    assert env["STORECAST_HOST"] == "0.0.0.0" and env["STORECAST_AUTH_FILE"], "beyond loopback only with auth"
    assert not {"STORECAST_PREDICTOR_API_KEY", "STORECAST_PREDICTOR_API_KEY_FILE", "MLFLOW_TRACKING_URI"} & env.keys()


def test_the_transformers_flags_and_variables_are_its_own():
    proc = subprocess.run([sys.executable, "-m", "transformer", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "200"}, check=True)
    text = proc.stdout
    options = set(re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", text))
    args = transformer()["args"][1:]
    flags = [a for a in args if a.startswith("--")]
    unknown = set(flags) - options
    assert unknown <= PROPOSED, f"not options of the transformer: {unknown - PROPOSED}"
    assert len(args) == 2 * len(flags) and all(not v.startswith("--") for v in args[1::2]), "flag value pairs"
    named = set(re.findall(r"STORECAST_[A-Z0-9_]+", text))
    assert {k for k in env_of(transformer()) if k.startswith("STORECAST_")} <= named


def documented_secrets() -> set[str]:
    """The names in manifests/README.md's table of the Secrets you create."""
    text = (MANIFESTS / "README.md").read_text()
    section = text[text.index(SECRETS_TABLE):].split("\n#")[0]  # up to the next heading
    return set(re.findall(r"^\| `([a-z0-9-]+)`", section, re.M))


def secrets_of(spec: dict) -> set[str]:
    """The Secrets a pod spec uses: volumes, env references, envFrom."""
    refs = [v.get("secret", {}).get("secretName") for v in spec.get("volumes", [])]
    for c in spec["containers"]:
        refs += [r.get("secretRef", {}).get("name") for r in c.get("envFrom", [])]
        refs += [e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in c.get("env", [])]
    return set(refs) - {None}


@pytest.mark.parametrize("name", ["storecast-transformer", "mlflow"])
def test_the_deployments_are_locked_down_like_bases_pods(name):
    spec = one(docs(), DEPLOYMENT, name)["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"]:
        own, merged = c["securityContext"], {**spec.get("securityContext", {}), **c["securityContext"]}
        assert merged["runAsNonRoot"] is True and merged["seccompProfile"] == {"type": "RuntimeDefault"}
        assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
        assert own["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["sizeLimit"], "/tmp: a bounded emptyDir"
        for m in mounts.values():
            if {"secret", "configMap"} & volumes[m["name"]].keys():
                assert m["readOnly"] is True, m["mountPath"]


def test_every_secret_is_referenced_documented_and_never_committed():
    assert not find(docs(), ("", "Secret")), "a Secret is rendered: secrets never go into the repository"
    used = secrets_of(server()["spec"]["podSpec"])
    for name in ("storecast-transformer", "mlflow"):
        used |= secrets_of(one(docs(), DEPLOYMENT, name)["spec"]["template"]["spec"])
    assert used == {"storecast-auth", "storecast-mlflow-reader", "storecast-mlflow-admin"}
    assert used <= documented_secrets(), f"undocumented: {used - documented_secrets()}"
    for path in (MANIFESTS / TARGET).rglob("*.yaml"):
        assert not re.search(r"^kind:\s*Secret\s*$|secretGenerator", path.read_text(), re.M), path
    for m in find(docs(), MODEL):  # the settings files name no credential
        assert not re.search(r"password|token|secret|key", json.dumps(model_settings(m)), re.I), m["metadata"]
    containers = [*server()["spec"]["podSpec"]["containers"], transformer()]
    for e in (e for c in containers for e in c.get("env", [])):  # credentials only from Secrets
        assert not (e["name"].endswith(("PASSWORD", "TOKEN", "SECRET", "KEY")) and "value" in e), e["name"]



def net() -> Net:
    return Net(find(docs(), POLICY))


def server_pod() -> Pod:
    """The Server's pods as Seldon's operator labels them (seldon-server-name: the Server's name)."""
    return Pod({"app.kubernetes.io/name": "seldon-server", "seldon-server-name": server()["metadata"]["name"]})


def template_pod(name: str) -> Pod:
    return Pod(one(docs(), DEPLOYMENT, name)["spec"]["template"]["metadata"]["labels"])


def test_only_envoy_reaches_the_servers_pods_on_the_agents_proxy():
    n, srv = net(), server_pod()
    trans, mlflow = template_pod("storecast-transformer"), template_pod("mlflow")
    proxy = (9001, 9501)  # the agent's reverse proxies; MLServer's own 9000 / 9500 / 8082 stay in the pod
    for port in (*proxy, 9000, 9500, 8082, 9006):
        assert n.allows(ENVOY, srv, port) == (port in proxy), port
        for src in (trans, mlflow, STRANGER, Pod({}), SCHEDULER, GATEWAY, OTHER_SERVER, ELSEWHERE):
            assert not n.allows(src, srv, port), (src, port)


def test_the_servers_pods_reach_mlflow_the_scheduler_the_bucket_and_dns_only():
    n, srv = net(), server_pod()
    mlflow = template_pod("mlflow")
    placeholders = {peer["ipBlock"]["cidr"] for p in n.policies for r in p["spec"].get("egress", [])
                    for peer in r.get("to", []) if "ipBlock" in peer}
    assert placeholders == {"192.0.2.1/32", "192.0.2.2/32"}  # documented ones: API server, object store
    assert n.allows(srv, mlflow, 5000) and not n.allows(srv, mlflow, 8080)
    assert n.allows(srv, SCHEDULER, 9005) and not n.allows(srv, SCHEDULER, 9004)
    assert n.allows(srv, Address("192.0.2.2"), 443) and n.allows(srv, Address("192.0.2.1"), 6443)
    assert n.allows(srv, DNS, 53, "UDP") and n.allows(srv, DNS, 53, "TCP")
    for dst, port in ((INTERNET, 443), (ELSEWHERE, 80), (ENVOY, 9000), (template_pod("storecast-transformer"), 8080)):
        assert not n.allows(srv, dst, port), (dst, port)


def test_only_the_transformer_and_seldons_gateways_reach_the_mesh():
    n = net()
    trans = template_pod("storecast-transformer")
    assert n.allows(trans, ENVOY, 9000) and n.allows(GATEWAY, ENVOY, 9000)
    for src in (STRANGER, Pod({}), template_pod("mlflow"), server_pod(), OTHER_SERVER, ELSEWHERE):
        assert not n.allows(src, ENVOY, 9000), src
    assert not n.allows(trans, ENVOY, 9003), "envoy's admin port"
    for dst, port in ((template_pod("mlflow"), 5000), (server_pod(), 9501), (INTERNET, 443), (ELSEWHERE, 80)):
        assert not n.allows(trans, dst, port), (dst, port)
    assert n.allows(ELSEWHERE, trans, 8080) and not n.allows(ELSEWHERE, trans, 8081)  # callers: its auth decides


def test_mlflow_takes_the_servers_pods_only_and_every_pod_of_ours_is_closed():
    n = net()
    mlflow = template_pod("mlflow")
    for src in (template_pod("storecast-transformer"), STRANGER, Pod({}), ENVOY, OTHER_SERVER, ELSEWHERE):
        assert not n.allows(src, mlflow, 5000), src
    assert not n.allows(mlflow, INTERNET, 443) and n.allows(mlflow, DNS, 53, "UDP")
    for pod in (server_pod(), mlflow, template_pod("storecast-transformer")):
        assert n.applying(pod, "Ingress") and n.applying(pod, "Egress"), pod
    for pod in (OTHER_SERVER, SCHEDULER, GATEWAY, ENVOY):  # Seldon's own pods: not closed by these policies
        assert not n.applying(pod, "Egress"), pod



def test_mlflow_is_bases_object_for_object():
    def mlflow_objects(rendered: list[dict]) -> list[dict]:
        return sorted((d for d in rendered if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "mlflow"
                       and d["kind"] != "NetworkPolicy"), key=lambda d: (d["kind"], d["metadata"]["name"]))
    ours, base = mlflow_objects(docs()), mlflow_objects(render("base"))
    assert [(d["kind"], d["metadata"]["name"]) for d in base] == [
        ("ConfigMap", "mlflow-auth"), ("Deployment", "mlflow"), ("PersistentVolumeClaim", "mlflow-data"),
        ("Service", "mlflow")]
    assert ours == base
