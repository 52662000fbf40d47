"""The caller of a request known from its headers alone, and a pre-built 429 for a caller over its rate limit.

The door (``serving.access.door``) authenticates, counts the rate limit and audits every call, but it runs
inside the ASGI stack (REST) or after the interceptor's set-up (gRPC): a refusal there costs a task, the
middleware and an audit call, and a caller flooding at ten times its limit makes the event loop pay that
900 times a second. :class:`FastGate` answers the two questions the protocol needs before any of that:

- ``key_of`` names whose budget a request spends (``id:NAME``, ``addr:ADDRESS`` for anonymous callers, or
  ``?`` when it cannot tell cheaply: an unknown key, a token not verified before, a malformed header; the door
  decides those). An API key is found by its SHA-256 digest in a table of the auth file's digests (a digest
  reveals nothing of the key, so the dict lookup needs no constant-time loop); a bearer token by the OIDC
  verifier's cache of tokens verified before (no signature check). Nothing of a key is kept;
- ``refusal(key)``: when the door refused that caller for its rate limit (``note``) and the moving window has
  not freed a slot yet (the time the limiter said), the pre-built 429 (``Retry-After``, ``RateLimit-Policy``,
  ``RateLimit``) to write as is. While the window is full every request of the caller would be refused, so
  answering them from the protocol refuses exactly what the door would, and counts them the same way
  (``storecast_access_requests_total``, ``storecast_access_refusals_total``); their audit lines are the
  sampled ones the door writes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from serving.access.admission import MAX_AUTHORIZATION, MAX_KEY, MAX_TOKEN, Access, Identity, peer_address
from serving.access.audit import REFUSALS, REQUESTS
from serving.access.oidc import looks_like_jwt
from serving.access.ratelimit import Decision

UNKNOWN = "?"  # the key of a caller the gate cannot name cheaply (the door decides)
LOG_EVERY = 10.0  # seconds between "refused at the protocol" log lines
log = logging.getLogger("storecast.auth")


@dataclass(frozen=True)
class Boxed:
    """A caller refused for its rate limit until ``until`` (monotonic), and its answer."""

    until: float
    http_tail: bytes  # headers after the status line and the server's default headers, the blank line, the body
    message: str
    grpc_metadata: tuple[tuple[str, str], ...]
    tier: str



class FastGate:
    """Callers named from raw headers; the callers over their rate limit until their window frees a slot."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self._table_for: Any = None
        self._table: dict[bytes, str] = {}
        self._boxed: dict[str, Boxed] = {}
        self.refused = 0  # requests answered by the gate (tests, log)
        self._logged_at, self._logged = time.monotonic(), 0

    # -- who

    def _names(self) -> dict[bytes, str]:
        config = self.access.config
        if self._table_for is not config:
            self._table = {h: f"id:{e.name}" for e in config.identities for h in e.key_sha256}
            self._table_for = config
        return self._table

    def key_of(self, headers: Mapping[str, str], peer: Any) -> str:
        """Whose budget the request spends (``Identity.limit_key``), or ``UNKNOWN``."""
        access = self.access
        key, auth = headers.get("x-api-key"), headers.get("authorization")
        if (key is None and auth is None) or access.open:
            if access.config.anonymous is None:
                return UNKNOWN
            return "addr:" + (access.client_address(headers, peer) if access.trusted_proxies else peer_address(peer))
        if key is not None:
            if len(key) > MAX_KEY + 2 or "," in key:
                return UNKNOWN
        else:
            if len(auth) > MAX_AUTHORIZATION:  # type: ignore[arg-type]
                return UNKNOWN
            scheme, _, key = auth.strip().partition(" ")  # type: ignore[union-attr]
            if scheme.lower() != "bearer":
                return UNKNOWN
        key = key.strip()
        if not key or len(key) > MAX_TOKEN:
            return UNKNOWN
        if looks_like_jwt(key):
            claims = access.oidc.cached(key) if access.oidc is not None else None
            entry = access.config.by_subject.get(str(claims.get("sub", ""))) if claims else None
            return f"id:{entry.name}" if entry is not None else UNKNOWN
        if len(key) > MAX_KEY:
            return UNKNOWN
        return self._names().get(hashlib.sha256(key.encode()).digest(), UNKNOWN)

    def key_of_raw(self, headers: list[tuple[bytes, bytes]], client: Any) -> str:
        """``key_of`` for the parser's raw header list (lower-case names), reading only what it needs."""
        wanted: dict[str, str] = {}
        for name, value in headers:
            if name in (b"x-api-key", b"authorization", b"x-forwarded-for"):
                text = value.decode("latin-1")
                label = name.decode()
                wanted[label] = f"{wanted[label]}, {text}" if label in wanted else text
        return self.key_of(wanted, client)

    # -- refused for the rate limit

    def note(self, identity: Identity | None, decision: Decision | None, message: str) -> None:
        """The door refused ``identity`` for its rate limit: refuse it here until the window frees a slot."""
        if identity is None or decision is None or decision.allowed or decision.reset <= 0:
            return
        body = orjson.dumps({"error": message})
        headers = [("content-type", "application/json"), *((k.lower(), v) for k, v in decision.headers()),
                   ("content-length", str(len(body)))]
        tail = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1") + b"\r\n" + body
        self._boxed[identity.limit_key] = Boxed(time.monotonic() + decision.reset, tail, message,
                                                decision.grpc_metadata(), identity.tier.name)
        if len(self._boxed) > 4096:  # callers of long ago
            now = time.monotonic()
            for key in [k for k, b in self._boxed.items() if b.until <= now]:
                del self._boxed[key]

    def refusal(self, key: str, protocol: str = "rest") -> Boxed | None:
        """The pre-built refusal of ``key`` while its window is full (counted as the door counts it), else None."""
        boxed = self._boxed.get(key)
        if boxed is None:
            return None
        now = time.monotonic()
        if now >= boxed.until:
            del self._boxed[key]
            return None
        REQUESTS.labels(boxed.tier, "rate_limited", protocol).inc()
        REFUSALS.labels("rate_limited", protocol).inc()
        self.refused += 1
        if now - self._logged_at >= LOG_EVERY:
            log.info("refused %d requests of callers over their rate limit at the protocol (429) in the last %.0f s",
                     self.refused - self._logged, now - self._logged_at)
            self._logged_at, self._logged = now, self.refused
        return boxed


def gate_of(doors: Any) -> FastGate | None:
    """The gate of the first door that has one (``serving.access.door.AccessDoor``), else None."""
    for door in getattr(doors, "doors", ()) or ():
        gate = getattr(door, "gate", None)
        if isinstance(gate, FastGate):
            return gate
    return None
