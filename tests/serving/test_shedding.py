"""Load shedding on a real uvicorn server on loopback: the fast path in the HTTP protocol and the middleware."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from pipelines.stack import free_port
from serving import shedding
from serving.shedding import FastShedProtocol, LoadShedder

PREDICT = "/v1/models/m:predict"


class HeldApp:
    """ASGI app: inference POSTs wait until released; everything answers 200 "ok"."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        if scope["method"] == "POST":
            while not self.release.is_set():
                await asyncio.sleep(0.005)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[tuple[int, LoadShedder, HeldApp]]:
    app = HeldApp()
    shedder = LoadShedder(app, limit=1)
    shedding._active = shedder
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(shedder, host="127.0.0.1", port=port, http=FastShedProtocol, loop="asyncio",
                                        lifespan="off", log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield port, shedder, app
    finally:
        app.release.set()
        srv.should_exit = True
        thread.join(10)
        shedding._active = None


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    _buffers.pop(sock.fileno(), None)
    return sock


def send(sock: socket.socket, method: str, path: str, body: bytes = b"", extra: str = "") -> None:
    head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    sock.sendall(head.encode() + body)


def read(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from the connection (bytes of a next one stay buffered for the next call)."""
    buf = _buffers.setdefault(sock.fileno(), bytearray())
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    end = len(head) + 4 + int(headers.get("content-length", 0))
    while len(buf) < end:
        buf += sock.recv(65536)
    body = bytes(buf[len(head) + 4: end])
    del buf[:end]
    return int(lines[0].split()[1]), headers, body


_buffers: dict[int, bytearray] = {}


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_requests_past_the_limit_are_answered_by_the_protocol(server: tuple[int, LoadShedder, HeldApp]) -> None:
    port, shedder, app = server
    held = connect(port)
    send(held, "POST", PREDICT, b'{"instances": []}')
    wait_for(lambda: shedder.inflight == 1)

    other = connect(port)
    body = json.dumps({"instances": [{"storeId": "4"}] * 50}).encode()
    send(other, "POST", PREDICT, body)
    status, headers, answer = read(other)
    assert status == 503 and headers["retry-after"] == "1" and "overloaded" in json.loads(answer)["error"]
    assert headers["content-type"] == "application/json" and "date" in headers
    assert app.calls == 1 and shedder.shed == 1  # the shed request never reached the app
    # the connection stays usable: probes and metadata are never shed, a second POST is shed again
    send(other, "GET", "/v2/models/m/ready")
    assert read(other)[0] == 200
    send(other, "POST", "/v2/models/m/infer", b"{}")
    assert read(other)[0] == 503 and shedder.shed == 2

    closing = connect(port)  # a client that asks to close gets its 503 and the connection closed
    send(closing, "POST", PREDICT, b"{}", "connection: close\r\n")
    assert read(closing)[0] == 503 and closing.recv(10) == b""

    app.release.set()
    status, _, answer = read(held)
    assert (status, answer) == (200, b"ok")
    wait_for(lambda: shedder.inflight == 0)
    send(other, "POST", PREDICT, b"{}")  # under the limit again: served on the same connection
    assert read(other)[0] == 200
    wait_for(lambda: shedder.inflight == 0)
    for sock in (held, other, closing):
        sock.close()


def test_the_count_returns_to_zero_when_clients_go_away(server: tuple[int, LoadShedder, HeldApp]) -> None:
    port, shedder, app = server
    gone = connect(port)
    send(gone, "POST", PREDICT, b"{}")
    wait_for(lambda: shedder.inflight == 1)
    gone.close()  # the client leaves while its request is being served
    app.release.set()
    wait_for(lambda: shedder.inflight == 0)
    sock = connect(port)
    send(sock, "POST", PREDICT, b"{}")
    assert read(sock)[0] == 200
    sock.close()


def test_pipelined_requests_are_counted_by_the_middleware(server: tuple[int, LoadShedder, HeldApp]) -> None:
    """Two requests in one packet: the second waits behind the first (not the protocol's fast path)
    and is then shed or served by the middleware; nothing is lost and the count ends at zero."""
    port, shedder, app = server
    sock = connect(port)
    first = b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    sock.sendall(first + first)
    wait_for(lambda: shedder.inflight == 1)
    app.release.set()
    assert read(sock)[0] == 200 and read(sock)[0] == 200
    wait_for(lambda: shedder.inflight == 0)
    sock.close()


def test_grpc_calls_past_the_limit_are_refused_with_the_retry_delay() -> None:
    """The same bound on gRPC (serving.grpc_server.Guard): one call held, the next is UNAVAILABLE at once with
    retry-after and grpc-retry-pushback-ms; metadata calls are never shed; the count ends at zero."""
    import grpc

    from serving.grpc_server import Guard
    from serving.metrics import Meter

    async def scenario() -> tuple:
        release = asyncio.Event()

        async def infer(request: bytes, context) -> bytes:
            await release.wait()
            return b"ok"

        async def metadata(request: bytes, context) -> bytes:
            return b"meta"

        shedder = LoadShedder(None, limit=1)
        server = grpc.aio.server(interceptors=(Guard("test", Meter("test"), shedder=shedder, log_requests=False),))
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
                    (("ModelInfer", infer), ("ModelMetadata", metadata))}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                                              handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            held = asyncio.ensure_future(call(b"x"))
            while shedder.inflight < 1:
                await asyncio.sleep(0.005)
            try:
                await call(b"y")
                refused = None
            except grpc.aio.AioRpcError as err:
                refused = (err.code(), dict(err.trailing_metadata()), err.details())
            meta = await channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")(b"m")
            release.set()
            answer = await held
        await server.stop(None)
        return refused, meta, answer, shedder.inflight, shedder.shed

    refused, meta, answer, inflight, shed = asyncio.run(scenario())
    code, trailing, details = refused
    assert code == grpc.StatusCode.UNAVAILABLE and "overloaded" in details
    assert trailing["retry-after"] == "1" and trailing["grpc-retry-pushback-ms"] == "1000"
    assert (meta, answer, inflight, shed) == (b"meta", b"ok", 0, 1)
