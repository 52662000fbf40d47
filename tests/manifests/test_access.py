"""Access in the manifests (issues 13 and 23): rendered with kubectl kustomize, checked against the real CRD schemas.

No cluster here, so what can be checked offline is: the EventPolicy (eventing.knative.dev/v1alpha1)
validates against its CRD schema and admits only senders that exist in the rendered set, into the
Broker, every source that sends into the Broker among them (the Kafka overlay's KafkaSource); every
Trigger requests a token for its subscriber's audience and that subscriber verifies exactly that
audience; the auth Secret is mounted (whole folder, so rotation reaches the file) where
STORECAST_AUTH_FILE points, in the transformer and the retrain service; the example auth file maps
every Trigger's OIDC service account (Knative's naming) to an identity of its own whose tier holds
exactly the permissions of what it delivers; every predictor checks its own auth file and the transformer
reads its key for them from a Secret of its own (tests/manifests/test_wiring.py runs that wiring)."""

from __future__ import annotations

import pytest
import yaml

from serving.access.asgi import retrain_permission
from serving.access.auth_file import load
from tests.support import (
    ISVC,
    KSVC,
    NAMESPACE,
    REPO,
    TARGETS,
    TRIGGER,
    by_target,
    find,
    gk,
    one,
    render,
    resolves,
    schema_errors,
    workloads,
)

POLICY = ("eventing.knative.dev", "EventPolicy")
SECRET = "storecast-auth"
EXAMPLE = REPO / "config" / "auth.example.yaml"
# What each Trigger delivers and the permission it needs at the subscriber.
NEEDS = {"com.storecast.forecast.requested": {"forecast"}, "dev.knative.kafka.event": {"forecast"},
         "com.storecast.sales.appended": {"retrain"},  # new actual sales (issue 14)
         "com.storecast.calendar.updated": {"retrain"},  # a calendar of the sales store pushed (issue 21)
         # a few named stores, or the fleet
         "com.storecast.retrain.requested": {retrain_permission(["4"]), retrain_permission(None)},
         "dev.knative.sources.ping": {retrain_permission(None)}}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def guarded(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """The workloads that face callers: (pod spec, container) of the transformer and the retrain service."""
    isvc = one(docs, ISVC, "storecast")["spec"]["transformer"]
    ksvc = one(docs, KSVC, "storecast-retrain")["spec"]["template"]["spec"]
    return {"transformer": (isvc, isvc["containers"][0]), "retrain": (ksvc, ksvc["containers"][0])}


def oidc_subject(trigger: dict) -> str:
    """The sender identity of a Trigger's deliveries: its OIDC service account, as Knative names it
    (knative/eventing pkg/auth: kmeta.ChildName(name, "-oidc-<group>-<kind>"), lower-cased)."""
    name = trigger["metadata"]["name"] + "-oidc-eventing.knative.dev-trigger"
    assert len(name) <= 63, f"{name}: Knative would shorten it with a hash; list that name in the auth file"
    return f"system:serviceaccount:{trigger['metadata']['namespace']}:{name.lower()}"


UPLOADER = "storecast-uploader"
UPLOADS = ("com.storecast.sales.appended", "com.storecast.calendar.updated")


def policies(docs: list[dict]) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in find(docs, POLICY)}


def passes(filters: list[dict], attributes: dict[str, str]) -> bool:
    """Knative's SubscriptionsAPI filters (the dialects used here: exact, any); all of them must pass."""
    def one(f: dict) -> bool:
        assert set(f) <= {"exact", "any"}, f"a dialect this test cannot evaluate: {set(f)}"
        ok = all(attributes.get(k) == v for k, v in f.get("exact", {}).items())
        return ok and (any(one(g) for g in f["any"]) if "any" in f else True)
    return all(one(f) for f in filters)


@by_target
def test_event_policy_validates_and_admits_only_senders_of_the_rendered_set(target):
    docs = render(target)
    found = policies(docs)
    assert set(found) == {"storecast-broker", "storecast-broker-uploads"}
    for policy in found.values():
        assert not schema_errors(policy)
        spec = policy["spec"]
        assert [gk({"apiVersion": t["ref"]["apiVersion"], "kind": t["ref"]["kind"]}) for t in spec["to"]] == \
            [("eventing.knative.dev", "Broker")]
        assert resolves(docs, spec["to"][0]["ref"], NAMESPACE)
    spec = found["storecast-broker"]["spec"]
    senders = {(f["ref"]["kind"], f["ref"]["name"]) for f in spec["from"]}
    # every source of the rendered set that sends into the Broker is admitted, the Kafka overlay's too
    sources = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Source")
               and gk({"apiVersion": d["spec"]["sink"]["ref"]["apiVersion"], "kind": d["spec"]["sink"]["ref"]["kind"]})
               == ("eventing.knative.dev", "Broker")}
    assert senders == {("SinkBinding", "storecast-retrain"), ("Trigger", "storecast-forecast-requested"), *sources}
    assert ("PingSource", "storecast-nightly") in sources
    assert (("KafkaSource", "storecast-forecast-requests") in sources) == (target == "overlays/kafka")
    assert all("sub" not in f for f in spec["from"]), "no free-form subjects: only objects of these manifests"
    for f in spec["from"]:
        assert resolves(docs, f["ref"], NAMESPACE), f["ref"]
    assert "filters" not in spec


@by_target
def test_uploaders_may_announce_sales_and_calendars_and_nothing_else(target):
    """The second policy admits one identity, a ServiceAccount of these manifests, for the two upload types."""
    docs = render(target)
    spec = policies(docs)["storecast-broker-uploads"]["spec"]
    assert spec["from"] == [{"sub": f"system:serviceaccount:{NAMESPACE}:{UPLOADER}"}]
    [account] = [a for a in find(docs, ("", "ServiceAccount")) if a["metadata"]["name"] == UPLOADER]
    assert account["automountServiceAccountToken"] is False
    for kind in UPLOADS:
        assert passes(spec["filters"], {"type": kind, "source": "storecast.cli"}), kind
    for kind in ("com.storecast.retrain.requested", "dev.knative.sources.ping", "com.storecast.forecast.requested",
                 "com.storecast.model.registered", "com.storecast.rollout.promoted", "com.storecast.sales.appended.x"):
        assert not passes(spec["filters"], {"type": kind}), kind
    routed = {t["spec"]["filter"]["attributes"]["type"] for t in find(docs, TRIGGER)}
    assert set(UPLOADS) <= routed, "an upload the uploader may announce must reach the retrain service"


def test_event_policy_schema_is_strict():
    policy = policies(render("base"))["storecast-broker"]
    policy["spec"]["form"] = policy["spec"].pop("from")  # misspelt
    assert schema_errors(policy)
    policy = policies(render("base"))["storecast-broker"]
    policy["spec"]["from"][0]["ref"]["nmae"] = "x"
    assert schema_errors(policy)
    uploads = policies(render("base"))["storecast-broker-uploads"]
    uploads["spec"]["filters"][0]["anyy"] = uploads["spec"]["filters"][0].pop("any")
    assert schema_errors(uploads)


@by_target
def test_every_trigger_requests_the_audience_its_subscriber_verifies(target):
    docs = render(target)
    audiences = {name: env_of(c).get("STORECAST_OIDC_AUDIENCE") for name, (_, c) in guarded(docs).items()}
    assert all(audiences.values()), audiences
    triggers = find(docs, TRIGGER)
    assert triggers
    for t in triggers:
        sub = t["spec"]["subscriber"]
        kind = sub["ref"]["kind"]
        expected = audiences["transformer"] if kind == "InferenceService" else audiences["retrain"]
        assert sub.get("audience") == expected, f"Trigger {t['metadata']['name']}: audience {sub.get('audience')}"


@by_target
def test_auth_secret_is_mounted_where_the_servers_read_it(target):
    for name, (pod, container) in guarded(render(target)).items():
        env = env_of(container)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        secret_volumes = [v for v in volumes.values() if v.get("secret", {}).get("secretName") == SECRET]
        assert len(secret_volumes) == 1, name
        mount = mounts[secret_volumes[0]["name"]]
        assert mount["readOnly"] and "subPath" not in mount, f"{name}: a subPath mount never sees a rotation"
        assert env["STORECAST_AUTH_FILE"].startswith(mount["mountPath"].rstrip("/") + "/"), name
        assert env["STORECAST_OIDC_ISSUER"].startswith("https://"), name
        jwks = env["STORECAST_OIDC_JWKS_URL"]
        assert jwks.startswith("file://") and any(jwks[len("file://"):].startswith(m["mountPath"] + "/")
                                                  for m in mounts.values()), name
        assert "STORECAST_TRUSTED_PROXIES" in env, name


def test_the_patches_keep_the_volumes_of_the_source_files():
    """JSON-patch ``add`` of a whole list replaces it: the component must not drop volumes the owners add."""
    docs = render("base")
    sources = {"transformer": (REPO / "manifests/base/inferenceservice.yaml", ("spec", "transformer")),
               "retrain": (REPO / "manifests/base/retrain.yaml", ("spec", "template", "spec"))}
    for name, (pod, container) in guarded(docs).items():
        path, keys = sources[name]
        kind = "InferenceService" if name == "transformer" else "Service"
        [doc] = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
        for k in keys:
            doc = doc[k]
        own = {v["name"] for v in doc.get("volumes", [])}
        own_mounts = {m["name"] for m in doc["containers"][0].get("volumeMounts", [])}
        assert own <= {v["name"] for v in pod["volumes"]}, f"{name}: volumes of {path.name} lost"
        assert own_mounts <= {m["name"] for m in container["volumeMounts"]}, f"{name}: mounts of {path.name} lost"


@pytest.mark.parametrize("target", TARGETS)
def test_each_trigger_sender_may_do_what_it_delivers_and_nothing_else(target):
    """One identity per Trigger, in a tier with exactly the permissions of what it delivers (issue 23: not the
    whole `service` tier), so a Trigger that is made to deliver something else is refused at the door."""
    config = load(EXAMPLE)
    names = set()
    for t in find(render(target), TRIGGER):
        subject = oidc_subject(t)
        entry = config.by_subject.get(subject)
        assert entry is not None, f"{EXAMPLE.name}: no identity with oidc_subject {subject}"
        needs = NEEDS[t["spec"]["filter"]["attributes"]["type"]]
        assert config.tier_of(entry).permissions == needs, (subject, needs)
        names.add(entry.name)
    assert len(names) == len(find(render(target), TRIGGER)), "one identity per Trigger"


def mounted_file(pod: dict, container: dict, path: str) -> str:
    """The Secret whose whole folder is mounted (read-only, no subPath) where ``path`` lies."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    [mount] = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount["readOnly"] and "subPath" not in mount, f"{path}: a subPath mount never sees a rotation"
    return volumes[mount["name"]]["secret"]["secretName"]


@by_target
def test_the_predictors_admit_the_transformer_by_its_own_key(target):
    """Every predictor checks the auth file of the Secret storecast-predictor-auth (so none is open); the
    transformer reads its key for them from storecast-transformer-predictor-key (tests/manifests/test_wiring.py
    runs this wiring); no other pod holds either."""
    docs = render(target)
    holders: dict[str, set[str]] = {}
    for isvc in find(docs, ISVC):
        for name, spec in (("predictor", isvc["spec"]["predictor"]), ("transformer", isvc["spec"].get("transformer"))):
            if spec is None:
                continue
            if name == "predictor" and "model" in spec:
                continue  # MLServer (overlays/mlserver) checks no key: NetworkPolicies (test_mlserver_overlay.py)
            [c] = spec["containers"]
            where = f"{isvc['metadata']['name']} {name}"
            if name == "predictor":
                args = c["args"]
                secret = mounted_file(spec, c, args[args.index("--auth-file") + 1])
                assert secret == "storecast-predictor-auth", where
            else:
                key_file = env_of(c).get("STORECAST_PREDICTOR_API_KEY_FILE")
                if key_file is None:  # no key for predictors that check none (overlays/mlserver) only
                    assert "model" in isvc["spec"]["predictor"], where
                    continue
                secret = mounted_file(spec, c, key_file)
                assert secret == "storecast-transformer-predictor-key", where
                assert not {"STORECAST_API_KEY", "MLFLOW_TRACKING_URI"} & env_of(c).keys(), where
            holders.setdefault(secret, set()).add(name)
    custom = any("model" not in isvc["spec"]["predictor"] for isvc in find(docs, ISVC))
    assert holders == ({"storecast-predictor-auth": {"predictor"},
                        "storecast-transformer-predictor-key": {"transformer"}} if custom else {}), holders
    for label, pod, _ in workloads(docs):
        if not label.startswith("InferenceService"):
            assert not {v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])} & holders.keys(), label
