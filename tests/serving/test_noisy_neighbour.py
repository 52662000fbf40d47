"""A noisy neighbour on real servers on loopback: the serving layer's REST front (uvicorn with FastShedProtocol) and
gRPC guard, with the access door over an auth file of two planners, a and b.

- a caller over its rate limit is refused by the door once, then by the protocol: a pre-built 429 with
  Retry-After and the rate-limit headers, without reaching the door or the app, while the other caller keeps
  getting 200s (REST and gRPC);
- the in-flight bound is counted per caller: with the bound reached by a, a's next request is 503 naming a's
  own count and share, b's still gets in (REST and gRPC);
- without an auth file (open, loopback) every caller is one, and the bound stays global.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import orjson
import pytest
import uvicorn

from pipelines.stack import free_port
from serving import shedding
from serving.access.admission import Access
from serving.access.auth_file import hash_key, parse
from serving.access.door import AccessDoor
from serving.access.hook import Doors
from serving.grpc_server import Guard
from serving.http import Front
from serving.metrics import Meter
from serving.shedding import FastShedProtocol, LoadShedder

A, B = "sc_noisy-a", "sc_noisy-b"
AUTH = f"""
tiers:
  planner: {{requests_per_second: 3, burst: 3, concurrent: 8, permissions: [forecast]}}
identities:
  - {{name: a, tier: planner, key_sha256: "{hash_key(A)}"}}
  - {{name: b, tier: planner, key_sha256: "{hash_key(B)}"}}
"""
PREDICT = "/v1/models/m:predict"
INFER = "/inference.GRPCInferenceService/ModelInfer"
METER = Meter("noisy-test")


class Counting(AccessDoor):
    """The access door, counting the calls it is asked about."""

    def __init__(self, access: Access) -> None:
        super().__init__(access)
        self.asked = 0

    async def admit(self, call: Any) -> Any:
        self.asked += 1
        return await super().admit(call)


class App:
    """ASGI app: inference POSTs wait while ``hold`` is set; every call answers 200."""

    def __init__(self) -> None:
        self.hold, self.calls, self.waiting = threading.Event(), 0, 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        self.waiting += 1
        while self.hold.is_set():
            await asyncio.sleep(0.005)
        self.waiting -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def serve(auth: str | None, limit: int) -> Iterator[tuple[str, App, Counting, LoadShedder]]:
    app, shedder = App(), LoadShedder(None, limit)
    door = Counting(Access(parse(auth) if auth else None))
    front = Front(app, "noisy-test", METER, Doors([door]), shedder, log_requests=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(front, host="127.0.0.1", port=port, http=FastShedProtocol, loop="asyncio",
                                           lifespan="off", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app, door, shedder
    finally:
        app.hold.clear()
        server.should_exit = True
        thread.join(10)
        shedding.activate(None)


@pytest.fixture
def rest() -> Iterator[tuple[str, App, Counting, LoadShedder]]:
    yield from serve(AUTH, 2)


@pytest.fixture
def open_rest() -> Iterator[tuple[str, App, Counting, LoadShedder]]:
    yield from serve(None, 2)


def post(url: str, key: str | None = None) -> httpx.Response:
    return httpx.post(url + PREDICT, content=b'{"instances": []}', timeout=10,
                      headers={"x-api-key": key} if key else {})


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_a_flooding_caller_gets_prebuilt_429s_and_the_other_keeps_200s(rest) -> None:
    url, app, door, _ = rest
    with httpx.Client(base_url=url, timeout=10) as client:
        answers = [client.post(PREDICT, content=b"{}", headers={"x-api-key": A}) for _ in range(30)]
        others = [client.post(PREDICT, content=b"{}", headers={"x-api-key": B}).status_code for _ in range(3)]
    codes = [r.status_code for r in answers]
    assert codes[:3] == [200] * 3 and set(codes[3:]) == {429}
    assert others == [200] * 3  # b's own window is untouched by a's flood
    assert door.asked == 4 + 3  # a's three admitted and its first refusal; the 26 others never reached the door
    assert app.calls == 3 + 3 and door.gate.refused == 26
    fast = answers[-1]
    assert fast.headers["retry-after"] == "1" and fast.headers["ratelimit-policy"] == '"planner";q=3;w=1'
    assert fast.headers["ratelimit"].startswith('"planner";r=0;t=') and "date" in fast.headers
    assert "rate limit of tier planner" in fast.json()["error"] and "'a'" in fast.json()["error"]
    time.sleep(1.05)  # the window moves on: a is served again, by the door
    assert post(url, A).status_code == 200 and door.asked == 8


def test_the_in_flight_bound_is_counted_per_caller_on_rest(rest) -> None:
    url, app, _, shedder = rest
    app.hold.set()
    with httpx.Client(base_url=url, timeout=10) as client:
        threads = [threading.Thread(target=client.post, args=(PREDICT,), kwargs={"content": b"{}", "headers":
                                                                                  {"x-api-key": A}})
                   for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: app.waiting == 2)
        assert shedder.by == {"id:a": 2}
        refused = post(url, A)  # a holds the whole bound: refused, naming its own count and share
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "a has 2 of them, its share while 1 callers are served is 2" in refused.json()["error"]
        held_b = threading.Thread(target=post, args=(url, B))
        held_b.start()
        wait_for(lambda: app.waiting == 3)  # b gets in although the bound is reached
        assert shedder.by == {"id:a": 2, "id:b": 1}
        assert post(url, A).status_code == 503  # a is over its share of two callers (1)
        app.hold.clear()
        for t in (*threads, held_b):
            t.join(10)
    wait_for(lambda: shedder.inflight == 0 and not shedder.by)


def test_open_mode_keeps_one_global_bound(open_rest) -> None:
    url, app, _, shedder = open_rest
    app.hold.set()
    threads = [threading.Thread(target=post, args=(url,)) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: app.waiting == 2)
    assert shedder.by == {"addr:127.0.0.1": 2}
    answer = post(url)
    assert answer.status_code == 503 and "overloaded: 2 inference requests in flight" in answer.json()["error"]
    app.hold.clear()
    for t in threads:
        t.join(10)
    assert post(url).status_code == 200


def test_grpc_rate_limit_and_per_caller_bound() -> None:
    """gRPC: a's calls past its limit are RESOURCE_EXHAUSTED with retry metadata, the later ones before the door;
    with a holding the in-flight bound, a is UNAVAILABLE naming its share and b is served."""

    async def scenario() -> dict[str, Any]:
        release = asyncio.Event()
        door = Counting(Access(parse(AUTH)))
        shedder = LoadShedder(None, limit=2)
        server = grpc.aio.server(interceptors=(Guard("noisy-test", METER, Doors([door]), shedder,
                                                     log_requests=False),))

        async def infer(request: bytes, context: Any) -> bytes:
            if request == b"hold":
                await release.wait()
            return b"ok"

        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                                              handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: dict[str, Any] = {}

        async def call(channel: Any, key: str, body: bytes = b"x") -> Any:
            try:
                return await channel.unary_unary(INFER)(body, metadata=(("x-api-key", key),))
            except grpc.aio.AioRpcError as err:
                return err

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            flood = [await call(channel, A) for _ in range(10)]
            out["flood"] = [r if isinstance(r, bytes) else r.code() for r in flood]
            out["asked_after_flood"] = door.asked
            out["last_metadata"] = dict(flood[-1].trailing_metadata())
            out["b"] = await call(channel, B)
            await asyncio.sleep(1.05)  # a's window frees slots
            held = [asyncio.ensure_future(call(channel, A, b"hold")) for _ in range(2)]
            while shedder.inflight < 2:
                await asyncio.sleep(0.005)
            over = await call(channel, A)
            out["over"] = (over.code(), over.details(), dict(over.trailing_metadata()))
            out["b_during"] = await call(channel, B)
            release.set()
            out["held"] = await asyncio.gather(*held)
        await server.stop(None)
        out["by"] = dict(shedder.by)
        return out

    out = asyncio.run(scenario())
    assert out["flood"][:3] == [b"ok"] * 3 and set(out["flood"][3:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert out["asked_after_flood"] == 4  # three admitted, one refused by the door; six refused before it
    meta = out["last_metadata"]
    assert meta["retry-after"] == "1" and int(meta["grpc-retry-pushback-ms"]) > 0 and "ratelimit" in meta
    assert out["b"] == b"ok" and out["b_during"] == b"ok" and out["held"] == [b"ok", b"ok"]
    code, details, trailing = out["over"]
    assert code == grpc.StatusCode.UNAVAILABLE and "a has 2 of them" in details and trailing["retry-after"] == "1"
    assert out["by"] == {}


def test_the_prebuilt_429_is_what_the_door_said() -> None:
    """The gate's answer carries the door's message and headers; it lasts until the window frees a slot."""
    access = Access(parse(AUTH))
    door = AccessDoor(access)

    async def flood() -> Exception:
        for _ in range(4):
            try:
                await door.admit(type("Call", (), {"protocol": "http", "method": "POST", "route": PREDICT,
                                                   "kind": "infer", "headers": {"x-api-key": A}, "peer": "1.2.3.4:5",
                                                   "component": "transformer"})())
            except Exception as exc:  # the fourth: over the limit
                return exc
        raise AssertionError("never refused")

    refused = asyncio.run(flood())
    key = door.gate.key_of({"x-api-key": A}, "1.2.3.4:5")
    boxed = door.gate.refusal(key)
    assert key == "id:a" and boxed is not None and boxed.message == str(refused)
    head, _, body = boxed.http_tail.partition(b"\r\n\r\n")
    assert orjson.loads(body) == {"error": str(refused)} and b"retry-after: 1" in head
    assert door.gate.refusal(door.gate.key_of({"x-api-key": B}, "1.2.3.4:5")) is None
    assert door.gate.key_of({"x-api-key": "sc_unknown"}, "1.2.3.4:5") == "?"
