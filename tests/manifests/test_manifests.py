"""Kubernetes manifests (issue 5): every kustomize target renders, validates, and keeps its promises.

* Render: ``kubectl kustomize`` of ``manifests/base`` and of every ``manifests/overlays/*`` (skipped
  with a reason where kubectl is missing).
* Schemas: KServe / Knative kinds against the CRD schemas copied into ``schemas/`` (objects the
  admission webhook decodes strictly are closed, see schemas/README.md); core kinds with
  ``kubernetes-validate`` in strict mode. Unknown kinds fail.
* Semantics the schemas cannot check: autoscaling and scale to zero, canary percent, model-level
  readiness probes, every Trigger subscriber / sink / SinkBinding subject exists, delivery with
  retries, exponential backoff and a dead-letter sink, the shards, the Kafka path, and every container
  argument is a flag (with a valid value) that the component's ``--help`` really lists.

Security has files of its own: test_hardening.py (containers, Secrets, trusted proxies), test_network.py
(NetworkPolicies), test_admission.py (RBAC and the retrain service's admission policies),
test_mlflow_auth.py (MLflow behind basic-auth), test_access.py (identities, the Broker), test_wiring.py
(the transformer's key for the predictors, run). Rendering, lookups and schema validation are
tests/support.py's (the other manifest tests share them).
"""

from __future__ import annotations

import re

import pytest

from tests.support import (
    ISVC,
    KSVC,
    NAMESPACE,
    TARGETS,
    TRIGGER,
    as_served,
    by_target,
    components,
    find,
    gk,
    group_of,
    one,
    quantity,
    render,
    resolves,
    schema_errors,
    workloads,
)

OVERLAYS = ("local", "canary", "sharded", "kafka")  # the overlays issue 5 asks for
BROKER = ("eventing.knative.dev", "Broker")
PREDICT_URI = "/v1/models/storecast:predict"
DASHBOARD = "storecast-dashboard"  # the one Knative Service exposed through the ingress



def arg_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


# ---------------------------------------------------------------------------------------------
# Render and validate


def test_every_overlay_of_the_issue_exists():
    assert {f"overlays/{o}" for o in OVERLAYS} <= set(TARGETS)


@by_target
def test_renders(target):
    docs = render(target)
    assert docs, f"{target} renders nothing"
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), d


@by_target
def test_every_document_validates(target):
    problems = [f"{d['kind']} {d['metadata'].get('name')}: {line}" for d in render(target) for line in schema_errors(d)]
    assert not problems, f"{target}:\n" + "\n".join(problems)


@pytest.mark.parametrize(("kind", "mutate"), [
    ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplica=0)),  # misspelt field
    ("InferenceService", lambda d: d["metadata"]["annotations"].update({"x/number": 0})),  # not a string
    ("Trigger", lambda d: d["spec"].update(subscribers=d["spec"]["subscriber"])),  # webhook-strict object
    ("Broker", lambda d: d["spec"]["delivery"].update(retries=3)),
    ("Deployment", lambda d: d["spec"].update(replica=1)),  # core kind, strict
    ("ValidatingAdmissionPolicy", lambda d: d["spec"].update(validation=d["spec"]["validations"])),
    ("NetworkPolicy", lambda d: d["spec"].update(egres=[])),
])
def test_validation_is_strict(kind, mutate):
    """The validators really reject what a cluster would: misspelt and wrongly typed fields."""
    doc = next(d for d in render("base") if d["kind"] == kind)
    assert not schema_errors(doc)
    mutate(doc)
    assert schema_errors(doc), f"a broken {kind} passed validation"


# ---------------------------------------------------------------------------------------------
# Serving: Knative mode, autoscaling, probes, canary


CLUSTER_SCOPED = {("", "Namespace"), ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
                  ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding")}


@by_target
def test_everything_is_in_the_namespace(target):
    docs = render(target)
    for d in docs:
        if gk(d) in CLUSTER_SCOPED:  # base/cluster-scoped.yaml takes the namespace kustomize gives them off again
            assert "namespace" not in d["metadata"], f"{d['kind']} {d['metadata']['name']} is cluster-scoped"
        else:
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {d['metadata']['name']}"
    assert {gk(d) for d in docs} & CLUSTER_SCOPED == CLUSTER_SCOPED


@by_target
def test_inference_services_autoscale_in_knative_mode(target):
    docs = render(target)
    isvcs = find(docs, ISVC)
    assert isvcs
    for isvc in isvcs:
        name = isvc["metadata"]["name"]
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative", name
        for comp, spec in components(isvc).items():
            where = f"{name}.{comp}"
            assert spec["minReplicas"] >= 0, where
            assert spec["maxReplicas"] >= max(1, spec["minReplicas"]), where
            assert spec["scaleMetric"] == "concurrency", where
            assert 0 < spec["scaleTarget"] <= spec["containerConcurrency"], where
            if "canaryTrafficPercent" in spec:
                assert 0 <= spec["canaryTrafficPercent"] <= 100, where
            [container] = as_served(docs, spec)["containers"]  # a `model`: its ServingRuntime's (overlays/mlserver)
            assert container["name"] == "kserve-container", where


def test_base_scales_to_zero_and_follows_champion():
    isvc = one(render("base"), ISVC, "storecast")
    assert set(components(isvc)) == {"predictor", "transformer"}
    for comp, spec in components(isvc).items():
        assert spec["minReplicas"] == 0, comp
        assert "canaryTrafficPercent" not in spec, comp
    args = isvc["spec"]["predictor"]["containers"][0]["args"]
    # issue 14: the predictor follows champion (a refit is served within the refresh interval); a fleet
    # version reaches it through the automatic canary (pipelines/rollout/controller.py), which pins models:/storecast/N
    assert arg_value(args, "--model_uri") == "models:/storecast@champion"
    assert 0 < float(arg_value(args, "--refresh-seconds")) <= 60


def test_canary_sends_ten_percent_to_a_new_version():
    base, canary = one(render("base"), ISVC, "storecast"), one(render("overlays/canary"), ISVC, "storecast")
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    old = arg_value(base["spec"]["predictor"]["containers"][0]["args"], "--model_uri")
    new = arg_value(predictor["containers"][0]["args"], "--model_uri")
    assert re.fullmatch(r"models:/storecast/\d+", new) and new != old, (old, new)
    # Nothing else changes: same transformer, same predictor apart from the version and the split.
    del predictor["canaryTrafficPercent"]
    args = predictor["containers"][0]["args"]
    args[args.index("--model_uri") + 1] = old
    assert canary == base
    assert [d for d in render("overlays/canary") if gk(d) != ISVC] == [d for d in render("base") if gk(d) != ISVC]


@by_target
def test_readiness_probes_are_model_level(target):
    for label, _, container in workloads(render(target)):
        probe = container.get("readinessProbe", {}).get("httpGet")
        assert probe, f"{label}: no HTTP readiness probe"
        if label.startswith("InferenceService"):
            args = container["args"]
            model = arg_value(args, "--model_name") or "storecast"
            assert probe["path"] == f"/v2/models/{model}/ready", f"{label}: {probe['path']} is not model-level"
            assert str(probe["port"]) == (arg_value(args, "--http_port") or "8080"), label


@by_target
def test_containers_run_the_image_with_limits_as_non_root(target):
    found = workloads(render(target))
    # Two images (Dockerfile stages): the serving one for predictor, transformer and dead-letter sink, the full one
    # for the rest; tests/packaging/test_images.py checks what each holds and the `kustomize edit set image` recipe.
    serving = {c["image"] for _, _, c in found if c["args"][0] in ("predictor", "transformer", "deadletter")}
    full = {c["image"] for _, _, c in found if c["args"][0] not in ("predictor", "transformer", "deadletter")}
    assert len(serving) == 1 and len(full) == 1 and serving != full, (serving, full)
    assert next(iter(serving)).split(":")[0].endswith("-serve"), serving
    for label, spec, container in found:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container.get("resources", {}).get(kind, {}).keys(), f"{label}: {kind}"
        security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, label
        assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, label


@by_target
def test_mlflow_server_and_its_clients_meet(target):
    docs = render(target)
    deployment = one(docs, ("apps", "Deployment"), "mlflow")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["mlflow", "server"] and "--serve-artifacts" in args
    assert arg_value(args, "--backend-store-uri").startswith("sqlite:////data/")
    assert arg_value(args, "--artifacts-destination").startswith("/data/")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mounts.keys() == {"/data", "/etc/mlflow/auth", "/tmp"}  # the store, its auth config, scratch
    assert find(docs, ("", "PersistentVolumeClaim"), volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"])
    # Every MLFLOW_TRACKING_URI (and the retrain service's --data URL) names the Service and its port.
    service = one(docs, ("", "Service"), "mlflow")
    address = f"http://mlflow.{NAMESPACE}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    allowed_hosts = arg_value(args, "--allowed-hosts").split(",")
    uris = [e["value"] for _, _, c in workloads(docs) for e in c.get("env", []) if e["name"] == "MLFLOW_TRACKING_URI"]
    uris += [arg_value(c["args"], "--data") for _, _, c in workloads(docs) if c["args"][0] == "retrain"]
    assert uris
    for uri in uris:
        assert uri.startswith(address), uri
        assert address.removeprefix("http://") in allowed_hosts, "MLflow would reject the Host header"


# ---------------------------------------------------------------------------------------------
# Eventing: wiring, delivery


@by_target
def test_every_subscriber_sink_and_subject_exists(target):
    docs = render(target)
    refs = []  # (what, ref, namespace)
    for d in docs:
        ns, what, spec = d["metadata"].get("namespace"), f"{d['kind']} {d['metadata']['name']}", d.get("spec", {})
        if gk(d) == TRIGGER:
            assert find(docs, BROKER, spec["broker"]), f"{what}: no Broker {spec['broker']}"
            refs.append((f"{what} subscriber", spec["subscriber"].get("ref"), ns))
            if gk_of_ref(spec["subscriber"].get("ref")) == ISVC:
                assert spec["subscriber"].get("uri") == PREDICT_URI, what
        if "sink" in spec:
            refs.append((f"{what} sink", spec["sink"].get("ref"), ns))
        if "subject" in spec:
            refs.append((f"{what} subject", spec["subject"], ns))
        if "deadLetterSink" in spec.get("delivery", {}):
            refs.append((f"{what} deadLetterSink", spec["delivery"]["deadLetterSink"].get("ref"), ns))
    assert refs
    for what, ref, ns in refs:
        assert ref, f"{what}: give a ref (an object of these manifests), not a bare URI"
        assert resolves(docs, ref, ns), f"{what}: {ref['kind']} {ref['name']} is not in the rendered set"


def gk_of_ref(ref: dict | None) -> tuple[str, str] | None:
    return (group_of(ref["apiVersion"]), ref["kind"]) if ref else None


@by_target
def test_triggers_route_each_event_type(target):
    docs = render(target)
    routes = {t["spec"]["filter"]["attributes"]["type"]: {k: v for k, v in t["spec"]["subscriber"].items()
                                                           if k != "audience"}  # test_access_manifests.py
              for t in find(docs, TRIGGER)}
    retrain = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "storecast-retrain"}
    from pipelines import events

    # every type the retrain service acts on reaches it: a new calendar is announced like new sales
    for kind in (events.RETRAIN_REQUESTED, events.PING, events.SALES_APPENDED, events.CALENDAR_UPDATED):
        assert routes[kind] == {"ref": retrain}, kind
    assert routes["com.storecast.forecast.requested"] == {
        "ref": {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "storecast"},
        "uri": PREDICT_URI}
    # The nightly ping goes into the Broker (so the Trigger above routes it); the retrain service
    # emits its events to the Broker through K_SINK from a SinkBinding.
    [ping] = find(docs, ("sources.knative.dev", "PingSource"))
    assert gk_of_ref(ping["spec"]["sink"]["ref"]) == BROKER
    assert ping["spec"]["schedule"].split()[2:] == ["*", "*", "*"], "nightly: once a day"
    [binding] = find(docs, ("sources.knative.dev", "SinkBinding"))
    assert binding["spec"]["subject"] == retrain and gk_of_ref(binding["spec"]["sink"]["ref"]) == BROKER
    for ksvc in find(docs, KSVC):  # cluster-local: only Triggers and in-cluster clients reach them
        if ksvc["metadata"]["name"] == DASHBOARD:  # the planners' page: through the ingress (test_dashboard.py)
            assert "networking.knative.dev/visibility" not in ksvc["metadata"].get("labels", {})
            continue
        assert ksvc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


@by_target
def test_delivery_retries_with_backoff_then_dead_letters(target):
    docs = render(target)
    delivering = find(docs, BROKER) + find(docs, TRIGGER) + find(docs, ("sources.knative.dev", "KafkaSource"))
    assert find(docs, BROKER) and find(docs, TRIGGER)
    for d in delivering:
        what, delivery = f"{d['kind']} {d['metadata']['name']}", d["spec"].get("delivery", {})
        assert delivery.get("retry", 0) >= 1, what
        assert delivery.get("backoffPolicy") == "exponential", what
        assert re.fullmatch(r"PT\d+(\.\d+)?S", delivery.get("backoffDelay", "")), what
        assert "deadLetterSink" in delivery, what


# ---------------------------------------------------------------------------------------------
# Overlays: local, sharded, kafka


def _requests(docs: list[dict]) -> dict[str, dict]:
    return {label: c["resources"]["requests"] for label, _, c in workloads(docs)}


def test_local_overlay_is_small():
    base, local = _requests(render("base")), _requests(render("overlays/local"))
    assert base.keys() == local.keys()
    smaller = [label for label in base for r in ("cpu", "memory")
               if quantity(local[label][r]) < quantity(base[label][r])]
    assert smaller, "the local overlay requests no less than base"
    for label in base:
        for r in ("cpu", "memory"):
            assert quantity(local[label][r]) <= quantity(base[label][r]), (label, r)
    for comp in components(one(render("overlays/local"), ISVC, "storecast")).values():
        assert comp["maxReplicas"] == 1


def test_sharded_overlay_has_one_predictor_per_shard():
    docs = render("overlays/sharded")
    transformer = one(docs, ISVC, "storecast")["spec"]["transformer"]["containers"][0]["args"]
    n = int(arg_value(transformer, "--shards"))
    hosts = arg_value(transformer, "--predictor_hosts").split(",")
    assert n > 1 and len(hosts) == n
    predictors = []
    for k, host in enumerate(hosts):
        match = re.fullmatch(rf"(.+)-predictor\.{NAMESPACE}\.svc\.cluster\.local:80", host)
        assert match, f"shard {k}: {host} is not an InferenceService predictor address (port 80)"
        predictor = one(docs, ISVC, match.group(1))["spec"]["predictor"]
        assert arg_value(predictor["containers"][0]["args"], "--shard") == f"{k}/{n}", host
        predictors.append(predictor)
    assert len(find(docs, ISVC)) == n, "one InferenceService per shard"
    # The shards differ only in --shard; they run the base predictor's spec.
    base = one(render("base"), ISVC, "storecast")["spec"]["predictor"]
    for predictor in predictors:
        args = predictor["containers"][0]["args"]
        i = args.index("--shard")
        del args[i: i + 2]
        assert predictor == base


def test_kafka_overlay_feeds_forecast_requests_to_the_transformer():
    docs = render("overlays/kafka")
    [source] = find(docs, ("sources.knative.dev", "KafkaSource"))
    assert source["spec"]["topics"] and source["spec"]["bootstrapServers"]
    assert gk_of_ref(source["spec"]["sink"]["ref"]) == BROKER
    # A plain record arrives as this event (eventing-kafka-broker's KafkaEventSource); one Trigger takes it.
    name, ns = source["metadata"]["name"], source["metadata"]["namespace"]
    events = [{"type": "dev.knative.kafka.event", "source": f"/apis/v1/namespaces/{ns}/kafkasources/{name}#{topic}"}
              for topic in source["spec"]["topics"]]
    for event in events:
        matching = [t for t in find(docs, TRIGGER)
                    if t["spec"]["filter"]["attributes"].items() <= event.items()]
        assert len(matching) == 1, event
        subscriber = {k: v for k, v in matching[0]["spec"]["subscriber"].items() if k != "audience"}  # access tests
        assert subscriber == {
            "ref": {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "storecast"},
            "uri": PREDICT_URI}
