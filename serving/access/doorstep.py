"""What is refused at the doorstep: before the door (``serving.access.asgi``), before a body is parsed.

``Doorstep(app, max_body=..., limit_name=..., local_only=..., content=...)`` is pure ASGI middleware, put
outermost, for the HTTP services a browser could be made to call (the retrain service, the dashboard):

- **Body size.** A ``Content-Length`` over ``max_body`` is answered 413 naming the limit before a byte of
  the body is read. A body without one (chunked) is counted as the app reads it: past the limit the read
  raises ``BodyTooLarge`` and the answer is 413, whatever the app made of it (an app may answer it
  itself with ``too_large``, so its own access log sees the 413).
- **Cross-site requests.** An ``Origin`` that is not the service's own (the ``Host`` the request was
  sent to; ``Origin: null`` included) is 403: only a page of another site makes a browser send that.
- **DNS rebinding.** With ``local_only`` (an open service, loopback only), a ``Host`` that is not a
  loopback name is 403: a site whose name resolves to 127.0.0.1 is same-origin to the browser, not here.
- **What a form can send.** ``content(method, path, headers)`` may refuse a request by its headers, as
  ``(status, message)``: e.g. a CloudEvents receiver requires ``ce-*`` headers or
  ``application/cloudevents+json`` (``cloudevents_only``), which no page of another site can send
  without a CORS preflight that is never granted.

Every refusal is ``{"error": "..."}`` naming the problem, and costs no parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
Refusal = tuple[int, str]
ContentRule = Callable[[str, str, Mapping[str, str]], Refusal | None]


class BodyTooLarge(Exception):
    """A body that passed the limit while it was read (answered 413)."""

    def __init__(self, limit: int, limit_name: str) -> None:
        super().__init__(f"request body over the limit of {limit} bytes ({limit_name})")
        self.limit, self.limit_name = limit, limit_name


def media_type(headers: Mapping[str, str]) -> str:
    """The ``content-type`` without its parameters, lower-case ('' when there is none)."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def cloudevents_only(method: str, path: str, headers: Mapping[str, str]) -> Refusal | None:
    """A POST must be a CloudEvent by its headers: binary mode (``ce-specversion`` ...) or structured
    (``application/cloudevents+json``); anything else (``text/plain``, a form, bare JSON) is 415."""
    if method != "POST" or "ce-specversion" in headers or media_type(headers) == "application/cloudevents+json":
        return None
    shown = media_type(headers) or "none"
    return 415, (f"content-type {shown[:60]}: a CloudEvent is expected, in binary mode (ce-specversion, ce-type, "
                 "ce-source and ce-id headers) or structured (content-type application/cloudevents+json)")


def foreign(headers: Mapping[str, str], local_only: bool) -> Refusal | None:
    """403 for a request another site's page made the browser send (``Origin``), or, on a loopback-only
    service, a ``Host`` that is not a loopback name."""
    host = headers.get("host", "")
    if local_only and host and _hostname(host) not in LOCAL_NAMES:
        return 403, (f"Host {host[:80]!r}: this service listens on loopback only and answers to localhost, "
                     "127.0.0.1 or [::1] (DNS rebinding refused)")
    origin = headers.get("origin")
    if origin is not None and (not host or urlsplit(origin).netloc.lower() != host.lower()):
        return 403, (f"cross-site request refused: Origin {origin[:80]!r} is not this service's own "
                     f"({host[:80] or 'no Host'})")
    return None


def too_large(exc: BodyTooLarge) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The 413 answer (status, body, headers) of ``exc``."""
    return 413, orjson.dumps({"error": str(exc), "limit": exc.limit}), [(b"connection", b"close")]


def answer_too_large(app: Any) -> None:
    """Let a Starlette / FastAPI ``app`` answer ``BodyTooLarge`` itself (413), so that its middleware (the
    access door's audit line) sees the 413 rather than an error."""
    from starlette.responses import Response

    async def answer(request: Any, exc: BodyTooLarge) -> Response:
        status, body, headers = too_large(exc)
        return Response(body, status, {k.decode(): v.decode() for k, v in headers}, media_type="application/json")

    app.add_exception_handler(BodyTooLarge, answer)


class Doorstep:
    """Pure ASGI middleware: the refusals of the module docstring, before the app sees the request."""

    def __init__(self, app: Any, *, max_body: int, limit_name: str = "the body limit", local_only: bool = False,
                 content: ContentRule | None = None) -> None:
        self.app, self.max_body, self.limit_name = app, max_body, limit_name
        self.local_only, self.content = local_only, content

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        refusal = self._declared(headers.get("content-length")) or foreign(headers, self.local_only)
        if refusal is None and self.content is not None:
            refusal = self.content(scope.get("method", "GET"), scope.get("path", ""), headers)
        if refusal is not None:
            await _answer(send, refusal[0], orjson.dumps({"error": refusal[1]}), [(b"connection", b"close")])
            return
        await self._counted(scope, receive, send)

    def _declared(self, length: str | None) -> Refusal | None:
        if length is None:
            return None
        if not length.strip().isdigit():
            return 400, "content-length: not a whole number of bytes"
        if int(length) > self.max_body:
            return 413, str(BodyTooLarge(self.max_body, self.limit_name))
        return None

    async def _counted(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the app with the body counted as it is read; 413 once it passes the limit."""
        state = {"read": 0, "over": False, "started": False, "dropping": False}

        async def counted() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_body:
                    state["over"] = True
                    raise BodyTooLarge(self.max_body, self.limit_name)
            return message

        async def guarded(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if state["over"] and message["status"] != 413:  # the app's answer to a body it never got whole
                    state["dropping"] = True
                    return
                state["started"] = True
            elif state["dropping"]:
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _answer(send, *too_large(BodyTooLarge(self.max_body, self.limit_name)))


def _hostname(host: str) -> str:
    """``host[:port]`` / ``[v6]:port`` without the port, lower-case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.index("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _answer(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
