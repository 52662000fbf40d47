"""The access door in the serving layer's hook (``serving.access.hook``): the Calls the REST and gRPC fronts make.

The fronts (serving/http.py, serving/grpc_server.py) build a ``serving.access.hook.Call`` for every request
and turn a ``serving.errors.Refused`` into the HTTP answer or the gRPC status with trailing metadata;
here the door is asked with those Calls directly: what it admits, what it refuses and how.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from types import SimpleNamespace

import pytest

from serving import errors
from serving.access import hook as door_module
from serving.access.auth_file import hash_key
from serving.access.door import AccessDoor, Principal, door
from serving.access.settings import add_access_arguments

KEY, SVC, ADMIN = "sc_planner", "sc_service", "sc_admin"
AUTH = f"""
tiers:
  anonymous: {{requests_per_second: 1, burst: 2, concurrent: 2, permissions: [forecast]}}
  planner: {{requests_per_second: 2, burst: 4, concurrent: 4, permissions: [forecast, refresh]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain, rollout]}}
  admin: {{requests_per_second: null, concurrent: null, permissions: [admin]}}
identities:
  - {{name: planner-1, tier: planner, key_sha256: "{hash_key(KEY)}"}}
  - {{name: svc, tier: service, key_sha256: "{hash_key(SVC)}"}}
  - {{name: ops, tier: admin, key_sha256: "{hash_key(ADMIN)}"}}
"""


def call(headers=None, route="/v1/models/storecast:predict", kind="infer", protocol="http", method="POST",
         peer="127.0.0.1:50000", component="transformer"):
    return door_module.Call(protocol, method, route, kind, headers or {}, peer, "storecast", component)


@pytest.fixture
def access_door(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text(AUTH)
    parser = argparse.ArgumentParser()
    add_access_arguments(parser)
    made = door(SimpleNamespace(args=parser.parse_args(["--auth-file", str(path)]), host="0.0.0.0"))
    yield made
    made.access.close()


def admit(d: AccessDoor, c):
    return asyncio.run(d.admit(c))


def refusal(d: AccessDoor, c):
    with pytest.raises(errors.Refused) as info:
        admit(d, c)
    failure = errors.failure_of(info.value)
    return info.value, failure


def test_every_kind_of_call_is_checked_and_probes_stay_open(access_door):
    calls = [call(peer="10.0.0.1:1"),
             call({"ce-id": "x", "ce-type": "com.storecast.forecast.requested"}, peer="10.0.0.2:1"),
             call({"content-type": "application/cloudevents+json"}, peer="10.0.0.3:1"),
             call(route="/inference.GRPCInferenceService/ModelInfer", protocol="grpc", peer="ipv4:10.0.0.4:4")]
    for c in calls:  # no credentials: anonymous (forecast only), never a skipped check
        who = admit(access_door, c)
        assert who.identity.via == "anonymous" and who.identity.peer in ("10.0.0.1", "10.0.0.2", "10.0.0.3",
                                                                             "10.0.0.4")
        access_door.finished(c, who, 200)
    _, failure = refusal(access_door, call(route="/v2/repository/models/storecast/load", kind="repository",
                                           peer="10.0.0.5:1"))
    assert failure.status == 403  # anonymous callers do not load models
    for c in (call(kind="health", route="/v2/health/ready", method="GET"), call(kind="metrics", route="/metrics")):
        assert admit(access_door, c) is None


def test_refusals_map_to_status_headers_and_grpc_codes(access_door):
    _, failure = refusal(access_door, call({"x-api-key": "sc_wrong"}))
    assert (failure.status, failure.grpc_code) == (401, "UNAUTHENTICATED")
    assert failure.headers["www-authenticate"].startswith("Bearer") and "sc_wrong" not in failure.message
    _, failure = refusal(access_door, call({"x-api-key": KEY}, route="/v2/repository/models/x/load",
                                           kind="repository"))
    assert (failure.status, failure.grpc_code) == (403, "PERMISSION_DENIED") and "may not admin" in failure.message
    for _ in range(4):
        who = admit(access_door, call({"x-api-key": KEY}))
        assert dict(who.headers())["RateLimit-Policy"] == '"planner";q=4;w=2' and who.name == "planner-1"
        access_door.finished(call(), who, 200)
    _, failure = refusal(access_door, call({"authorization": f"Bearer {KEY}"}, protocol="grpc",
                                             route="/inference.GRPCInferenceService/ModelInfer"))
    assert (failure.status, failure.grpc_code) == (429, "RESOURCE_EXHAUSTED")
    assert int(failure.headers["retry-after"]) >= 1 and failure.headers["ratelimit"].startswith('"planner";r=0')


def test_anonymous_budget_is_per_address_not_per_connection(access_door):
    for port in (1, 2):  # two connections of one address share one budget
        access_door.finished(call(), admit(access_door, call(peer=f"10.9.9.9:{port}")), 200)
    _, failure = refusal(access_door, call(peer="10.9.9.9:3"))
    assert failure.status == 429
    assert admit(access_door, call(peer="10.9.9.8:3")).identity.peer == "10.9.9.8"


def test_retrain_service_routes_and_late_permission(access_door):
    svc_call = call({"x-api-key": KEY}, route="/", kind="other", component="retrain")
    who = admit(access_door, svc_call)
    who.require("refresh")  # a planner may refresh named stores
    with pytest.raises(errors.Refused) as info:
        who.require("retrain")  # not the whole fleet
    assert errors.failure_of(info.value).status == 403
    assert admit(access_door, call(route="/healthz", kind="other", method="GET", component="retrain")) is None
    _, failure = refusal(access_door, call(route="/jobs", kind="other", method="GET", component="retrain"))
    assert failure.status == 403  # anonymous: no job views


def test_finished_writes_the_audit_line_with_rows(access_door, caplog):
    caplog.set_level(logging.INFO, logger="storecast.audit")
    c = call({"x-api-key": SVC})
    who = admit(access_door, c)
    assert isinstance(who, Principal)
    who.note_rows(14)
    access_door.finished(c, who, 200)
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "storecast.audit"]
    assert (line["identity"], line["tier"], line["status"], line["rows"], line["protocol"]) == \
        ("svc", "service", 200, 14, "rest")
    assert SVC not in caplog.text


def test_the_door_refuses_to_open_wide_without_an_auth_file(monkeypatch):
    monkeypatch.delenv("STORECAST_AUTH_FILE", raising=False)
    with pytest.raises(ValueError, match="--auth-file is required"):
        door(SimpleNamespace(args=None, host="0.0.0.0"))
    open_door = door(SimpleNamespace(args=None, host="127.0.0.1"))
    assert open_door.access.open


@pytest.mark.parametrize("route,protocol,method", [
    ("/v2/repository/models/storecast/load", "http", "POST"),
    ("/v2/repository/models/storecast/unload", "http", "POST"),
    ("/v2/repository/index", "http", "POST"), ("/inference.GRPCInferenceService/RepositoryModelLoad", "grpc", "POST"),
    ("/inference.GRPCInferenceService/RepositoryModelUnload", "grpc", "POST"),
    ("/inference.GRPCInferenceService/RepositoryIndex", "grpc", "POST")])
def test_the_model_repository_needs_admin_on_every_protocol(access_door, monkeypatch, route, protocol, method):
    kind = (door_module.classify_http(method, route)[0] if protocol == "http"
            else door_module.classify_grpc(route))
    assert kind == "repository"
    for headers in ({}, {"x-api-key": KEY}, {"x-api-key": SVC}):  # anonymous, a planner, a service with rollout
        _, failure = refusal(access_door, call(headers, route=route, kind=kind, protocol=protocol, method=method))
        assert failure.status == 403 and "may not admin" in failure.message
    who = admit(access_door, call({"x-api-key": ADMIN}, route=route, kind=kind, protocol=protocol, method=method))
    assert who.name == "ops"
    monkeypatch.delenv("STORECAST_AUTH_FILE", raising=False)
    monkeypatch.delenv("STORECAST_API_KEY", raising=False)
    open_door = door(SimpleNamespace(args=None, host="127.0.0.1"))  # open on loopback: still no repository
    _, failure = refusal(open_door, call({"x-api-key": ADMIN}, route=route, kind=kind, protocol=protocol))
    assert failure.status == 403 and "admin permission" in failure.message and "--auth-file" in failure.message


def test_the_predictor_and_the_transformer_take_the_same_door(monkeypatch, tmp_path):
    from predictor.settings import COMPONENT as PREDICTOR
    from transformer.settings import COMPONENT as TRANSFORMER

    assert PREDICTOR.doors == TRANSFORMER.doors == "serving.access.door:door"
    path = tmp_path / "auth.yaml"
    path.write_text(AUTH)
    monkeypatch.setenv("STORECAST_AUTH_FILE", str(path))  # the variable counts as the flag does, for both
    parser = argparse.ArgumentParser()
    add_access_arguments(parser)
    made = door(SimpleNamespace(args=parser.parse_args([]), host="0.0.0.0"))
    try:
        assert isinstance(made, AccessDoor) and not made.access.open
    finally:
        made.access.close()


def test_no_door_is_refused(monkeypatch):
    monkeypatch.delenv("STORECAST_AUTH_FILE", raising=False)
    for spec in ("", " , ", "tests.support:__name__x"):
        with pytest.raises(ValueError, match="--doors"):
            door_module.build_doors(spec, SimpleNamespace(args=None, host="127.0.0.1"))
    with pytest.raises(ValueError, match="has no admit"):
        door_module.build_doors("builtins:id", SimpleNamespace(args=None, host="127.0.0.1"))  # not a door
    with pytest.raises(ValueError, match="no door, so every caller could do everything"):
        door_module.build_doors("atexit:unregister", SimpleNamespace(args=None, host="127.0.0.1"))  # None: no door


def test_the_single_shared_key_of_earlier_releases_closes_the_bypass(monkeypatch):
    monkeypatch.delenv("STORECAST_AUTH_FILE", raising=False)
    monkeypatch.setenv("STORECAST_API_KEY", "sc_shared")
    legacy = door(SimpleNamespace(args=None, host="0.0.0.0"))  # a key is enough to listen wide
    assert not legacy.access.open
    for headers in ({}, {"ce-id": "x", "ce-type": "com.storecast.forecast.requested"},
                    {"content-type": "application/cloudevents+json"}, {"x-api-key": "sc_other"}):
        _, failure = refusal(legacy, call(headers))
        assert failure.status == 401, headers
    who = admit(legacy, call({"x-api-key": "sc_shared", "ce-id": "x"}))
    assert who.name == "api-key" and who.identity.tier.permissions == {"forecast", "refresh"}


@pytest.mark.parametrize(("method", "path", "kind"), [
    ("POST", "/v1/models/storecast:predict", "infer"),
    ("POST", "/v1/models/storecast:predict\n", "infer"),  # Starlette's `$` matches before a final newline
    ("POST", "/v1/models/storecast", "infer"),  # any POST under a model is inference, whatever the suffix
    ("GET", "/v1/models/storecast", "health"),
    ("GET", "/v1/models/storecast\n", "metadata"),  # only the exact status route is open
    ("GET", "/v2/models/storecast/ready", "health"),
    ("GET", "/v2/models/storecast", "metadata"),
    ("POST", "/v2/repository/models/storecast/unload", "repository"),
    ("GET", "/v2/repository/index", "repository"),
])
def test_every_route_under_a_model_is_classified_closed_unless_exactly_a_status(method, path, kind):
    assert door_module.classify_http(method, path)[0] == kind
