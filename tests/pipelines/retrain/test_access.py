"""The retrain service's door: a real ``python -m pipelines.retrain`` process with an auth file (dry run).

Planners may ask for a refresh of a few named stores and see jobs; the nightly ping and fleet-wide
retrains need ``retrain`` (service or admin, or the Broker's Trigger identity with its OIDC token for the
retrain service's audience); callers without credentials are refused (no anonymous tier), whatever the
CloudEvent's shape; liveness and metrics stay open.
"""

from __future__ import annotations

import json

import httpx
import pytest

from serving.access.auth_file import hash_key
from tests.support import SUBJECT, Issuer, send, start_service

PLANNER, SERVICE = "sc_retrain-planner", "sc_retrain-service"
AUDIENCE = "serving.knative.dev/service/storecast/storecast-retrain"
MODEL = "storecast-access"


@pytest.fixture(scope="module")
def service(tmp_path_factory, synth_csv):
    issuer = Issuer()
    root = tmp_path_factory.mktemp("access-retrain")
    auth = root / "auth.yaml"
    auth.write_text(f"""
tiers:
  planner: {{requests_per_second: 20, burst: 40, concurrent: 4, permissions: [forecast, refresh]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}}
identities:
  - {{name: planner, tier: planner, key_sha256: "{hash_key(PLANNER)}"}}
  - {{name: svc, tier: service, key_sha256: "{hash_key(SERVICE)}"}}
  - {{name: broker-nightly, tier: service, oidc_subject: {SUBJECT}}}
""")
    svc = start_service(synth_csv, f"sqlite:///{root / 'mlflow.db'}", MODEL, root, "--dry-run", "--no-drift",
                        "--auth-file", str(auth),
                        "--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE, "--oidc-jwks-url",
                        f"{issuer.url}/jwks")
    try:
        yield svc.url, issuer
    finally:
        svc.proc.terminate()
        svc.proc.wait(timeout=20)
        issuer.close()


def post(url: str, data, kind: str, headers: dict | None = None, event_id: str = "e") -> httpx.Response:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    h, body = to_binary(CloudEvent({"type": kind, "source": "tests", "id": event_id}, data))
    return httpx.post(url, headers={**h, **(headers or {})}, content=body, timeout=60)


def test_refresh_for_planners_fleet_wide_for_services(service):
    url, issuer = service
    requested, ping = "com.storecast.retrain.requested", "dev.knative.sources.ping"
    planner, svc = {"x-api-key": PLANNER}, {"authorization": f"Bearer {SERVICE}"}
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/metrics").status_code == 200
    # no credentials: refused whatever the shape (binary, structured, no ce- headers at all)
    assert send(url, {"store_ids": ["1"]}, "a").status_code == 401
    structured = {"specversion": "1.0", "id": "s", "source": "t", "type": requested, "data": {"store_ids": ["1"]}}
    r = httpx.post(url, content=json.dumps(structured), headers={"content-type": "application/cloudevents+json"})
    assert r.status_code == 401 and "credentials required" in r.json()["error"]
    assert httpx.get(f"{url}/jobs").status_code == 401
    # a planner: a refresh of named stores, job views; not the fleet
    r = post(url, {"store_ids": ["1", "2"], "reason": "t"}, requested, planner, "p1")
    assert r.status_code == 200 and r.json().get("dry_run"), r.text
    assert httpx.get(f"{url}/jobs", headers=planner).status_code == 200
    r = post(url, None, ping, planner, "p2")
    assert r.status_code == 403 and "may not retrain" in r.json()["error"]
    r = post(url, {"store_ids": [str(i) for i in range(1, 30)]}, requested, planner, "p3")
    assert r.status_code == 403
    # a service, and the Broker's nightly delivery with its OIDC token: the fleet
    assert post(url, None, ping, svc, "s1").status_code == 200
    token = issuer.token(aud=AUDIENCE)
    assert post(url, None, ping, {"authorization": f"Bearer {token}"}, "o1").status_code == 200
    wrong = issuer.token()  # issued for the transformer's audience
    r = post(url, None, ping, {"authorization": f"Bearer {wrong}"}, "o2")
    assert r.status_code == 401 and "audience" in r.json()["error"]
