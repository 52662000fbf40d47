"""An optional API key on the business API (``STORECAST_API_KEY``, from the Secret in the manifests).

When the key is set, inference requests (POST under ``/v1/models`` or ``/v2/models``) must carry it as
``x-api-key: KEY`` or ``authorization: Bearer KEY``, else they get 401. CloudEvents (``ce-*`` headers
or a structured ``application/cloudevents+json`` body) are the Knative Broker's deliveries, which
cannot carry a key; the NetworkPolicy of the manifests is what admits them, and they can only ask
for forecasts. Health, readiness and metadata stay open for probes.
"""

from __future__ import annotations

import hmac
from typing import Any

PREFIXES = (b"/v1/models", b"/v2/models")
BODY = b'{"error":"missing or wrong API key: send it as x-api-key or authorization: Bearer"}'


class ApiKey:
    """Pure ASGI middleware checking the key in constant time."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    def _allowed(self, headers: dict[bytes, bytes]) -> bool:
        if b"ce-id" in headers or headers.get(b"content-type", b"").startswith(b"application/cloudevents"):
            return True
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
        return hmac.compare_digest(given, self.key)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope.get("method") == "POST"
                and scope.get("raw_path", scope.get("path", "").encode()).startswith(PREFIXES)
                and not self._allowed(dict(scope.get("headers", [])))):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": BODY})
            return
        await self.app(scope, receive, send)


def install(key: str | None) -> None:
    """Guard KServe's app with the key, if one is set."""
    if key:
        from kserve import model_server

        model_server.app.add_middleware(ApiKey, key=key)
