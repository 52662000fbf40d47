"""manifests/loadtest: the LocustTest of the Locust operator (locustio/k8s-operator, chart 0.1.6), rendered with
kubectl kustomize and checked offline.

* every document validates, the LocustTest strictly against schemas/locust.io (a misspelt field and an env
  ``valueFrom``, which the operator cannot take, are rejected);
* the locustfile the operator mounts is loadtest/locustfile.py, byte for byte, under the ConfigMap's hashed name;
* master and workers run it against the InferenceService's in-cluster URL with arguments Locust's own parser
  accepts, every worker awaited, the web UI on loopback; the full image's entrypoint hands them to ``locust``;
* the environment: only variables the locustfile reads; the API key has no value in the repository, and
  ``run.sh`` fills it in from the Secret on the way to ``kubectl apply``, leaving everything else as rendered;
* the NetworkPolicies, evaluated as Kubernetes does: DNS, workers to their master, every Locust pod to the
  cluster-local gateway (which base admits into the transformer), nothing else in or out.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import (
    CRD_GROUPS,
    ISVC,
    KUBECTL,
    MANIFESTS,
    REPO,
    crd_validator,
    find,
    gk,
    render,
    schema_errors,
    selects,
)

TARGET = "loadtest"
NAMESPACE = "storecast-loadtest"
LOCUST = ("locust.io", "LocustTest")
POLICY = ("networking.k8s.io", "NetworkPolicy")
MOUNT = "/home/locust"  # where the operator mounts the locustfile's ConfigMap (its objects.py, LOCUST_BASE_PATH)
FULL_IMAGE = "registry.example.com/storecast/storecast:"
KEY = "sc_test-key_0123456789"


def docs() -> list[dict]:
    return render(TARGET)


def locusttest(rendered: list[dict] | None = None) -> dict:
    [test] = find(rendered or docs(), LOCUST)
    return test


def args() -> list[str]:
    return shlex.split(locusttest()["spec"]["args"])


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_every_document_validates_in_its_namespace() -> None:
    rendered = docs()
    problems = [f"{d['kind']} {d['metadata']['name']}: {line}" for d in rendered for line in schema_errors(d)]
    assert not problems, "\n".join(problems)
    assert "locust.io" in CRD_GROUPS  # the LocustTest went through its CRD schema, not "unknown kind"
    assert {gk(d) for d in rendered} == {("", "Namespace"), ("", "ConfigMap"), LOCUST, POLICY}
    assert not [d for d in rendered if d["kind"] == "Secret"], "no Secret is rendered (run.sh reads one)"
    for d in rendered:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]["name"]


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(workerReplicas=2),  # another operator's field
    lambda s: s["master"].update(command="--master"),
    lambda s: s["env"].append({"name": "STORECAST_API_KEY",
                               "valueFrom": {"secretKeyRef": {"name": "storecast-loadtest-key", "key": "key"}}}),
    lambda s: s.update(workers="4"),
    lambda s: s["locustfile"].update(content="x"),  # content or configMap, not both
])
def test_the_schema_is_strict(mutate) -> None:
    test = locusttest()
    mutate(test["spec"])
    assert list(crd_validator("locust.io", "LocustTest", "v1").iter_errors(test))


def test_the_mounted_locustfile_is_the_packages() -> None:
    rendered = docs()
    [cm] = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert cm["data"] == {"locustfile.py": (REPO / "loadtest" / "locustfile.py").read_text()}, (
        "manifests/loadtest/locustfile.py differs from loadtest/locustfile.py: cp loadtest/locustfile.py "
        "manifests/loadtest/")
    assert locusttest(rendered)["spec"]["locustfile"] == {"configMap": {"name": cm["metadata"]["name"]}}
    assert cm["metadata"]["name"].startswith("storecast-locustfile-"), "the hash suffix follows the file"
    assert flag(args(), "-f") == f"{MOUNT}/locustfile.py"


# Locust's own parser and loader, in a child process: importing Locust monkey-patches this one (gevent)
PARSE = """
import json, sys
from locust.argument_parser import get_parser
from locust.util.load_locustfile import load_locustfile
args = json.loads(sys.argv[1])
master = get_parser().parse_args(["--master", *args])
worker = get_parser().parse_args(["--worker", "--master-host", "storecast-loadtest-master", *args])
users, _ = load_locustfile(sys.argv[2])
print(json.dumps({"master": vars(master), "worker": vars(worker), "users": sorted(users)}, default=str))
"""


def test_master_and_workers_load_the_inferenceservice() -> None:
    spec, argv = locusttest()["spec"], args()
    [isvc] = find(render("base"), ISVC)
    url = f"http://{isvc['metadata']['name']}.{isvc['metadata']['namespace']}.svc.cluster.local"
    assert flag(argv, "--host") == url
    # as the operator starts them: `--master ARGS` and `--worker --master-host SERVICE ARGS`
    run = subprocess.run([sys.executable, "-c", PARSE, json.dumps(argv), str(REPO / "loadtest" / "locustfile.py")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    parsed = json.loads(run.stdout.splitlines()[-1])
    master, worker = parsed["master"], parsed["worker"]
    assert master["expect_workers"] == spec["workers"] >= 2, "the master waits for every worker"
    assert master["web_host"] == "127.0.0.1" and master["autostart"] and master["autoquit"] > 0
    assert master["run_time"] and master["num_users"] and not master["headless"]
    assert worker["worker"] and worker["user_classes"] == master["user_classes"]
    assert set(master["user_classes"]) <= set(parsed["users"]), master["user_classes"]
    assert not {"Service", "Refresher"} & set(master["user_classes"]), "no predictor or retrain URL on a cluster"
    assert spec["image"].startswith(FULL_IMAGE), "the full image holds Locust and the storecast package"
    assert spec["master"]["resources"]["limits"] and spec["worker"]["resources"]["limits"]


def test_the_full_image_hands_the_operators_arguments_to_locust(tmp_path: Path) -> None:
    """docker/entrypoint.sh: the operator passes `--master ...` / `--worker ...` as the container's arguments."""
    fake = tmp_path / "locust"
    fake.write_text('#!/bin/sh\necho "locust $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "STORECAST_IMAGE": "full"}
    for role in (["--master"], ["--worker", "--master-host", "storecast-loadtest-master"]):
        run = subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh"), *role, *args()], env=env,
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and run.stdout.split() == ["locust", *role, *args()], run.stderr


def test_the_environment_is_the_locustfiles_and_the_key_comes_from_the_secret(tmp_path: Path) -> None:
    env = locusttest()["spec"]["env"]
    read = (REPO / "loadtest" / "locustfile.py").read_text()
    assert all(e["name"].startswith("STORECAST_") and e["name"] in read for e in env), env
    assert {"STORECAST_STORES", "STORECAST_USER_RPS", "STORECAST_API_KEY"} <= {e["name"] for e in env}
    assert [e for e in env if e["name"] == "STORECAST_API_KEY"] == [{"name": "STORECAST_API_KEY"}], "no key here"

    applied = run_sh(tmp_path, KEY)
    test = locusttest(applied)
    assert {"name": "STORECAST_API_KEY", "value": KEY} in test["spec"]["env"]
    assert not list(crd_validator("locust.io", "LocustTest", "v1").iter_errors(test))
    without = [{k: v for k, v in e.items() if e["name"] != "STORECAST_API_KEY" or k == "name"}
               for e in test["spec"]["env"]]
    assert [d for d in applied if d is not test] == [d for d in docs() if d["kind"] != "LocustTest"]
    assert without == env, "run.sh adds the key and changes nothing else"
    with pytest.raises(AssertionError, match="has no key"):
        run_sh(tmp_path, "not a key; rm -rf /")


def run_sh(tmp_path: Path, key: str) -> list[dict]:
    """manifests/loadtest/run.sh with a kubectl that holds the Secret, renders for real and records the apply."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    secret = base64.b64encode(key.encode()).decode()
    (bin_dir / "kubectl").write_text(
        "#!/bin/sh\n"
        f'case "$*" in\n'
        f'  "-n {NAMESPACE} get secret storecast-loadtest-key -o jsonpath={{.data.key}}") echo {secret} ;;\n'
        f'  kustomize*) exec {KUBECTL} "$@" ;;\n'
        f'  "apply -f -") cat > {tmp_path}/applied.yaml ;;\n'
        '  *) echo "unexpected: kubectl $*" >&2; exit 9 ;;\n'
        "esac\n")
    (bin_dir / "kubectl").chmod(0o755)
    run = subprocess.run(["sh", str(MANIFESTS / TARGET / "run.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all((tmp_path / "applied.yaml").read_text()) if d]


# --- the network, evaluated as Kubernetes does: the source's egress and the destination's ingress, policies adding up
@dataclass(frozen=True)
class Pod:
    labels: tuple[tuple[str, str], ...]
    namespace: str

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def locust_pod(component: str) -> Pod:
    labels = locusttest()["spec"][component]["labels"]
    return Pod(tuple(labels.items()), NAMESPACE)


MASTER, WORKER = "master", "worker"
DNS = Pod((("k8s-app", "kube-dns"),), "kube-system")
KOURIER = Pod((("app", "3scale-kourier-gateway"),), "kourier-system")
ISTIO_GATEWAY = Pod((("istio", "ingressgateway"),), "istio-system")
TRANSFORMER = Pod((("app.kubernetes.io/name", "storecast-transformer"),), "storecast")
MLFLOW = Pod((("app.kubernetes.io/name", "mlflow"),), "storecast")
STRANGER = Pod((("run", "debug"),), NAMESPACE)  # `kubectl run` in the load test's namespace
ELSEWHERE = Pod((("app", "web"),), "shop")
ACTIVATOR = Pod((("app", "activator"),), "knative-serving")


def _peer(rule_peer: dict, other: Pod, policy_ns: str) -> bool:
    ns_ok = (selects(rule_peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
             if "namespaceSelector" in rule_peer else other.namespace == policy_ns)
    return ns_ok and selects(rule_peer.get("podSelector", {}), other.label_map)


def _allows(policies: list[dict], pod_: Pod, kind: str, other: Pod, port: int, protocol: str) -> bool:
    side, rules = ("to", "egress") if kind == "Egress" else ("from", "ingress")
    applying = [p for p in policies if p["metadata"]["namespace"] == pod_.namespace
                and kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod_.label_map)]
    return not applying or any(
        (side not in r or any(_peer(x, other, p["metadata"]["namespace"]) for x in r[side]))
        and ("ports" not in r or any(q.get("protocol", "TCP") == protocol and q["port"] == port for q in r["ports"]))
        for p in applying for r in p["spec"].get(rules, []))


def connects(src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    policies = find(docs(), POLICY) + [{**p, "metadata": {**p["metadata"], "namespace": "storecast"}}
                                       for p in find(render("base"), POLICY)]
    return (_allows(policies, src, "Egress", dst, port, protocol)
            and _allows(policies, dst, "Ingress", src, port, protocol))


def test_the_network_admits_the_test_and_nothing_else() -> None:
    master, worker = locust_pod(MASTER), locust_pod(WORKER)
    assert master.label_map != worker.label_map
    for p in (master, worker):
        assert connects(p, DNS, 53, "UDP") and connects(p, DNS, 53)
        assert connects(p, KOURIER, 8081) and connects(p, ISTIO_GATEWAY, 8081), "the cluster-local gateway"
        assert connects(KOURIER, TRANSFORMER, 8080), "base admits the gateway into the transformer"
        for dst, port in ((TRANSFORMER, 8080), (MLFLOW, 5000), (ACTIVATOR, 8012), (ELSEWHERE, 80), (KOURIER, 9090)):
            assert not connects(p, dst, port), (p, dst, port)
    assert connects(worker, master, 5557)
    for src in (STRANGER, ELSEWHERE, KOURIER, TRANSFORMER):
        assert not connects(src, master, 5557), src
        assert not connects(src, worker, 5557), src
    assert not connects(worker, master, 8089), "the web UI is for port-forwards only"
    assert not connects(master, worker, 5557)
    assert not connects(STRANGER, KOURIER, 8081), "the namespace is closed by default"
