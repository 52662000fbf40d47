"""The access adapters on real servers: ASGI middleware under uvicorn, the interceptor on a grpc.aio server.

No header, body shape or port skips the check: a ``ce-id`` header, a structured CloudEvent body or a
gRPC call without credentials is refused like any other request; probes stay open; refusals come before
the app runs (the app counts what reaches it); admitted answers carry the rate-limit headers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.stack import free_port
from serving.access.admission import Access
from serving.access.asgi import (
    AccessMiddleware,
    admission_of,
    guard,
    inference_rules,
    retrain_permission,
    retrain_rules,
)
from serving.access.audit import note_rows
from serving.access.auth_file import hash_key, parse
from serving.access.grpc_interceptor import AccessInterceptor

KEYS = {"alice": "sc_alice", "svc": "sc_svc"}
AUTH = f"""
tiers:
  anonymous: {{requests_per_second: 1, burst: 2, concurrent: 1, permissions: [forecast]}}
  planner: {{requests_per_second: 3, burst: 6, concurrent: 4, permissions: [forecast, refresh]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}}
identities:
  - {{name: alice, tier: planner, key_sha256: {hash_key(KEYS['alice'])}}}
  - {{name: svc, tier: service, key_sha256: {hash_key(KEYS['svc'])}}}
"""
AUTH_NO_ANON = AUTH.replace("  anonymous: {requests_per_second: 1, burst: 2, concurrent: 1, permissions: [forecast]}\n",
                            "")
PREDICT = "/v1/models/storecast:predict"
CE_BINARY = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "s", "ce-type": "com.storecast.forecast.requested",
             "content-type": "application/json"}


class Server:
    """A uvicorn server in a thread on loopback."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def inference_app(access: Access) -> tuple[AccessMiddleware, list[str]]:
    reached: list[str] = []

    async def predict(request: Request) -> JSONResponse:
        reached.append(request.url.path)
        note_rows(3)
        return JSONResponse({"who": admission_of(request).identity.name})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route(PREDICT, predict, methods=["POST"]),
                            Route("/v2/models/storecast/infer", predict, methods=["POST"]),
                            Route("/v2/models/storecast", predict, methods=["GET"]),
                            Route("/v2/health/ready", ready), Route("/v2/models/storecast/ready", ready)])
    return AccessMiddleware(app, access, inference_rules), reached


@pytest.fixture
def rest():
    access = Access(parse(AUTH_NO_ANON))
    app, reached = inference_app(access)
    server = Server(app)
    yield server.url, reached
    server.stop()


def test_every_rest_door_needs_a_key(rest):
    url, reached = rest
    body = json.dumps({"instances": [{"storeId": "4"}]})
    structured = json.dumps({"specversion": "1.0", "id": "1", "source": "s",
                             "type": "com.storecast.forecast.requested", "data": {"instances": [{"storeId": "4"}]}})
    attempts = [
        ("POST", PREDICT, {"content-type": "application/json"}, body),  # V1
        ("POST", "/v2/models/storecast/infer", {"content-type": "application/json"}, "{}"),  # V2
        ("POST", PREDICT, CE_BINARY, body),  # CloudEvent, binary mode: the old ce-id bypass
        ("POST", PREDICT, {"ce-id": "x"}, body),
        ("POST", PREDICT, {"content-type": "application/cloudevents+json"}, structured),  # structured mode
        ("POST", PREDICT, {"content-type": "application/cloudevents-batch+json"}, f"[{structured}]"),
        ("GET", "/v2/models/storecast", {}, None),  # metadata
        ("POST", "/v1/models/storecast:predict/", {}, body),  # odd paths are checked too
        ("POST", "/V1/models/storecast:predict", {}, body),
    ]
    with httpx.Client(base_url=url) as client:
        for method, path, headers, data in attempts:
            r = client.request(method, path, headers=headers, content=data)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["error"].startswith("credentials required") and r.headers["www-authenticate"]
        assert reached == []  # refused before the app ran
        for path in ("/v2/health/ready", "/v2/models/storecast/ready"):  # probes stay open
            assert client.get(path).status_code == 200
        for headers in ({"x-api-key": KEYS["alice"]}, {"authorization": f"Bearer {KEYS['alice']}"},
                        {**CE_BINARY, "x-api-key": KEYS["alice"]}):
            r = client.post(PREDICT, headers=headers, content=body)
            assert r.status_code == 200 and r.json() == {"who": "alice"}
            assert r.headers["ratelimit-policy"] == '"planner";q=6;w=2'
            assert r.headers["ratelimit"].startswith('"planner";r=')


def test_rest_rate_limit_429_before_any_work(rest):
    url, reached = rest
    with httpx.Client(base_url=url, headers={"x-api-key": KEYS["alice"]}) as client:
        codes = [client.post(PREDICT, content="{}").status_code for _ in range(8)]
        assert codes == [200] * 6 + [429] * 2
        r = client.post(PREDICT, content="{}")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit"].startswith('"planner";r=0;')
        assert "rate limit of tier planner reached" in r.json()["error"]
        assert len(reached) == 6
        # the service identity is not slowed by alice's flood
        assert all(client.post(PREDICT, content="{}", headers={"x-api-key": KEYS["svc"]}).status_code == 200
                   for _ in range(20))


def test_anonymous_tier_limits_by_address():
    access = Access(parse(AUTH))
    app, _ = inference_app(access)
    server = Server(app)
    try:
        with httpx.Client(base_url=server.url) as client:
            codes = [client.post(PREDICT, content="{}").status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            assert client.post(PREDICT, content="{}", headers={"x-api-key": KEYS["alice"]}).status_code == 200
    finally:
        server.stop()


def test_retrain_rules_refresh_for_planners_fleet_wide_for_services():
    access = Access(parse(AUTH))

    async def receive(request: Request) -> JSONResponse:
        body = await request.json()
        admission_of(request).require(retrain_permission(body.get("store_ids")))
        return JSONResponse({"accepted": body.get("store_ids") or "all"}, status_code=202)

    async def jobs(request: Request) -> JSONResponse:
        return JSONResponse({"jobs": []})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/", receive, methods=["POST"]), Route("/jobs", jobs), Route("/healthz", healthz)])
    server = Server(guard(app, access, retrain_rules))
    try:
        with httpx.Client(base_url=server.url) as c:
            alice, svc = {"x-api-key": KEYS["alice"]}, {"x-api-key": KEYS["svc"]}
            assert c.get("/healthz").status_code == 200
            assert c.get("/jobs").status_code == 403  # anonymous may not see jobs
            assert c.get("/jobs", headers=alice).status_code == 200
            assert c.post("/", json={"store_ids": ["4"]}).status_code == 403  # anonymous: forecast only
            assert c.post("/", json={"store_ids": ["4", "7"]}, headers=alice).status_code == 202  # a refresh
            r = c.post("/", json={}, headers=alice)  # fleet-wide: needs retrain
            assert r.status_code == 403 and "may not retrain" in r.json()["error"]
            many = [str(i) for i in range(1, 30)]
            assert c.post("/", json={"store_ids": many}, headers=alice).status_code == 403
            assert c.post("/", json={"store_ids": many}, headers=svc).status_code == 202
            assert c.post("/", json={}, headers=svc).status_code == 202
            assert c.post("/", json={}, headers={**CE_BINARY, "ce-type": "dev.knative.sources.ping"}).status_code \
                == 403
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# gRPC

INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"


class Servicer(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.calls = 0

    def service(self, details):
        async def infer(request: bytes, context) -> bytes:
            self.calls += 1
            return b"ok:" + request

        async def live(request: bytes, context) -> bytes:
            return b"live"

        handlers = {INFER: infer, LIVE: live}
        found = handlers.get(details.method)
        return grpc.unary_unary_rpc_method_handler(found) if found else None


def test_grpc_metadata_key_and_refusals_with_trailing_metadata():
    access = Access(parse(AUTH_NO_ANON))
    servicer = Servicer()
    port = free_port()

    async def scenario():
        server = grpc.aio.server(interceptors=[AccessInterceptor(access)])
        server.add_generic_rpc_handlers([servicer])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        out = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                infer, live = channel.unary_unary(INFER), channel.unary_unary(LIVE)
                assert await live(b"") == b"live"  # health is open
                for md in ((), (("ce-id", "x"),), (("x-api-key", "sc_wrong"),), (("authorization", "Basic eA=="),)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await infer(b"q", metadata=md)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
                assert servicer.calls == 0
                assert await infer(b"q", metadata=(("x-api-key", KEYS["alice"]),)) == b"ok:q"
                assert await infer(b"q", metadata=(("authorization", f"Bearer {KEYS['alice']}"),)) == b"ok:q"
                for _ in range(4):
                    await infer(b"q", metadata=(("x-api-key", KEYS["alice"]),))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await infer(b"q", metadata=(("x-api-key", KEYS["alice"]),))
                out["limited"] = info.value
                out["svc"] = await infer(b"q", metadata=(("x-api-key", KEYS["svc"]),))
        finally:
            await server.stop(None)
        return out

    out = asyncio.run(scenario())
    limited = out["limited"]
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in limited.details()
    trailing = dict(limited.trailing_metadata())
    assert int(trailing["retry-after"]) >= 1 and int(trailing["grpc-retry-pushback-ms"]) > 0
    assert trailing["ratelimit-policy"] == '"planner";q=6;w=2'
    assert out["svc"] == b"ok:q" and servicer.calls == 7

