"""Load shedding for a KServe ModelServer: bounded in-flight inference requests, then 503 + Retry-After.

Past capacity a server that queues without bound answers everything late, and clients time out and
retry into the queue ("self-denial of service"). Knative's ``containerConcurrency`` bounds the
requests a pod takes; this does the same inside the process, so the local stack and any plain
deployment behave alike: at most ``limit`` inference requests (POST under ``/v1/models`` or
``/v2/models``) run at once, and the next ones are answered at once with 503 and ``Retry-After``.
Health, readiness and metadata (GET) are never shed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
PREFIXES = ("/v1/models", "/v2/models")


class LoadShedder:
    """Pure ASGI middleware: counts inference requests in flight and rejects past ``limit``."""

    def __init__(self, app: ASGIApp, limit: int, retry_after: int = 1) -> None:
        self.app, self.limit, self.inflight, self.shed = app, limit, 0, 0
        self._body = (b'{"error":"overloaded: %d inference requests in flight, the limit; retry after %d s"}'
                      % (limit, retry_after))
        self._headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry_after).encode()),
                         (b"content-length", str(len(self._body)).encode())]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (self.limit <= 0 or scope["type"] != "http" or scope.get("method") != "POST"
                or not scope.get("path", "").startswith(PREFIXES)):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self.shed += 1
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def install(limit: int, retry_after: int = 1) -> None:
    """Put the shedder in front of KServe's FastAPI app (before ``ModelServer.start``).

    It wraps the whole middleware stack, outside KServe's timing middleware and its per-request log
    lines, so a shed request costs as little as possible.
    """
    if limit <= 0:
        return
    from kserve import model_server

    app = model_server.app
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: LoadShedder(build(), limit=limit, retry_after=retry_after)
