"""The access adapters on real servers: ASGI middleware under uvicorn, the interceptor on a grpc.aio server.

No header, body shape or port skips the check: a ``ce-id`` header, a structured CloudEvent body or a
gRPC call without credentials is refused like any other request; probes stay open; refusals come before
the app runs (the app counts what reaches it); admitted answers carry the rate-limit headers.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.stack import free_port
from serving.access.admission import Access, AccessError
from serving.access.asgi import (
    OPEN,
    AccessMiddleware,
    admission_of,
    guard,
    inference_rules,
    retrain_permission,
    retrain_rules,
)
from serving.access.audit import note_rows
from serving.access.auth_file import hash_key, parse
from tests.support import UvicornServer

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


# ---- the access check as a grpc.aio server interceptor (test-only: the servers admit gRPC calls through
# serving.access.hook; this checks Access on a bare grpc.aio server) ----------------------------------
HEALTH = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
                    "/inference.GRPCInferenceService/ModelReady", "/grpc.health.v1.Health/Check",
                    "/grpc.health.v1.Health/Watch"})
HTTP_OF = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
           grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
           grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.FAILED_PRECONDITION: 400,
           grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.CANCELLED: 499}


def grpc_inference_rules(method: str) -> str | None:
    """Health and readiness RPCs are open; everything else (ModelInfer, metadata, ...) needs ``forecast``."""
    return OPEN if method in HEALTH else "forecast"


def _status(context: Any) -> int:
    code = context.code() if hasattr(context, "code") else None
    if code is None or isinstance(code, int):
        return 200 if not code else 500
    return HTTP_OF.get(code, 500)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Admit every call (unary or streaming) before its servicer runs.

    Credentials come from the call metadata (``x-api-key`` or ``authorization: Bearer``). A refusal ends the
    call before the servicer runs: ``UNAUTHENTICATED``, ``PERMISSION_DENIED`` or ``RESOURCE_EXHAUSTED`` with
    ``retry-after`` (seconds), ``grpc-retry-pushback-ms`` and the ``ratelimit-policy`` / ``ratelimit`` values in
    the trailing metadata. ``rules(method)`` says what a method needs (``OPEN`` for the health RPCs only).
    """

    def __init__(self, access: Access, rules: Callable[[str], str | None] = grpc_inference_rules) -> None:
        self.access, self.rules = access, rules

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        rule = self.rules(details.method)
        if handler is None or rule == OPEN:
            return handler
        access, method = self.access, details.method

        async def admit(context: Any) -> Any:
            metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            try:
                return await access.admit(metadata, context.peer(), route=method, protocol="grpc", permission=rule)
            except AccessError as exc:
                await context.abort(grpc.StatusCode[exc.grpc_code], exc.message,
                                    trailing_metadata=exc.grpc_trailing_metadata())

        def unary(behavior: Callable) -> Callable:
            async def call(request: Any, context: Any) -> Any:
                admission = await admit(context)
                status = 500
                try:
                    response = behavior(request, context)
                    if inspect.isawaitable(response):
                        response = await response
                    status = _status(context)
                    return response
                except grpc.aio.AbortError:
                    status = _status(context)
                    raise
                finally:
                    admission.finish(status)
            return call

        def streaming(behavior: Callable) -> Callable:
            async def call(request: Any, context: Any) -> Any:
                admission = await admit(context)
                status = 500
                try:
                    items = behavior(request, context)
                    if hasattr(items, "__aiter__"):
                        async for item in items:
                            yield item
                    else:
                        for item in items:
                            yield item
                    status = _status(context)
                finally:
                    admission.finish(status)
            return call

        wrap = {"unary_unary": unary, "stream_unary": unary, "unary_stream": streaming, "stream_stream": streaming}
        for kind, factory in wrap.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                maker = getattr(grpc, f"{kind}_rpc_method_handler")
                return maker(factory(behavior), request_deserializer=handler.request_deserializer,
                             response_serializer=handler.response_serializer)
        return handler



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
    server = UvicornServer(app)
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
    server = UvicornServer(app)
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
    server = UvicornServer(guard(app, access, retrain_rules))
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

