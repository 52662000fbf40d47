"""Every door of the real transformer (the serving layer with the access door), on loopback.

A real local stack (predictor + transformer processes, a trained 3-store version) whose transformer gets an
auth file without an ``anonymous`` tier and OIDC settings for an issuer this test plays (its JWKS served over
HTTP). Without credentials, V1, V2, metadata, binary and structured CloudEvents (the old ``ce-id`` bypass)
and gRPC are all refused; with a key, or with the Broker's OIDC token for the transformer's audience, they
are served; probes stay open; a planner over its limit gets 429 / RESOURCE_EXHAUSTED with the delay.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from pipelines.stack import LocalStack
from serving.access.auth_file import hash_key
from tests.support import AUDIENCE, SUBJECT, Issuer

PLANNER, SERVICE = "sc_stack-planner", "sc_stack-service"
MODEL = "storecast"


@pytest.fixture(scope="module")
def issuer():
    found = Issuer()
    yield found
    found.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, issuer):
    from pipelines.data.synth import synthesize
    from tests.support import make_registry

    root = tmp_path_factory.mktemp("access-stack")
    registry = make_registry(root / "registry", synthesize(3, seed=11))
    auth = root / "auth.yaml"
    auth.write_text(f"""
tiers:
  planner: {{requests_per_second: 3, burst: 6, concurrent: 4, permissions: [forecast, refresh]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}}
identities:
  - {{name: planner, tier: planner, key_sha256: "{hash_key(PLANNER)}"}}
  - {{name: svc, tier: service, key_sha256: "{hash_key(SERVICE)}"}}
  - {{name: broker-forecast, tier: service, oidc_subject: {SUBJECT}}}
""")
    with LocalStack(f"models:/{MODEL}@champion", registry.uri, log_dir=root / "logs",
                    transformer_args=["--auth-file", str(auth), "--oidc-issuer", issuer.url, "--oidc-audience",
                                      AUDIENCE, "--oidc-jwks-url", f"{issuer.url}/jwks"]) as s:
        last = int(registry.table.last_day.max())
        yield s, registry.table.store_id.tolist(), str(np.datetime64(last + 1, "D")), str(np.datetime64(last + 3, "D"))


def v1(stores, begin, end):
    return {"instances": [{"storeId": s, "beginDate": begin, "endDate": end} for s in stores[:2]]}


def v2(stores, begin, end):
    n = 2
    return {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [n], "data": stores[:n]},
                       {"name": "begin_date", "datatype": "BYTES", "shape": [n], "data": [begin] * n},
                       {"name": "end_date", "datatype": "BYTES", "shape": [n], "data": [end] * n}]}


CE = {"ce-specversion": "1.0", "ce-id": "x-1", "ce-source": "broker", "ce-type": "com.storecast.forecast.requested",
      "content-type": "application/json"}


def doors(stores, begin, end):
    """(name, method, path, headers, body) of every REST door."""
    structured = {"specversion": "1.0", "id": "x-2", "source": "broker", "type": "com.storecast.forecast.requested",
                  "datacontenttype": "application/json", "data": v1(stores, begin, end)}
    return [
        ("V1", "POST", f"/v1/models/{MODEL}:predict", {"content-type": "application/json"}, v1(stores, begin, end)),
        ("V2", "POST", f"/v2/models/{MODEL}/infer", {"content-type": "application/json"}, v2(stores, begin, end)),
        ("CloudEvent binary", "POST", f"/v1/models/{MODEL}:predict", CE, v1(stores, begin, end)),
        ("CloudEvent structured", "POST", f"/v1/models/{MODEL}:predict",
         {"content-type": "application/cloudevents+json"}, structured),
        ("metadata", "GET", f"/v2/models/{MODEL}", {}, None),
    ]


def send(client, method, path, headers, body):
    return client.request(method, path, headers=headers, content=None if body is None else json.dumps(body))


def test_no_rest_door_without_credentials_and_every_one_with_them(stack, issuer):
    s, stores, begin, end = stack
    with httpx.Client(base_url=s.transformer.url, timeout=30) as client:
        for name, method, path, headers, body in doors(stores, begin, end):
            r = send(client, method, path, headers, body)
            assert r.status_code == 401, (name, r.status_code, r.text)
            assert "credentials required" in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")
            r = send(client, method, path, {**headers, "x-api-key": "sc_wrong"}, body)
            assert r.status_code == 401, name
            r = send(client, method, path, {**headers, "authorization": f"Bearer {SERVICE}"}, body)
            assert r.status_code == 200, (name, r.text)
        # the Broker's delivery: a binary CloudEvent with its OIDC token for the transformer's audience
        token = issuer.token()
        r = send(client, "POST", f"/v1/models/{MODEL}:predict", {**CE, "authorization": f"Bearer {token}"},
                 v1(stores, begin, end))
        assert r.status_code == 200 and r.headers["ce-type"] == "com.storecast.forecast.completed", r.text
        wrong = issuer.token(aud="serving.knative.dev/service/storecast/storecast-retrain")
        r = send(client, "POST", f"/v1/models/{MODEL}:predict", {**CE, "authorization": f"Bearer {wrong}"},
                 v1(stores, begin, end))
        assert r.status_code == 401 and "audience" in r.json()["error"]
        for probe in (f"/v2/models/{MODEL}/ready", "/v2/health/ready", "/v2/health/live"):
            assert client.get(probe).status_code == 200, probe


def test_planner_rate_limit_429_with_headers(stack):
    s, stores, begin, end = stack
    with httpx.Client(base_url=s.transformer.url, timeout=30, headers={"x-api-key": PLANNER}) as client:
        answers = [client.post(f"/v1/models/{MODEL}:predict", json=v1(stores, begin, end)) for _ in range(8)]
    codes = [r.status_code for r in answers]
    assert codes[:6] == [200] * 6 and 429 in codes[6:], codes
    ok, refused = answers[0], next(r for r in answers if r.status_code == 429)
    assert ok.headers["ratelimit-policy"] == '"planner";q=6;w=2' and ok.headers["ratelimit"].startswith('"planner";r=')
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["ratelimit"].startswith('"planner";r=0;')
    assert "rate limit of tier planner" in refused.json()["error"]


GRPC = """
import json, sys
import grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as stub

host, stores, begin, end, keys = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
req = pb.ModelInferRequest(model_name="storecast")
for name, values in (("store_id", stores[:2]), ("begin_date", [begin] * 2), ("end_date", [end] * 2)):
    t = req.inputs.add(name=name, datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend(v.encode() for v in values)
client = stub.GRPCInferenceServiceStub(grpc.insecure_channel(host))
out = []
for md in keys:
    try:
        resp, call = client.ModelInfer.with_call(req, metadata=[tuple(p) for p in md], timeout=30)
        out.append({"code": "OK", "outputs": [o.name for o in resp.outputs]})
    except grpc.RpcError as e:
        out.append({"code": e.code().name, "details": e.details(), "trailing": dict(e.trailing_metadata() or ())})
live = client.ServerLive(pb.ServerLiveRequest(), timeout=10).live
print(json.dumps({"calls": out, "live": live}))
"""


def test_grpc_metadata_is_checked_like_headers(stack):
    s, stores, begin, end = stack
    keys = [[], [["ce-id", "x"]], [["x-api-key", "sc_wrong"]], [["x-api-key", SERVICE]],
            [["authorization", f"Bearer {SERVICE}"]]] + [[["x-api-key", PLANNER]]] * 8
    proc = subprocess.run([sys.executable, "-c", GRPC, f"127.0.0.1:{s.transformer.grpc_port}", json.dumps(stores),
                           begin, end, json.dumps(keys)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    codes = [c["code"] for c in out["calls"]]
    assert codes[:3] == ["UNAUTHENTICATED"] * 3 and codes[3:5] == ["OK", "OK"], out
    assert out["calls"][3]["outputs"] and out["live"]  # served; health open without credentials
    limited = [c for c in out["calls"][5:] if c["code"] == "RESOURCE_EXHAUSTED"]
    assert limited, codes  # 8 calls of a planner allowed 6 per 2 s (REST calls of this window count too)
    trailing = limited[0]["trailing"]
    assert int(trailing["retry-after"]) >= 1 and trailing["ratelimit-policy"] == '"planner";q=6;w=2'
    assert int(trailing["grpc-retry-pushback-ms"]) >= 1000
