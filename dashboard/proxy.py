"""Forwarding the browser's requests to the business API and the retrain service.

Only the caller's credentials (``x-api-key``, ``authorization``) and a few neutral headers go up;
the answer comes back with its status, body and the headers a planner's page needs (``Retry-After``,
the RateLimit headers, ``WWW-Authenticate``). An upstream that cannot be reached is a 502, one that
does not answer in time a 504, each with a JSON ``error`` naming the service. The pooled client keeps
no cookies (``no_cookies``): a cookie one user's request earned upstream never goes with another's.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.contract import REFRESH_MAX_STORES, RETRAIN_REQUESTED, given_store_ids

UP_HEADERS = ("x-api-key", "authorization", "content-type", "accept", "x-request-id")
DOWN_HEADERS = ("content-type", "retry-after", "ratelimit", "ratelimit-policy", "www-authenticate", "x-request-id")
SOURCE = "storecast.dashboard"


def no_cookies() -> CookieJar:
    """A cookie jar that takes none and sends none: one client serves every user."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class Upstream:
    """One upstream service (a name for error messages, a base URL, a pooled client)."""

    def __init__(self, name: str, base_url: str, timeout: float) -> None:
        self.name, self.base = name, base_url.rstrip("/")
        self.timeout = timeout
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
                                        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                                        cookies=no_cookies(), follow_redirects=False)

    async def send(self, request: Request, method: str, path: str, body: bytes | None = None,
                   extra: dict[str, str] | None = None) -> Response:
        """``method path`` upstream with the caller's credentials; the answer (or a 502/504) downstream."""
        headers = {h: request.headers[h] for h in UP_HEADERS if h in request.headers}
        client = request.client.host if request.client else ""
        forwarded = request.headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{forwarded}, {client}" if forwarded else client
        headers.update(extra or {})
        try:
            r = await self.client.request(method, f"{self.base}{path}", content=body, headers=headers)
        except httpx.TimeoutException:
            return error(504, f"the {self.name} did not answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return error(502, f"the {self.name} is not reachable ({type(exc).__name__})")
        out = {h: r.headers[h] for h in DOWN_HEADERS if h in r.headers}
        return Response(r.content, status_code=r.status_code, headers=out)

    async def close(self) -> None:
        await self.client.aclose()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The dashboard's error body: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def retrain_event(store_ids: list[str], reason: str) -> tuple[dict[str, str], bytes]:
    """A binary-mode CloudEvent ``RETRAIN_REQUESTED`` for these stores."""
    headers = {"ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": SOURCE, "ce-type": RETRAIN_REQUESTED,
               "ce-time": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "content-type": "application/json"}
    return headers, json.dumps({"store_ids": store_ids, "reason": reason}).encode()


def store_ids(payload: Any, most: int = REFRESH_MAX_STORES) -> list[str]:
    """``payload["store_ids"]``: 1 to ``most`` store ids (``serving.contract.given_store_ids``: the store id
    rule); ValueError names the field and the problem."""
    return given_store_ids(payload.get("store_ids") if isinstance(payload, dict) else None, "store_ids", most)
