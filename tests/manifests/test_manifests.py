"""Kubernetes manifests (issue 5): every kustomize target renders, validates, and keeps its promises.

* Render: ``kubectl kustomize`` of ``manifests/base`` and of every ``manifests/overlays/*`` (skipped
  with a reason where kubectl is missing).
* Schemas: KServe / Knative kinds against the CRD schemas copied into ``schemas/`` (objects the
  admission webhook decodes strictly are closed, see schemas/README.md); core kinds with
  ``kubernetes-validate`` in strict mode. Unknown kinds fail.
* Semantics the schemas cannot check: autoscaling and scale to zero, canary percent, model-level
  readiness probes, every Trigger subscriber / sink / SinkBinding subject exists, delivery with
  retries, exponential backoff and a dead-letter sink, RBAC exactly as stated, the API-key Secret
  referenced and never committed, the shards, the Kafka path, and every container argument is a
  flag (with a valid value) that the component's ``--help`` really lists.

Rendering, lookups and schema validation are tests/support.py's (the other manifest tests share them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import (
    BIN,
    ISVC,
    KSVC,
    MANIFESTS,
    NAMESPACE,
    REPO,
    TARGETS,
    TRIGGER,
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
    selects,
    workloads,
)

OVERLAYS = ("local", "canary", "sharded", "kafka")  # the overlays issue 5 asks for
BROKER = ("eventing.knative.dev", "Broker")
PREDICT_URI = "/v1/models/storecast:predict"
API_KEY_SECRET = "storecast-api-key"
DASHBOARD = "storecast-dashboard"  # the one Knative Service exposed through the ingress
ROLE_RULES = [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "patch"]},
              {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]},  # fleet retrains (RAY)
              {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]  # the canary pods' /metrics (LIFE)

# The image's first argument picks the component (Dockerfile, docker/entrypoint.sh); how to ask each for --help.
HELP_COMMANDS = {
    "predictor": [sys.executable, "-m", "predictor", "--help"],
    "transformer": [sys.executable, "-m", "transformer", "--help"],
    "retrain": [sys.executable, "-m", "pipelines.retrain", "--help"],
    "deadletter": [sys.executable, str(REPO / "docker" / "deadletter.py"), "--help"],
    "dashboard": [sys.executable, "-m", "dashboard", "--help"],
    "mlflow server": [str(BIN / "mlflow"), "server", "--help"],
}


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
])
def test_validation_is_strict(kind, mutate):
    """The validators really reject what a cluster would: misspelt and wrongly typed fields."""
    doc = next(d for d in render("base") if d["kind"] == kind)
    assert not schema_errors(doc)
    mutate(doc)
    assert schema_errors(doc), f"a broken {kind} passed validation"


# ---------------------------------------------------------------------------------------------
# Serving: Knative mode, autoscaling, probes, canary


@by_target
def test_everything_is_in_the_namespace(target):
    for d in render(target):
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {d['metadata']['name']}"


@by_target
def test_inference_services_autoscale_in_knative_mode(target):
    isvcs = find(render(target), ISVC)
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
            [container] = spec["containers"]
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
        assert container["args"][0] in {cmd.split()[0] for cmd in HELP_COMMANDS}, f"{label}: unknown component"
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
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}
    [volume] = deployment["spec"]["template"]["spec"]["volumes"]
    assert find(docs, ("", "PersistentVolumeClaim"), volume["persistentVolumeClaim"]["claimName"])
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
# Security: RBAC, secrets, network


@by_target
def test_rbac_is_least_privilege(target):
    docs = render(target)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    [role] = find(docs, ("rbac.authorization.k8s.io", "Role"))
    assert role["rules"] == ROLE_RULES, "get and patch inferenceservices, create and get rayjobs, nothing else"
    [binding] = find(docs, ("rbac.authorization.k8s.io", "RoleBinding"))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    accounts = {a["metadata"]["name"]: a for a in find(docs, ("", "ServiceAccount"))}
    account = accounts.pop("storecast-retrain")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    # The other account is the uploaders' identity for the Broker (components/auth): bound to nothing, no token
    assert list(accounts) == ["storecast-uploader"] and accounts["storecast-uploader"][
        "automountServiceAccountToken"] is False
    # Only the retrain service runs as that account; no other pod even mounts a token.
    for label, spec, container in workloads(docs):
        if container["args"][0] == "retrain":
            assert spec["serviceAccountName"] == account["metadata"]["name"], label
        else:
            assert "serviceAccountName" not in spec and spec.get("automountServiceAccountToken") is False, label


@by_target
def test_api_key_secret_is_referenced_not_committed(target):
    docs = render(target)
    assert not find(docs, ("", "Secret")), "a Secret is rendered: secrets never go into the repository"
    refs = [e["valueFrom"]["secretKeyRef"] for _, _, c in workloads(docs) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs and all(r["name"] == API_KEY_SECRET for r in refs)


def test_no_secret_in_any_manifest_file():
    for path in MANIFESTS.rglob("*.yaml"):
        assert not re.search(r"^kind:\s*Secret\s*$", path.read_text(), re.M), path
        assert "secretGenerator" not in path.read_text(), path


@by_target
def test_network_policies_cover_every_pod(target):
    docs = render(target)
    policies = find(docs, ("networking.k8s.io", "NetworkPolicy"))
    assert policies and all("Ingress" in p["spec"]["policyTypes"] for p in policies)
    # KServe and Knative pods carry labels set by their controllers: a policy must select them unlabelled.
    assert any(selects(p["spec"]["podSelector"], {}) for p in policies), "serving pods are not covered"
    mlflow_labels = one(docs, ("apps", "Deployment"), "mlflow")["spec"]["template"]["metadata"]["labels"]
    mlflow = [p for p in policies if selects(p["spec"]["podSelector"], mlflow_labels)]
    assert mlflow, "MLflow is not covered"
    for p in mlflow:  # MLflow: its port only, from this namespace only
        for rule in p["spec"]["ingress"]:
            assert rule["ports"] == [{"protocol": "TCP", "port": 5000}], p["metadata"]["name"]
            assert all(set(peer) == {"podSelector"} for peer in rule["from"]), p["metadata"]["name"]


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


# ---------------------------------------------------------------------------------------------
# Container arguments against the components' --help


def _run_help(command: list[str]) -> tuple[int, str]:
    env = {**os.environ, "COLUMNS": "200"}  # no wrapped option lines
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int, str]]:
    """Each component's --help, run once and concurrently (KServe's imports take a second or two)."""
    with ThreadPoolExecutor(len(HELP_COMMANDS)) as pool:
        return dict(zip(HELP_COMMANDS, pool.map(_run_help, HELP_COMMANDS.values()), strict=True))


OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)(?:[ =](\{[^}]*\}|\[[\w|-]+\]|[A-Z][A-Z0-9_]*)(?![\w-]))?")


def parse_help(text: str) -> dict[str, set[str] | bool]:
    """option -> True (takes a value), a set of choices, or False (a switch), from --help text."""
    options: dict[str, set[str] | bool] = {}
    for flag, meta in OPTION.findall(text):
        if meta.startswith(("{", "[")):
            options[flag] = set(re.split(r"[,|]", meta[1:-1]))
        elif meta:
            options[flag] = options.get(flag) or True
        else:
            options.setdefault(flag, False)
    return options


def component_of(args: list[str]) -> tuple[str, list[str]]:
    if args[0] == "mlflow":
        return f"mlflow {args[1]}", args[2:]
    return args[0], args[1:]


@by_target
def test_container_args_are_flags_the_entry_point_accepts(target, helps):
    problems = []
    for label, _, container in workloads(render(target)):
        component, args = component_of(container["args"])
        code, text = helps[component]
        if code != 0:
            problems.append(f"{label}: `{' '.join(HELP_COMMANDS[component][1:])}` failed: {text.strip()[-300:]}")
            continue
        options = parse_help(text)
        i = 0
        while i < len(args):
            flag, _, inline = args[i].partition("=")
            if not flag.startswith("--") or flag not in options:
                problems.append(f"{label}: {args[i]!r} is not an option of {component} --help")
                i += 1
                continue
            kind = options[flag]
            if kind is False:
                i += 1
                continue
            value = inline or (args[i + 1] if i + 1 < len(args) else None)
            if value is None or value.startswith("--"):
                problems.append(f"{label}: {flag} needs a value")
            elif isinstance(kind, set) and value not in kind:
                problems.append(f"{label}: {flag} {value!r} not one of {sorted(kind)}")
            i += 1 if inline else 2
    assert not problems, "\n".join(problems)


def test_help_parser_reads_argparse_and_click():
    text = ("usage: x [--http_port HTTP_PORT] [--predictor_protocol {v1,v2,grpc-v2}] [--enable_check]\n"
            "  -p, --port INTEGER   the port\n  --serve-artifacts / --no-serve-artifacts\n"
            "  --app-name [basic-auth]   app\n  --dev  If enabled")
    assert parse_help(text) == {"--http_port": True, "--predictor_protocol": {"v1", "v2", "grpc-v2"},
                                "--enable_check": False, "--port": True, "--serve-artifacts": False,
                                "--no-serve-artifacts": False, "--app-name": {"basic-auth"}, "--dev": False}
