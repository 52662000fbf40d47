"""An optional API key on the business API (``STORECAST_API_KEY``, from the Secret in the manifests), as a door.

When the key is set, inference calls (REST POSTs to the models, gRPC ``ModelInfer``, CloudEvents alike)
must carry it as ``x-api-key: KEY`` or ``authorization: Bearer KEY``, else they get 401 / UNAUTHENTICATED.
Health, readiness and metadata stay open for probes. Superseded by ``serving.access.door`` (identities,
tiers, rate limits, OIDC; the transformer's default door, which also takes ``STORECAST_API_KEY``);
``--doors transformer.auth:api_key_door`` still installs this one.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from serving.access.hook import Call
from serving.errors import Refused

MESSAGE = "missing or wrong API key: send it as x-api-key or authorization: Bearer"


class ApiKeyDoor:
    """Checks the key in constant time on inference calls."""

    def __init__(self, key: str) -> None:
        self.key = key.encode()

    async def admit(self, call: Call) -> Any:
        if call.kind != "infer":
            return None
        headers = call.headers  # CloudEvents too: no header or body shape skips the check (issue 13)
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.key):
            raise Refused(401, MESSAGE, {"www-authenticate": "Bearer"})
        return None


def api_key_door(settings: Any = None) -> ApiKeyDoor | None:
    """The door when ``STORECAST_API_KEY`` is set (None: no key, no door)."""
    key = os.environ.get("STORECAST_API_KEY")
    return ApiKeyDoor(key) if key else None
