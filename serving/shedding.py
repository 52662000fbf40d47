"""Load shedding for a KServe ModelServer: bounded in-flight inference requests, then 503 + Retry-After.

Past capacity a server that queues without bound answers everything late, and clients time out and
retry into the queue ("self-denial of service"). Knative's ``containerConcurrency`` bounds the
requests a pod takes; this does the same inside the process, so the local stack and any plain
deployment behave alike: at most ``limit`` inference requests (POST under ``/v1/models`` or
``/v2/models``) run at once, and the next ones are answered at once with 503 and ``Retry-After``.
Health, readiness and metadata (GET) are never shed. The bound is counted per caller (the identity whose budget
a request spends, named from its headers by ``serving.access.fastpath.FastGate``): at the limit, a caller
holding less than its share (the limit over the callers in flight) still gets in, one holding its share or
more is refused with a 503 naming its own count, so a flooding caller cannot take the slots of the others.
Without a gate (no access door) every request is one caller's, and the bound is global as before.

A shed answer must cost far less than a served one, or shedding eats the capacity it protects (at
twice the offered load, half the requests are shed). Two layers:

- :class:`LoadShedder`, pure ASGI middleware in front of KServe's whole middleware stack, counts the
  requests in flight and is the exact bound;
- :class:`FastShedProtocol`, uvicorn's httptools protocol with one shortcut: a request that would be
  shed is answered from the parser callbacks, as one pre-built write, with no ASGI scope, task,
  middleware or access-log line; a caller the door refused for its rate limit gets the gate's pre-built 429
  (``Retry-After``, ``RateLimit``) the same way until its window frees a slot. It also counts the requests it
  lets in, at once (requests that arrive in one event-loop iteration would otherwise all pass before any
  reaches the middleware).
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

import orjson

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
PREFIXES = ("/v1/models", "/v2/models")
_PREFIXES_B = tuple(p.encode() for p in PREFIXES)
LOG_EVERY = 10.0  # seconds between "shedding" log lines
HEAD_LIMIT = 64 << 10  # bytes of a request's line and headers
_HEAD_BODY = b'{"error":"request headers over the limit of %d bytes"}' % HEAD_LIMIT
HEAD_REFUSAL = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_HEAD_BODY), _HEAD_BODY))
ADMITTED = "storecast.admitted"  # scope key: FastShedProtocol counted this request in, for this caller
HTTP_429 = b"HTTP/1.1 429 Too Many Requests\r\n"
ANYONE = "-"  # the caller key of a server without a gate (one caller: the bound is global)

log = logging.getLogger("storecast.shedding")
_active: LoadShedder | None = None  # the shedder of this process, read by FastShedProtocol
_on_refused: Callable[[str, int], None] | None = None
_gate: Any = None  # the FastGate of this process's doors (serving.access.fastpath), read by FastShedProtocol


class LoadShedder:
    """Pure ASGI middleware: counts inference requests in flight, per caller, and rejects past ``limit``.

    Counted per caller (``key``: ``serving.access.fastpath.FastGate.key_of``, ``Identity.limit_key``): under
    ``limit`` in all, every request is let in; at the limit, a caller holding less than its share
    (``limit`` / the callers with requests in flight) still gets in, one holding its share or more is refused
    (503 naming its own count and share). A flooding caller cannot hold the slots another needs, and the
    total stays under ``limit`` plus one share per new caller.
    """

    def __init__(self, app: ASGIApp, limit: int, retry_after: int = 1) -> None:
        self.app, self.limit, self.inflight, self.shed = app, limit, 0, 0
        self.retry_after = retry_after
        self.by: dict[str, int] = {}  # requests in flight per caller
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

    def over(self, key: str = ANYONE) -> bool:
        """Whether a new inference request of ``key`` would be shed now."""
        if self.limit <= 0 or self.inflight < self.limit:
            return False
        return self.by.get(key, 0) >= self.share(key)

    def share(self, key: str = ANYONE) -> int:
        """The slots ``key`` may hold once the limit is reached: ``limit`` over the callers in flight (with it)."""
        callers = len(self.by) + (key not in self.by)
        return max(1, self.limit // callers)

    def enter(self, key: str = ANYONE) -> bool:
        """Count one request of ``key`` in, or False (not counted) when it is to be shed."""
        if self.over(key):
            return False
        self.inflight += 1
        self.by[key] = self.by.get(key, 0) + 1
        return True

    def leave(self, key: str = ANYONE) -> None:
        self.inflight -= 1
        n = self.by.get(key, 0) - 1
        if n > 0:
            self.by[key] = n
        else:
            self.by.pop(key, None)

    def message(self, key: str = ANYONE) -> str:
        """Why a request of ``key`` is shed: the limit, and the caller's own count and share."""
        text = f"overloaded: {self.limit} inference requests in flight, the limit"
        if key != ANYONE and key in self.by:
            text += (f"; {key.partition(':')[2] or key} has {self.by[key]} of them, its share while "
                     f"{len(self.by)} callers are served is {self.share(key)}")
        return f"{text}; retry after {self.retry_after} s"

    def answer(self, key: str, close: bool) -> bytes:
        """The pre-built 503 (after the status line and the default headers) for ``key``."""
        if key == ANYONE or key not in self.by:
            return self.tail_close if close else self.tail
        body = orjson.dumps({"error": self.message(key)})
        head = (b"content-type: application/json\r\nretry-after: %d\r\ncontent-length: %d\r\n"
                % (self.retry_after, len(body)))
        return (b"connection: close\r\n" if close else b"") + head + b"\r\n" + body

    def count_shed(self, protocol: str = "http") -> None:
        """Count one shed request; say so in the log at most every ``LOG_EVERY`` seconds."""
        self.shed += 1
        if self.on_shed is not None:
            self.on_shed(protocol)
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            log.warning("overloaded: shed %d inference requests in the last %.0f s (limit %d in flight, %d callers)",
                        self.shed - self._logged_shed, now - self._logged_at, self.limit, len(self.by))
            self._logged_at, self._logged_shed = now, self.shed

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        key = scope.get(ADMITTED)
        if key is not None:  # counted by FastShedProtocol when it let the request in
            try:
                await self.app(scope, receive, send)
            finally:
                self.leave(key)
            return
        if (self.limit <= 0 or scope["type"] != "http" or scope.get("method") != "POST"
                or not scope.get("path", "").startswith(PREFIXES)):
            await self.app(scope, receive, send)
            return
        if not self.enter():
            self.count_shed()
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.leave()


def _fast_protocol() -> type | None:
    """uvicorn's httptools protocol with the shed shortcut (None when httptools is not installed)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class FastShedProtocol(HttpToolsProtocol):
        """Answers a request that would be shed straight from the parser: one write, nothing else; refuses
        a head over ``HEAD_LIMIT`` (431) before it is read whole."""

        _answer: tuple[bytes, bytes, bytes] | None = None  # (status line, tail, tail closing): the body is dropped
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
            shedder, gate = _active, _gate
            if ((gate is not None or (shedder is not None and shedder.limit > 0)) and not self.expect_100_continue
                    and not self.pipeline and (self.cycle is None or self.cycle.response_complete)
                    and not self.parser.should_upgrade() and self.parser.get_method() == b"POST"
                    and self.url.startswith(_PREFIXES_B)):
                key = gate.key_of_raw(self.headers, self.client) if gate is not None else ANYONE
                boxed = gate.refusal(key) if gate is not None else None
                if boxed is not None:  # over its rate limit: the door would refuse it; answered once the body is in
                    self._answer = (HTTP_429, boxed.http_tail, b"connection: close\r\n" + boxed.http_tail)
                    if _on_refused is not None:
                        _on_refused("http", 429)
                    return
                if shedder is not None and shedder.limit > 0:
                    # counted here, not when its task reaches the middleware: requests arriving in one
                    # loop iteration would all pass the check otherwise
                    if not shedder.enter(key):
                        self._answer = (shedder.status_line, shedder.answer(key, False), shedder.answer(key, True))
                        shedder.count_shed()
                        return
                    self.scope[ADMITTED] = key  # type: ignore[literal-required]
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._answer is None:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_head = True
            answer, self._answer = self._answer, None
            if answer is None:
                super().on_message_complete()
                return
            keep_alive = self.parser.should_keep_alive()
            defaults = b"".join(k + b": " + v + b"\r\n" for k, v in self.server_state.default_headers)
            self.transport.write(answer[0] + defaults + (answer[1] if keep_alive else answer[2]))
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


def activate(shedder: LoadShedder | None, gate: Any = None,
             on_refused: Callable[[str, int], None] | None = None) -> None:
    """Make ``shedder`` and ``gate`` (a ``serving.access.fastpath.FastGate``: callers over their rate limit get
    its 429 from the protocol) the ones :class:`FastShedProtocol` consults in this process; ``on_refused``
    counts those 429s (protocol, status: a metrics counter)."""
    global _active, _gate, _on_refused
    _active, _gate, _on_refused = shedder, gate, on_refused


PROTOCOL = f"{__name__}:FastShedProtocol" if FastShedProtocol is not None else "auto"  # for uvicorn.Config(http=)
