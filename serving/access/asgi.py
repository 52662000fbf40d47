"""The access check as pure ASGI middleware (KServe's FastAPI app, the retrain service, any ASGI app).

``AccessMiddleware(app, access, rules)``: ``rules(method, path)`` says what a request needs: ``OPEN``
(liveness / readiness probes and ``/metrics`` only), a permission (``"forecast"``, ...), or ``None``
(authenticated; the handler checks the permission once it has read the request, with
``admission_of(request).require(...)``). ``guard(app, access, rules)`` returns the app to serve: the
middleware outermost, and on a Starlette / FastAPI app a handler answering an ``AccessError`` raised
by a route with its status, headers and body. Everything not matched exactly is checked:
nothing about a request's headers (``ce-*``), body or content type skips it. Refusals are answered
before the app sees the request; admitted responses carry the ``RateLimit-Policy`` / ``RateLimit`` headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from serving.access.admission import Access, AccessError, Admission, Forbidden
from serving.access.hook import combined
from serving.contract import REFRESH_MAX_STORES  # a refresh of more named stores is a fleet-wide retrain

OPEN = "open"
PROBES = frozenset({"/", "/healthz", "/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/v2", "/metrics"})
MODEL_READY = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/ready|/v1/models/[^/:]+")
WANTED = frozenset({b"x-api-key", b"authorization", b"x-forwarded-for"})  # the headers access reads


def is_probe(method: str, path: str) -> bool:
    """Health, readiness (server and model) and metrics: open to kubelet probes and Prometheus."""
    return method in ("GET", "HEAD") and (path in PROBES or MODEL_READY.fullmatch(path) is not None)


def inference_rules(method: str, path: str) -> str | None:
    """Predictor and transformer: probes are open, every other request needs ``forecast``."""
    return OPEN if is_probe(method, path) else "forecast"


def retrain_rules(method: str, path: str) -> str | None:
    """The retrain service: ``/healthz`` and ``/metrics`` open, job views need ``refresh``, events are checked
    by type (``retrain_permission``) once read."""
    if method in ("GET", "HEAD") and path in ("/healthz", "/metrics"):
        return OPEN
    if method == "POST" and path == "/":
        return None
    return "refresh"


def retrain_permission(store_ids: list | None) -> str:
    """``refresh`` for at most ``REFRESH_MAX_STORES`` named stores, ``retrain`` for a fleet-wide retrain (a ping,
    or more stores)."""
    return "refresh" if store_ids and len(store_ids) <= REFRESH_MAX_STORES else "retrain"


def require_permission(request: Any, permission: str | None) -> None:
    """For a route that knows its permission only once it has read the request: ``Forbidden`` (answered
    403 by ``guard``'s handler) unless the caller the middleware admitted has it; None: nothing to check."""
    if permission is None:
        return
    admission = admission_of(request)
    if admission is None:  # a route the rules left open asks for a permission: nobody was admitted
        raise Forbidden(f"{permission}: this route is open, it cannot grant {permission}")
    admission.require(permission)


def access_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers access reads (``WANTED``), lower-case; a header sent twice is one value, joined with ", "
    as HTTP combines fields: two keys are no key (401), never the last one sent."""
    return combined((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() in WANTED)


def admission_of(scope_or_request: Any) -> Admission | None:
    """The admission of a request (an ASGI scope, or a Starlette/FastAPI request)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    return scope.get("state", {}).get("storecast_admission")


class AccessMiddleware:
    """Pure ASGI middleware: admit (or refuse) every HTTP request before the app runs."""

    def __init__(self, app: Any, access: Access, rules: Callable[[str, str], str | None] = inference_rules,
                 protocol: str = "rest") -> None:
        self.app, self.access, self.rules, self.protocol = app, access, rules, protocol

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        rule = self.rules(method, path) if kind == "http" else None
        if rule == OPEN:
            await self.app(scope, receive, send)
            return
        headers = access_headers(scope.get("headers", ()))
        try:
            admission = await self.access.admit(headers, scope.get("client"), route=path, protocol=self.protocol,
                                                permission=rule)
        except AccessError as exc:
            await _refuse(exc, kind, send)
            return
        scope.setdefault("state", {})["storecast_admission"] = admission
        status = [0]  # 0 until the response starts
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in admission.headers()]

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except AccessError as exc:  # a permission the handler checked later (already audited)
            if not status[0]:
                await _refuse(exc, kind, send)
        finally:
            admission.finish(status[0] or 500)


def guard(app: Any, access: Access, rules: Callable[[str, str], str | None] = inference_rules,
          protocol: str = "rest") -> AccessMiddleware:
    """The ASGI app to serve: ``app`` behind the access check, outermost (a refusal costs no framework
    work). On a Starlette / FastAPI app (KServe's included) an ``AccessError`` a route raises after
    reading the request (``admission_of(request).require(...)``) is answered with its status, headers
    and body."""
    if hasattr(app, "add_exception_handler"):
        from starlette.responses import Response

        async def answer(request: Any, exc: AccessError) -> Response:
            headers = {k: v for k, v in exc.http_headers() if k.lower() != "content-type"}
            return Response(exc.body(), status_code=exc.status, headers=headers, media_type="application/json")

        app.add_exception_handler(AccessError, answer)
    return AccessMiddleware(app, access, rules, protocol)


async def _refuse(exc: AccessError, kind: str, send: Any) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
        return
    body = exc.body()
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.http_headers()]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
