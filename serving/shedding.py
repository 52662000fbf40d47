"""Load shedding for a KServe ModelServer: bounded in-flight inference requests, then 503 + Retry-After.

Past capacity a server that queues without bound answers everything late, and clients time out and
retry into the queue ("self-denial of service"). Knative's ``containerConcurrency`` bounds the
requests a pod takes; this does the same inside the process, so the local stack and any plain
deployment behave alike: at most ``limit`` inference requests (POST under ``/v1/models`` or
``/v2/models``) run at once, and the next ones are answered at once with 503 and ``Retry-After``.
Health, readiness and metadata (GET) are never shed.

A shed answer must cost far less than a served one, or shedding eats the capacity it protects (at
twice the offered load, half the requests are shed). Two layers:

- :class:`LoadShedder`, pure ASGI middleware in front of KServe's whole middleware stack, counts the
  requests in flight and is the exact bound;
- :class:`FastShedProtocol`, uvicorn's httptools protocol with one shortcut: a request that would be
  shed is answered from the parser callbacks, as one pre-built write, with no ASGI scope, task,
  middleware or access-log line. It also counts the requests it lets in, at once (requests that
  arrive in one event-loop iteration would otherwise all pass before any reaches the middleware).
  Requests it cannot handle that way (pipelined, ``Expect: 100-continue``, absolute URLs) are
  counted and shed by the middleware.

The same protocol bounds a request's head (request line and headers): past ``HEAD_LIMIT`` bytes it answers
431 and closes the connection, before the parser has gathered the rest. A 1 MB header costs a few
reads, not a megabyte of copying and a header table; no credential is near the limit (a key is at most
512 characters, a token 8 KiB: ``serving.access.admission``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
PREFIXES = ("/v1/models", "/v2/models")
_PREFIXES_B = tuple(p.encode() for p in PREFIXES)
LOG_EVERY = 10.0  # seconds between "shedding" log lines
HEAD_LIMIT = 64 << 10  # bytes of a request's line and headers
_HEAD_BODY = b'{"error":"request headers over the limit of %d bytes"}' % HEAD_LIMIT
HEAD_REFUSAL = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_HEAD_BODY), _HEAD_BODY))
ADMITTED = "storecast.admitted"  # scope key: FastShedProtocol counted this request in

log = logging.getLogger("storecast.shedding")
_active: LoadShedder | None = None  # the shedder of this process, read by FastShedProtocol


class LoadShedder:
    """Pure ASGI middleware: counts inference requests in flight and rejects past ``limit``."""

    def __init__(self, app: ASGIApp, limit: int, retry_after: int = 1) -> None:
        self.app, self.limit, self.inflight, self.shed = app, limit, 0, 0
        self.on_shed: Callable[[str], None] | None = None  # called with the protocol: a metrics counter
        self._body = (b'{"error":"overloaded: %d inference requests in flight, the limit; retry after %d s"}'
                      % (limit, retry_after))
        self._headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry_after).encode()),
                         (b"content-length", str(len(self._body)).encode())]
        # the answer as FastShedProtocol writes it, around uvicorn's default headers (date, server)
        self.status_line = b"HTTP/1.1 503 Service Unavailable\r\n"
        self.tail = b"".join(k + b": " + v + b"\r\n" for k, v in self._headers) + b"\r\n" + self._body
        self.tail_close = b"connection: close\r\n" + self.tail
        self._logged_at, self._logged_shed = time.monotonic(), 0

    def over(self) -> bool:
        """Whether a new inference request would be shed now."""
        return 0 < self.limit <= self.inflight

    def count_shed(self, protocol: str = "http") -> None:
        """Count one shed request; say so in the log at most every ``LOG_EVERY`` seconds."""
        self.shed += 1
        if self.on_shed is not None:
            self.on_shed(protocol)
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            log.warning("overloaded: shed %d inference requests in the last %.0f s (limit %d in flight)",
                        self.shed - self._logged_shed, now - self._logged_at, self.limit)
            self._logged_at, self._logged_shed = now, self.shed

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get(ADMITTED):  # counted by FastShedProtocol when it let the request in
            try:
                await self.app(scope, receive, send)
            finally:
                self.inflight -= 1
            return
        if (self.limit <= 0 or scope["type"] != "http" or scope.get("method") != "POST"
                or not scope.get("path", "").startswith(PREFIXES)):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self.count_shed()
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _fast_protocol() -> type | None:
    """uvicorn's httptools protocol with the shed shortcut (None when httptools is not installed)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class FastShedProtocol(HttpToolsProtocol):
        """Answers a request that would be shed straight from the parser: one write, nothing else; refuses
        a head over ``HEAD_LIMIT`` (431) before it is read whole."""

        _shedding = False
        _in_head = True  # between requests or in a request's head: what arrives is head
        _head_bytes = 0

        def data_received(self, data: bytes) -> None:
            in_head = self._in_head
            super().data_received(data)
            if in_head and self._in_head and not self.transport.is_closing():  # all of ``data`` was head
                self._head_bytes += len(data)
                if self._head_bytes > HEAD_LIMIT:
                    self.transport.write(HEAD_REFUSAL)
                    self.transport.close()
                    refused_head()

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            shedder = _active
            if (shedder is not None and shedder.limit > 0 and not self.expect_100_continue and not self.pipeline
                    and (self.cycle is None or self.cycle.response_complete) and not self.parser.should_upgrade()
                    and self.parser.get_method() == b"POST" and self.url.startswith(_PREFIXES_B)):
                if shedder.over():
                    self._shedding = True  # the body is parsed and dropped; answered once it is complete
                    shedder.count_shed()
                    return
                # counted here, not when its task reaches the middleware: requests arriving in one
                # loop iteration would all pass the check otherwise
                shedder.inflight += 1
                self.scope[ADMITTED] = True  # type: ignore[literal-required]
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._shedding:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_head = True
            if not self._shedding:
                super().on_message_complete()
                return
            self._shedding = False
            assert _active is not None
            keep_alive = self.parser.should_keep_alive()
            defaults = b"".join(k + b": " + v + b"\r\n" for k, v in self.server_state.default_headers)
            self.transport.write(_active.status_line + defaults + (_active.tail if keep_alive else _active.tail_close))
            if keep_alive:
                self.on_response_complete()  # re-arms the keep-alive timeout, resumes reading
            else:
                self.transport.close()

    FastShedProtocol.__qualname__ = FastShedProtocol.__name__ = "FastShedProtocol"
    return FastShedProtocol


_head_log = {"at": 0.0, "count": 0}


def refused_head() -> None:
    """Count a request refused for its head's size; say so in the log at most every ``LOG_EVERY`` seconds."""
    from serving.access.audit import REFUSALS

    REFUSALS.labels("oversized_head", "rest").inc()
    _head_log["count"] += 1
    now = time.monotonic()
    if now - _head_log["at"] >= LOG_EVERY:
        log.warning("refused %d requests whose headers were over %d bytes (431) since the last such line",
                    _head_log["count"], HEAD_LIMIT)
        _head_log["at"], _head_log["count"] = now, 0


FastShedProtocol = _fast_protocol()


def activate(shedder: LoadShedder | None) -> None:
    """Make ``shedder`` the one :class:`FastShedProtocol` consults in this process."""
    global _active
    _active = shedder


PROTOCOL = f"{__name__}:FastShedProtocol" if FastShedProtocol is not None else "auto"  # for uvicorn.Config(http=)
