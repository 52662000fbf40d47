"""The REST front: one pure ASGI middleware around KServe's app with the guarantees of both servers.

For every HTTP request, in this order:

1. the doors (``serving.access.hook``): admit (the principal is kept for the request) or refuse;
2. the in-flight bound (``serving.shedding``): past ``--max-inflight`` inference requests, 503 +
   ``Retry-After`` at once (most of these are answered earlier still, by ``FastShedProtocol``);
3. the body of a POST: at most ``--max-body-bytes`` (413), ``Content-Encoding: gzip`` decoded (other
   encodings 415, naming them), the charset checked (UTF-8 only, 415 otherwise) and a V1 body's
   ``Content-Type`` normalised (JSON sent without one, or as ``text/plain``, is read as JSON);
4. one access-log line (health probes at DEBUG) and the request counted by outcome (inference only).

Errors are answered ``{"error": "..."}`` by :func:`error_response`, the same mapping as gRPC.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving import shedding
from serving.access import hook as doors_
from serving.errors import ClientError, Failure, TooLarge, Unsupported, failure_of
from serving.metrics import Meter

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

access_log = logging.getLogger("storecast.access")
errors_log = logging.getLogger("storecast.errors")
ADMISSION = "storecast_admission"  # scope["state"] key of the doors' principal
JSON_TYPES = ("application/json", "application/cloudevents+json")
UTF8 = ("utf-8", "utf8", "us-ascii", "ascii")
MESSAGE_CHARS = 300  # of an error message in the access log


def error_response(failure: Failure) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of an error answer."""
    body = orjson.dumps(failure.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in failure.headers.items()]
    return failure.status, headers, body


async def send_failure(send: Send, failure: Failure) -> None:
    status, headers, body = error_response(failure)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Front:
    """Pure ASGI middleware: doors, in-flight bound, body checks, access log, metrics."""

    def __init__(self, app: Any, component: str, meter: Meter, doors: doors_.Doors | None = None,
                 shedder: shedding.LoadShedder | None = None, max_body: int = 32 << 20,
                 log_requests: bool = True) -> None:
        self.app, self.component, self.meter = app, component, meter
        self.doors = doors or doors_.Doors()
        self.shedder, self.max_body, self.log_requests = shedder, max_body, log_requests
        if shedder is not None:
            shedder.app = app
            shedder.on_shed = meter.shed
            shedding.activate(shedder)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method, path = scope.get("method", "GET"), scope.get("path", "")
        kind, model = doors_.classify_http(method, path)
        counted = bool(scope.get(shedding.ADMITTED))  # FastShedProtocol let it in and counted it
        status, note, shed = [0], [""], False

        async def tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if who is not None and hasattr(who, "headers"):
                    message = {**message, "headers": [*message.get("headers", ()), *_pairs(who.headers())]}
            elif message["type"] == "http.response.body" and status[0] >= 400 and not note[0]:
                note[0] = _error_text(message.get("body", b""))
            await send(message)

        who, call, token = None, None, None
        try:
            if self.doors:
                call = doors_.Call("http", method, path, kind, _headers(scope), _peer(scope), model, self.component)
                try:
                    who = await self.doors.admit(call)
                except Exception as exc:  # a refusal (or a door failing: never admit on error)
                    failure = failure_of(exc)
                    status[0], note[0] = failure.status, failure.message
                    await send_failure(send, failure)
                    return
                scope.setdefault("state", {})[ADMISSION] = who
                token = doors_.set_principal(who)
            if kind == "infer" and not counted and self.shedder is not None and self.shedder.limit > 0:
                if self.shedder.over():
                    self.shedder.count_shed("http")
                    status[0], shed = 503, True
                    await send_failure(send, _overloaded(self.shedder))
                    return
                self.shedder.inflight += 1
                counted = True
            if method == "POST":
                try:
                    receive = await self._read_body(scope, receive, path)
                except Exception as exc:
                    failure = failure_of(exc)
                    status[0], note[0] = failure.status, failure.message
                    await send_failure(send, failure)
                    return
            try:
                await self.app(scope, receive, tracked)
            except Exception as exc:  # a refusal raised late (a door's permission check) or a bug
                failure = failure_of(exc)
                if failure.status >= 500 and failure.status != 503:
                    errors_log.error("%s %s failed", method, path[:200], exc_info=exc)
                if not status[0]:
                    status[0], note[0] = failure.status, failure.message
                    await send_failure(send, failure)
        finally:
            if counted and self.shedder is not None:
                self.shedder.inflight -= 1
            if token is not None:
                doors_.reset_principal(token)
            code = status[0] or 500
            if call is not None:
                self.doors.finished(call, who, code)
            if kind == "infer" and not shed:
                self.meter.request("http", code)
            if self.log_requests:
                _log("http", method, path, code, t0, _peer(scope), who, note[0], kind)

    async def _read_body(self, scope: Scope, receive: Receive, path: str) -> Receive:
        """Read the whole body within the limit, decode it, fix the content type; a receive replaying it."""
        headers = scope.get("headers") or []
        length = _header(headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise TooLarge(f"request body of {int(length)} bytes is over the limit of {self.max_body} "
                           "(--max-body-bytes)")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                async def gone(message: dict = message) -> dict:
                    return message

                return gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge(f"request body over the limit of {self.max_body} bytes (--max-body-bytes)")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        new_headers = list(headers)
        encoding = (_header(headers, b"content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", ""):
            if encoding not in ("gzip", "x-gzip"):
                raise Unsupported(f"Content-Encoding {encoding[:40]!r} is not supported: send gzip or no encoding")
            body = _gunzip(body, self.max_body)
            new_headers = [(k, v) for k, v in new_headers if k.lower() not in (b"content-encoding", b"content-length")]
            new_headers.append((b"content-length", str(len(body)).encode()))
        content_type = _header(headers, b"content-type")
        fixed = _content_type(content_type, v1=path.endswith(":predict") or path.endswith(":explain"))
        if fixed != content_type:
            new_headers = [(k, v) for k, v in new_headers if k.lower() != b"content-type"]
            if fixed:
                new_headers.append((b"content-type", fixed.encode("latin-1")))
        scope["headers"] = new_headers
        done = [False]

        async def replay() -> dict:
            if not done[0]:
                done[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _content_type(value: str | None, v1: bool) -> str | None:
    """The content type the handlers should see; raises ``Unsupported`` for a charset other than UTF-8."""
    if value is None:
        return "application/json" if v1 else None
    media, _, params = value.partition(";")
    media = media.strip().lower()
    for param in params.split(";"):
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in UTF8:
            raise Unsupported(f"charset {arg.strip()[:40]!r} is not supported: send UTF-8")
    if v1:  # V1 bodies are JSON (or a structured CloudEvent) whatever the client called them
        return media if media == "application/cloudevents+json" else "application/json"
    return media or None


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=47)  # gzip (or zlib) header
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ClientError("request body is not valid gzip (Content-Encoding: gzip)") from None
    if len(out) > limit:
        raise TooLarge(f"decoded request body over the limit of {limit} bytes (--max-body-bytes)")
    if not inflater.eof:
        raise ClientError("request body is truncated gzip (Content-Encoding: gzip)")
    return out


def _overloaded(shedder: shedding.LoadShedder) -> Failure:
    return Failure(503, f"overloaded: {shedder.limit} inference requests in flight, the limit; retry after 1 s",
                   {"retry-after": "1"})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in items]


def _error_text(body: bytes) -> str:
    try:
        return str(orjson.loads(body).get("error", ""))[:MESSAGE_CHARS]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return body[:MESSAGE_CHARS].decode("utf-8", "replace")


def _log(protocol: str, method: str, route: str, status: int, t0: float, peer: str, who: Any, note: str,
         kind: str) -> None:
    level = logging.DEBUG if kind == "health" else logging.ERROR if status >= 500 and status != 503 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    name = getattr(who, "name", None) or getattr(getattr(who, "identity", None), "name", None)
    access_log.log(level, "%s %s %s %d %.1fms %s%s%s", protocol, method, route[:200], status,
                   (time.perf_counter() - t0) * 1e3, peer, f" {name}" if name else "",
                   f" {note[:MESSAGE_CHARS]!r}" if note else "")


log_access = _log  # the gRPC side writes the same line
