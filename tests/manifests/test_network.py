"""The NetworkPolicies (issue 23, deliverable 9): who may reach whom, evaluated as Kubernetes evaluates them.

A connection is allowed when the source's egress allows it (if any policy with Egress selects the source) and
the destination's ingress allows it (if the destination is a pod of this namespace and any policy with Ingress
selects it); policies add up. Pods carry the labels the manifests give their templates (tests/support.py
``pods``); the other side is a pod of another namespace (labelled ``kubernetes.io/metadata.name`` as the API
server labels namespaces) or an address. Checked on every target:

* every pod is under a default deny (ingress and egress) and may ask the cluster DNS;
* MLflow, the trust root, takes port 5000 from the predictors, the retrain service, the dashboard and the
  training driver, and nothing from the transformer, the Ray workers, the dead-letter sink, an unlabelled pod
  or another namespace;
* each component's egress is what it needs and no more (nothing leaves for the internet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from tests.support import NAMESPACE, by_target, find, pods, render, selects

POLICY = ("networking.k8s.io", "NetworkPolicy")


@dataclass
class Pod:
    labels: dict[str, str]
    namespace: str = NAMESPACE
    ip: str = "10.244.1.7"


@dataclass(frozen=True)
class Address:
    ip: str


@dataclass
class Net:
    """The rendered NetworkPolicies of one target."""

    policies: list[dict] = field(default_factory=list)

    def _applying(self, pod: Pod, kind: str) -> list[dict]:
        return [p["spec"] for p in self.policies if pod.namespace == NAMESPACE and kind in p["spec"]["policyTypes"]
                and selects(p["spec"]["podSelector"], pod.labels)]

    def allows(self, src: Pod, dst: Pod | Address, port: int, protocol: str = "TCP") -> bool:
        out = self._applying(src, "Egress")
        if out and not any(_matches(rule.get("to"), dst) and _port(rule, port, protocol)
                           for spec in out for rule in spec.get("egress", [])):
            return False
        into = self._applying(dst, "Ingress") if isinstance(dst, Pod) else []
        return not into or any(_matches(rule.get("from"), src) and _port(rule, port, protocol)
                               for spec in into for rule in spec.get("ingress", []))


def _matches(peers: list[dict] | None, other: Pod | Address) -> bool:
    if peers is None:  # no `to`/`from`: everyone
        return True
    for peer in peers:
        if "ipBlock" in peer:
            ip = other.ip
            block = peer["ipBlock"]
            if ipaddress.ip_address(ip) in ipaddress.ip_network(block["cidr"]) and not any(
                    ipaddress.ip_address(ip) in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
            continue
        if not isinstance(other, Pod):
            continue
        ns_ok = (selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
                 if "namespaceSelector" in peer else other.namespace == NAMESPACE)
        if ns_ok and selects(peer.get("podSelector", {}), other.labels):
            return True
    return False


def _port(rule: dict, port: int, protocol: str) -> bool:
    return "ports" not in rule or any(p.get("protocol", "TCP") == protocol and p["port"] == port for p in rule["ports"])


def net(target: str) -> Net:
    return Net(find(render(target), POLICY))


def name(n: str, **extra: str) -> Pod:
    return Pod({"app.kubernetes.io/name": n, **extra})


PREDICTOR, TRANSFORMER, RETRAIN = name("storecast-predictor"), name("storecast-transformer"), name("storecast-retrain")
DASHBOARD, DEADLETTER = name("storecast-dashboard"), name("storecast-dead-letter")
MLFLOW = name("mlflow", **{"app.kubernetes.io/component": "tracking-server"})
HEAD = name("storecast-train", **{"ray.io/node-type": "head"})
WORKER = name("storecast-train", **{"ray.io/node-type": "worker"})
SUBMITTER = name("storecast-train")
STRANGER = Pod({"run": "debug"})  # `kubectl run` in the namespace
GATEWAY = Pod({"app": "3scale-kourier-gateway"}, "kourier-system")
ACTIVATOR = Pod({"app": "activator"}, "knative-serving")
BROKER = Pod({"app": "broker-ingress"}, "knative-eventing")
DNS = Pod({"k8s-app": "kube-dns"}, "kube-system")
ELSEWHERE = Pod({"app": "web"}, "shop")
OPERATOR = Pod({"app.kubernetes.io/name": "kuberay-operator"}, "ray-system")
INTERNET = Address("93.184.215.14")
ALL = {"predictor": PREDICTOR, "transformer": TRANSFORMER, "retrain": RETRAIN, "dashboard": DASHBOARD,
       "dead-letter": DEADLETTER, "mlflow": MLFLOW, "train head": HEAD, "train worker": WORKER,
       "train submitter": SUBMITTER, "stranger": STRANGER}


def api_server(n: Net) -> Address:
    """The one address block the policies name: the API server's (a documented placeholder)."""
    [cidr] = {peer["ipBlock"]["cidr"] for p in n.policies for r in p["spec"].get("egress", [])
              for peer in r.get("to", []) if "ipBlock" in peer}
    network = ipaddress.ip_network(cidr)
    assert network.prefixlen >= 24, f"{cidr}: the API server's endpoints, not a range"
    return Address(str(network[0]))


@by_target
def test_every_pod_is_under_a_default_deny_and_asks_dns(target):
    n = net(target)
    for label, labels, _ in pods(render(target)):
        pod = Pod(labels)
        for kind in ("Ingress", "Egress"):
            assert any(not spec.get(kind.lower()) for spec in n._applying(pod, kind)), f"{label}: no {kind} deny"
        assert n.allows(pod, DNS, 53, "UDP") and n.allows(pod, DNS, 53, "TCP"), label
        assert not n.allows(pod, INTERNET, 443) and not n.allows(pod, ELSEWHERE, 80), label
        assert not n.allows(pod, Pod({"k8s-app": "kube-proxy"}, "kube-system"), 53, "UDP"), label
    for pod in (STRANGER, Pod({})):  # pods KServe or Knative make with labels of their own only
        assert n._applying(pod, "Ingress") and n._applying(pod, "Egress")


@by_target
def test_mlflow_takes_its_clients_only(target):
    n, docs = net(target), render(target)
    clients = {"storecast-predictor", "storecast-retrain", "storecast-dashboard"}
    for label, labels, _ in pods(docs):
        client = labels.get("app.kubernetes.io/name") in clients or labels.get("ray.io/node-type") == "head"
        assert n.allows(Pod(labels), MLFLOW, 5000) == client, label
        assert not n.allows(Pod(labels), MLFLOW, 8080), label
    for pod in (STRANGER, Pod({}), GATEWAY, ACTIVATOR, BROKER, ELSEWHERE, OPERATOR):
        assert not n.allows(pod, MLFLOW, 5000), pod
    # the pods of these tests are labelled as the manifests label them
    rendered = [labels for _, labels, _ in pods(docs)]
    ours = [PREDICTOR, TRANSFORMER, RETRAIN, DASHBOARD, DEADLETTER, MLFLOW]
    for pod in ours + ([HEAD, WORKER, SUBMITTER] if target == "overlays/ray" else []):
        assert pod.labels in rendered, pod


@pytest.mark.parametrize("target", ["base", "overlays/ray"])
def test_each_component_reaches_what_it_needs_and_nothing_more(target):
    n = net(target)
    api = api_server(n)
    need = [  # (source, destination, port, allowed)
        (TRANSFORMER, GATEWAY, 8081, True), (TRANSFORMER, ACTIVATOR, 8013, True),  # the predictors' route
        (TRANSFORMER, PREDICTOR, 8080, False), (TRANSFORMER, BROKER, 80, False), (TRANSFORMER, api, 443, False),
        (PREDICTOR, GATEWAY, 8081, False), (PREDICTOR, api, 443, False), (PREDICTOR, BROKER, 80, False),
        (RETRAIN, BROKER, 8080, True), (RETRAIN, api, 6443, True), (RETRAIN, api, 443, True),
        (RETRAIN, PREDICTOR, 8080, True),  # the canary's /metrics
        (RETRAIN, PREDICTOR, 8081, False), (RETRAIN, TRANSFORMER, 8080, False), (RETRAIN, api, 22, False),
        (DASHBOARD, GATEWAY, 8081, True), (DASHBOARD, api, 443, False), (DASHBOARD, PREDICTOR, 8080, False),
        (DEADLETTER, GATEWAY, 8081, False), (MLFLOW, GATEWAY, 8081, False), (MLFLOW, api, 443, False),
        (WORKER, HEAD, 6379, True), (SUBMITTER, HEAD, 8265, True), (HEAD, WORKER, 10001, True),
        (OPERATOR, HEAD, 8265, True), (OPERATOR, HEAD, 6379, False), (ELSEWHERE, HEAD, 8265, False),
        (HEAD, GATEWAY, 8081, False), (WORKER, api, 443, False),
        (GATEWAY, TRANSFORMER, 8012, True), (ACTIVATOR, PREDICTOR, 8013, True), (BROKER, RETRAIN, 8012, True),
        (ELSEWHERE, TRANSFORMER, 8012, False), (ELSEWHERE, RETRAIN, 8012, False),
    ]
    wrong = [f"{s} -> {d}:{port} should {'' if ok else 'not '}be allowed" for s, d, port, ok in need
             if n.allows(s, d, port) != ok]
    assert not wrong, "\n".join(wrong)
    for pod in ALL.values():
        assert not n.allows(pod, INTERNET, 443) and not n.allows(pod, INTERNET, 80)


def test_the_evaluator_reads_policies_as_kubernetes_does():
    """No policy: all open; a deny-all: closed; an allow adds to it; ports and namespaces are exact."""
    def policy(spec: dict) -> dict:
        return {"spec": {"podSelector": {}, **spec}}
    assert Net([]).allows(STRANGER, INTERNET, 443)
    deny = policy({"policyTypes": ["Ingress", "Egress"]})
    assert not Net([deny]).allows(STRANGER, INTERNET, 443) and not Net([deny]).allows(ELSEWHERE, STRANGER, 80)
    assert Net([deny]).allows(ELSEWHERE, INTERNET, 443)  # another namespace's pod: not ours to judge
    web = policy({"policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "shop"}}}], "ports": [{"port": 80}]}]})
    assert Net([deny, web]).allows(STRANGER, ELSEWHERE, 80) and not Net([deny, web]).allows(STRANGER, ELSEWHERE, 81)
    assert not Net([deny, web]).allows(STRANGER, Pod({"app": "web"}, "other"), 80)
