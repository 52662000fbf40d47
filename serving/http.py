"""The REST front: one pure ASGI middleware around KServe's app with the guarantees of both servers.

For every HTTP request, in this order:

0. the doorstep, on the headers alone: a request a page of another site made a browser send is 403
   (``Origin`` not this server's own ``Host``; a form or ``text/plain`` POST carrying browser headers
   without CloudEvents ``ce-*`` headers), and, on an open server (no auth file, loopback only), a
   ``Host`` that is not a loopback name (DNS rebinding) is 403 too (``serving.access.doorstep.foreign``).
   Real clients are unaffected: tritonclient, KServe's clients, curl and the CLI send no ``Origin``;
1. the doors (``serving.access.hook``): admit (the principal is kept for the request) or refuse;
2. the in-flight bound (``serving.shedding``), counted per caller: past ``--max-inflight`` inference requests,
   a caller holding its share or more gets 503 + ``Retry-After`` at once, others still get in (most of these
   are answered earlier still, by ``FastShedProtocol``, which also answers a caller the door refused for its
   rate limit with a pre-built 429 until its window frees a slot: ``serving.access.fastpath``);
3. the body of a POST: at most ``--max-body-bytes`` (413), ``Content-Encoding: gzip`` decoded (other
   encodings 415, naming them), the charset checked (UTF-8 only, 415 otherwise) and a V1 body's
   ``Content-Type`` normalised (JSON sent without one, or as ``text/plain``, is read as JSON);
4. one access-log line (health probes at DEBUG) and the request counted by outcome (inference only).

Every refusal (0, 1, a body over the limit) is answered before the body is read; when a large or chunked
body is still on its way the answer says ``connection: close``, so the rest is never read. Refusals' access
lines are sampled (:func:`log_access`: one per status every 10 s, with the number held back), and every
field of the line is escaped: a ``%0a`` in a path never starts a line. Errors are answered
``{"error": "..."}`` by :func:`error_response`, the same mapping as gRPC.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from serving import shedding
from serving.access import hook as doors_
from serving.access.audit import Sampler
from serving.access.doorstep import foreign, media_type
from serving.access.fastpath import gate_of
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
DRAIN_BYTES = 64 << 10  # a refused request's unread body up to this is read and dropped; beyond, the connection closes
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")  # a browser sends them anywhere
BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest")
ROUTE_SAFE = "/:@!$&'()*+,;=-._~%"  # kept as they are in a logged path; everything else (blanks, controls) escaped
REFUSED_LINES = Sampler()  # refusals' access lines: one per protocol and status every 10 s


def error_response(failure: Failure) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of an error answer."""
    body = orjson.dumps(failure.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in failure.headers.items()]
    return failure.status, headers, body


async def send_failure(send: Send, failure: Failure, close: bool = False) -> None:
    """Answer ``failure``; ``close``: and close the connection after it (a body left unread)."""
    status, headers, body = error_response(failure)
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def browser_problem(method: str, headers: Mapping[str, str], local_only: bool) -> tuple[int, str] | None:
    """Why a request is one a browser was made to send here by a page of another site (None: it is not)."""
    refusal = foreign(headers, local_only)
    if refusal is not None:
        return refusal
    if (method == "POST" and media_type(headers) in FORM_TYPES and any(h in headers for h in BROWSER_HEADERS)
            and not any(name.startswith("ce-") for name in headers)):
        return 403, (f"a browser's {media_type(headers)} POST is refused (a form or a no-cors fetch can send it "
                     "from any site): send application/json, or a CloudEvent with ce-* headers")
    return None


def _unread_body(headers: Mapping[str, str]) -> bool:
    """Whether a body too large to drop cheaply (or of unknown length) may still be on its way."""
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return not length.isdigit() or int(length) > DRAIN_BYTES


class Front:
    """Pure ASGI middleware: doors, in-flight bound, body checks, access log, metrics."""

    def __init__(self, app: Any, component: str, meter: Meter, doors: doors_.Doors | None = None,
                 shedder: shedding.LoadShedder | None = None, max_body: int = 32 << 20,
                 log_requests: bool = True, local_only: bool = False) -> None:
        self.app, self.component, self.meter = app, component, meter
        self.doors = doors or doors_.Doors()
        self.shedder, self.max_body, self.log_requests = shedder, max_body, log_requests
        self.local_only = local_only  # an open server: only requests addressed to a loopback name
        self.gate = gate_of(self.doors)  # callers over their rate limit: 429 from the protocol
        if shedder is not None:
            shedder.app = app
            shedder.on_shed = meter.shed
        shedding.activate(shedder, self.gate, meter.request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method, path = scope.get("method", "GET"), scope.get("path", "")
        kind, model = doors_.classify_http(method, path)
        counted = scope.get(shedding.ADMITTED)  # the caller FastShedProtocol let in and counted, or None
        status, note, shed, refused = [0], [""], False, False
        headers = _headers(scope)

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
            problem = browser_problem(method, headers, self.local_only)
            if problem is not None:
                status[0], note[0], refused = problem[0], problem[1], True
                await send_failure(send, Failure(*problem), _unread_body(headers))
                return
            if self.doors:
                call = doors_.Call("http", method, path, kind, headers, _peer(scope), model, self.component)
                try:
                    who = await self.doors.admit(call)
                except Exception as exc:  # a refusal (or a door failing: never admit on error)
                    failure = failure_of(exc)
                    status[0], note[0], refused = failure.status, failure.message, failure.client
                    await send_failure(send, failure, _unread_body(headers))
                    return
                scope.setdefault("state", {})[ADMISSION] = who
                token = doors_.set_principal(who)
            if kind == "infer" and counted is None and self.shedder is not None and self.shedder.limit > 0:
                key = caller_key(who)
                if not self.shedder.enter(key):
                    self.shedder.count_shed("http")
                    status[0], shed = 503, True
                    await send_failure(send, _overloaded(self.shedder, key))
                    return
                counted = key
            if method == "POST":
                try:
                    receive = await self._read_body(scope, receive, path)
                except Exception as exc:
                    failure = failure_of(exc)
                    status[0], note[0], refused = failure.status, failure.message, isinstance(exc, TooLarge)
                    await send_failure(send, failure, refused)
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
            if counted is not None and self.shedder is not None:
                self.shedder.leave(counted)
            if token is not None:
                doors_.reset_principal(token)
            code = status[0] or 500
            if call is not None:
                self.doors.finished(call, who, code)
            if kind == "infer" and not shed:
                self.meter.request("http", code)
            if self.log_requests:
                _log("http", method, path, code, t0, _peer(scope), who, note[0], kind, refused)

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


def _overloaded(shedder: shedding.LoadShedder, key: str = shedding.ANYONE) -> Failure:
    return Failure(503, shedder.message(key), {"retry-after": str(shedder.retry_after)})


def caller_key(who: Any) -> str:
    """Whose share of the in-flight bound a request takes: the admitted identity's budget key, else anyone's."""
    identity = getattr(who, "identity", None)
    return getattr(identity, "limit_key", None) or shedding.ANYONE


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return doors_.combined((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or ())


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
         kind: str, refused: bool = False) -> None:
    """The access line: ``PROTOCOL METHOD ROUTE STATUS TIME PEER [IDENTITY] ['MESSAGE'] [held_back=N]``, each
    field escaped (the route percent-encoded, the message as a Python literal); a refusal's (before any
    work: a door, the doorstep, a body over the limit) at most once per protocol and status every 10 s."""
    level = logging.DEBUG if kind == "health" else logging.ERROR if status >= 500 and status != 503 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    held = REFUSED_LINES.take(f"{protocol} {status}") if refused else 0
    if held is None:
        return
    name = getattr(who, "name", None) or getattr(getattr(who, "identity", None), "name", None)
    access_log.log(level, "%s %s %s %d %.1fms %s%s%s%s", protocol, _field(method, 16), _route(route), status,
                   (time.perf_counter() - t0) * 1e3, _field(peer, 64), f" {_field(name, 128)}" if name else "",
                   f" {note[:MESSAGE_CHARS]!r}" if note else "", f" held_back={held}" if refused else "")


def _route(route: str) -> str:
    """A path as the access line shows it: percent-encoded but for the usual path characters, at most 200."""
    return quote(route[:200], safe=ROUTE_SAFE)


def _field(text: str, limit: int) -> str:
    """A short field of the line (peer, name, method): no blank or control character."""
    return quote(str(text)[:limit], safe=ROUTE_SAFE + "[]")


log_access = _log  # the gRPC side writes the same line
