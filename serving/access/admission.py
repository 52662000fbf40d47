"""Access at the door: who is calling (API key, OIDC token or anonymous), may they, and how much.

Framework-neutral: the serving layer's door (``serving.access.door``, REST and gRPC), the ASGI middleware
(``serving.access.asgi``), or any server, call
``await access.admit(headers, peer, route=..., protocol=..., permission=...)`` before any work and
``admission.finish(status, rows)`` after it. ``admit`` raises an ``AccessError`` (401 ``Unauthenticated``,
403 ``Forbidden``, 429 ``RateLimited`` / ``ConcurrencyLimited``) that carries its HTTP status, headers
and body and its gRPC status and trailing metadata; it has already been audited.

Credentials: ``x-api-key: KEY`` or ``authorization: Bearer KEY``; a Bearer value that is a JWT takes the
OIDC path (``serving.access.oidc``). A credential that is present but wrong is refused (401): it never falls back
to anonymous. Its size is checked first, on the raw header, before any other work (no hashing, base64 or JSON):
a key of more than ``MAX_KEY`` characters, a token of more than ``MAX_TOKEN`` or an ``authorization`` header
longer than a Bearer token can be is 401 at once. Headers are read from a mapping with lower-case names, as
ASGI and gRPC give them. Keys are compared by SHA-256 digest against every identity in constant time; they
are never stored or logged.

Addresses: ``Identity.peer`` is the socket's; ``Identity.forwarded`` the client address a trusted proxy named in
``x-forwarded-for`` (``--trusted-proxies``; None otherwise). Anonymous budgets key on the latter when there is
one. The audit line records both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from serving.access import audit
from serving.access.auth_file import ADMIN, ANONYMOUS, AuthConfig, AuthFileWatcher, IdentityEntry, Tier, open_config
from serving.access.oidc import InvalidToken, OIDCVerifier, looks_like_jwt
from serving.access.ratelimit import Bulkhead, Decision, RateLimiter

MAX_KEY = 512  # characters of an API key; a longer one is refused before hashing
MAX_TOKEN = 8192  # characters of an OIDC token (a Kubernetes service-account token is about 1,000)
MAX_AUTHORIZATION = MAX_TOKEN + 16  # "Bearer " and some blanks


@dataclass(frozen=True)
class Identity:
    """An authenticated caller (or the anonymous one at ``peer``)."""

    name: str
    tier: Tier
    via: str  # "key", "oidc" or "anonymous"
    peer: str = ""  # the socket's address
    subject: str | None = None
    forwarded: str | None = None  # the client's address as a trusted proxy named it

    @property
    def client(self) -> str:
        """The caller's address: the one a trusted proxy forwarded, else the socket's."""
        return self.forwarded or self.peer

    @property
    def limit_key(self) -> str:
        """Whose budget a request spends: the identity's, or the client address's for anonymous callers."""
        return f"addr:{self.client}" if self.via == "anonymous" else f"id:{self.name}"

    def can(self, permission: str) -> bool:
        return permission in self.tier.permissions

    def require(self, permission: str) -> None:
        """Raise ``Forbidden`` unless the identity's tier grants ``permission``."""
        if permission not in self.tier.permissions:
            who = "anonymous callers" if self.via == "anonymous" else f"{self.name!r} (tier {self.tier.name})"
            raise Forbidden(f"{who} may not {permission}; "
                            f"allowed: {', '.join(sorted(self.tier.permissions)) or 'nothing'}", self)


class AccessError(Exception):
    """A refusal, with everything a REST or gRPC server needs to send it; ``reason`` is its code (a label of
    ``storecast_access_refusals_total``, the key of its sampled audit line: a small fixed set)."""

    status = 400
    grpc_code = "INVALID_ARGUMENT"  # a grpc.StatusCode name
    outcome = "client_error"

    def __init__(self, message: str, identity: Identity | None = None, decision: Decision | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.message, self.identity, self.decision = message, identity, decision
        self.reason = reason or self.outcome

    def http_headers(self) -> list[tuple[str, str]]:
        out = [("content-type", "application/json")]
        return out + (self.decision.headers() if self.decision is not None else [])

    def body(self) -> bytes:
        return orjson.dumps({"error": self.message})

    def grpc_trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.decision.grpc_metadata() if self.decision is not None else ()


class Unauthenticated(AccessError):
    status, grpc_code, outcome = 401, "UNAUTHENTICATED", "unauthenticated"

    def http_headers(self) -> list[tuple[str, str]]:
        return [*super().http_headers(), ("www-authenticate", 'Bearer realm="storecast"')]


class Forbidden(AccessError):
    status, grpc_code, outcome = 403, "PERMISSION_DENIED", "forbidden"


class RateLimited(AccessError):
    status, grpc_code, outcome = 429, "RESOURCE_EXHAUSTED", "rate_limited"


class ConcurrencyLimited(RateLimited):
    outcome = "concurrency_limited"

    def http_headers(self) -> list[tuple[str, str]]:
        return [*super().http_headers(), ("Retry-After", "1")]

    def grpc_trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (*super().grpc_trailing_metadata(), ("retry-after", "1"), ("grpc-retry-pushback-ms", "1000"))


def peer_address(peer: str | tuple | None) -> str:
    """The bare address of a peer: an ASGI ``client`` tuple, ``host:port`` / ``[v6]:port``, or a gRPC
    ``context.peer()`` (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``). The port never counts: one address, one budget."""
    if peer is None or peer == "":
        return "-"
    if isinstance(peer, tuple):
        return str(peer[0])
    text = peer
    for prefix in ("ipv4:", "ipv6:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if text.startswith("["):
        return text[1:text.index("]")] if "]" in text else text
    if text.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
        return text.rsplit(":", 1)[0]
    return text


class Admission:
    """An admitted request: its identity and rate-limit headers; ``finish`` releases and audits it."""

    __slots__ = ("_access", "_box", "_done", "_token", "decision", "identity", "protocol", "route", "started")

    def __init__(self, access: Access, identity: Identity, decision: Decision | None, route: str, protocol: str,
                 started: float) -> None:
        self._access, self.identity, self.decision = access, identity, decision
        self.route, self.protocol, self.started = route, protocol, started
        self._box, self._token = audit.start_rows()
        self._done = False

    def headers(self) -> list[tuple[str, str]]:
        """RateLimit-Policy / RateLimit for the response (empty when the tier has no rate limit)."""
        return self.decision.headers() if self.decision is not None else []

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.decision.grpc_metadata() if self.decision is not None else ()

    def require(self, permission: str) -> None:
        """A permission known only after reading the request (e.g. the retrain event's type)."""
        try:
            self.identity.require(permission)
        except Forbidden:
            self.finish(Forbidden.status, outcome=Forbidden.outcome)
            raise

    def note_rows(self, n: int) -> None:
        self._box[0] += int(n)

    def finish(self, status: int, rows: int | None = None, outcome: str | None = None) -> None:
        """Release the concurrency slot and write the audit line (once)."""
        if self._done:
            return
        self._done = True
        self._access.bulkhead.leave(self.identity.limit_key)
        audit.reset_rows(self._token)
        i = self.identity
        audit.record(identity=i.name, tier=i.tier.name, via=i.via, route=self.route, protocol=self.protocol,
                     status=status, outcome=outcome or audit.outcome_of(status),
                     rows=self._box[0] if rows is None else rows, latency_s=time.perf_counter() - self.started,
                     peer=i.peer, forwarded=i.forwarded, subject=i.subject, sampler=self._access.refusal_lines)


class Access:
    """Authentication, permissions, rate limits and the bulkhead, over one (reloading) auth file."""

    def __init__(self, config: AuthConfig | AuthFileWatcher | None = None, *, limiter: RateLimiter | None = None,
                 oidc: OIDCVerifier | None = None, trusted_proxies: str | Sequence[str] = (),
                 concurrency_wait: float = 0.5) -> None:
        self.watcher = config if isinstance(config, AuthFileWatcher) else None
        self._static = open_config() if config is None else (config if isinstance(config, AuthConfig) else None)
        self.limiter = limiter or RateLimiter()
        self.bulkhead = Bulkhead()
        self.oidc = oidc
        self.trusted_proxies = parse_networks(trusted_proxies)
        self.concurrency_wait = concurrency_wait  # seconds a request over its identity's concurrency waits
        self.refusal_lines = audit.Sampler()  # refusals: one audit line per reason every 10 s, all counted
        self._keys_for: AuthConfig | None = None
        self._keys: tuple[tuple[bytes, IdentityEntry], ...] = ()

    @property
    def config(self) -> AuthConfig:
        return self.watcher.config if self.watcher is not None else self._static  # type: ignore[return-value]

    @property
    def open(self) -> bool:
        """True without an auth file: everyone is anonymous with every permission (loopback development)."""
        return self.watcher is None and self._static is not None and self._static.source.startswith("no --auth")

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    # -- who is calling

    def addresses(self, headers: Mapping[str, str], peer: str | tuple | None) -> tuple[str, str | None]:
        """(the socket's address, the client's as a trusted proxy forwarded it or None). Only when the socket's
        address is a trusted proxy (``--trusted-proxies``; none by default) is ``x-forwarded-for`` read: its
        right-most entry that is not a trusted proxy (entries left of it are the client's to forge)."""
        address = peer_address(peer)
        if not self.trusted_proxies or not _within(address, self.trusted_proxies):
            return address, None
        forwarded = headers.get("x-forwarded-for")
        if not forwarded or len(forwarded) > 4096:
            return address, None
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not _within(hop, self.trusted_proxies):
                return address, hop if _address(hop) else None
        return address, None

    def client_address(self, headers: Mapping[str, str], peer: str | tuple | None) -> str:
        """The caller's address: the one a trusted proxy forwarded (``addresses``), else the socket's."""
        address, forwarded = self.addresses(headers, peer)
        return forwarded or address

    def _credential(self, headers: Mapping[str, str]) -> str | None:
        """The key or token a request carries (None: none); its size checked before anything else."""
        key = headers.get("x-api-key")
        if key is not None:
            if len(key) > MAX_KEY + 2:  # the raw header: a key and a blank either side at most
                raise Unauthenticated(f"the API key is longer than {MAX_KEY} characters", reason="oversized")
        else:
            auth = headers.get("authorization")
            if auth is None:
                return None
            if len(auth) > MAX_AUTHORIZATION:
                raise Unauthenticated(f"the authorization header is longer than {MAX_AUTHORIZATION} characters "
                                      f"(a token may have {MAX_TOKEN}, a key {MAX_KEY})", reason="oversized")
            scheme, _, key = auth.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated("authorization: only the Bearer scheme is accepted; send "  # never echo it
                                      "'authorization: Bearer KEY' or x-api-key: KEY", reason="bad_scheme")
        key = key.strip()
        if not key:
            raise Unauthenticated("the API key is empty; send x-api-key: KEY or authorization: Bearer KEY",
                                  reason="empty_credential")
        if len(key) > MAX_KEY and not (len(key) <= MAX_TOKEN and looks_like_jwt(key)):
            raise Unauthenticated(f"the API key is longer than {MAX_KEY} characters", reason="oversized")
        return key

    def _key_table(self, config: AuthConfig) -> tuple[tuple[bytes, IdentityEntry], ...]:
        if self._keys_for is not config:
            self._keys = tuple((h, e) for e in config.identities for h in e.key_sha256)
            self._keys_for = config
        return self._keys

    def _by_key(self, key: str, config: AuthConfig, where: tuple[str, str | None]) -> Identity:
        digest = hashlib.sha256(key.encode()).digest()
        found: IdentityEntry | None = None
        for h, entry in self._key_table(config):  # every entry, no early exit: the time does not depend on a match
            if hmac.compare_digest(digest, h):
                found = entry
        if found is None:
            raise Unauthenticated("unknown API key", reason="unknown_key")
        return Identity(found.name, config.tier_of(found), "key", where[0], forwarded=where[1])

    def _by_claims(self, claims: Mapping, config: AuthConfig, where: tuple[str, str | None]) -> Identity:
        sub = str(claims.get("sub", ""))
        entry = config.by_subject.get(sub)
        if entry is None:
            raise Forbidden(f"the OIDC subject {sub!r} is not an identity of the auth file", reason="unknown_subject")
        return Identity(entry.name, config.tier_of(entry), "oidc", where[0], subject=sub, forwarded=where[1])

    def _anonymous(self, config: AuthConfig, where: tuple[str, str | None]) -> Identity:
        tier = config.anonymous
        if tier is None:
            raise Unauthenticated("credentials required: send x-api-key: KEY or authorization: Bearer KEY",
                                  reason="no_credentials")
        return Identity(ANONYMOUS, tier, "anonymous", where[0], forwarded=where[1])

    def authenticate(self, headers: Mapping[str, str], peer: str | tuple | None = None) -> Identity:
        """The caller of a request; ``Unauthenticated`` / ``Forbidden`` otherwise. May fetch the issuer's
        JWKS (with a timeout) for a token signed by a new key; ``admit`` does that off the event loop."""
        config, where = self.config, self.addresses(headers, peer)
        if self.open:
            return self._anonymous(config, where)
        key = self._credential(headers)
        if key is None:
            return self._anonymous(config, where)
        if looks_like_jwt(key):
            return self._by_claims(self._verify(key), config, where)
        return self._by_key(key, config, where)

    def _verify(self, token: str) -> Mapping:
        if self.oidc is None:
            raise Unauthenticated("OIDC tokens are not accepted here (no --oidc-issuer); send an API key",
                                  reason="oidc_off")
        try:
            return self.oidc.verify(token)
        except InvalidToken as exc:
            raise Unauthenticated(f"OIDC token refused: {exc}", reason="invalid_token") from None

    async def _authenticate(self, headers: Mapping[str, str], peer: str | tuple | None) -> Identity:
        if not self.open and self.oidc is not None:
            key = self._credential(headers)
            if key is not None and looks_like_jwt(key) and self.oidc.cached(key) is None:
                claims = await asyncio.to_thread(self._verify, key)  # signature check, maybe a JWKS fetch
                return self._by_claims(claims, self.config, self.addresses(headers, peer))
        return self.authenticate(headers, peer)

    # -- the door

    async def admit(self, headers: Mapping[str, str], peer: str | tuple | None, *, route: str, protocol: str,
                    permission: str | None = None) -> Admission:
        """Authenticate, check ``permission`` (if known yet), count a rate-limit hit, take a concurrency slot
        (waiting up to ``concurrency_wait`` for one of this identity's)."""
        started = time.perf_counter()
        identity: Identity | None = None
        try:
            identity = await self._authenticate(headers, peer)
            if permission == ADMIN and self.open:
                raise Forbidden(f"{route[:80]}: the model repository needs an identity with the admin permission "
                                "(an auth file: --auth-file); this server runs open, for loopback use, without one",
                                identity, reason="forbidden")
            if permission is not None:
                identity.require(permission)
            key, tier = identity.limit_key, identity.tier
            decision = await self.limiter.hit(key, tier)
            if decision is not None and not decision.allowed:
                raise RateLimited(f"rate limit of tier {tier.name} reached ({decision.quota} requests per "
                                  f"{decision.window} s for {_who(identity)}); retry after {decision.retry_after} s",
                                  identity, decision, reason="rate_limited")
            if not await self.bulkhead.enter(key, tier.concurrent, self.concurrency_wait):
                raise ConcurrencyLimited(f"{_who(identity)} already has {tier.concurrent} requests in flight "
                                         f"(tier {tier.name}); retry after one finishes", identity)
        except AccessError as exc:
            who = exc.identity or identity
            address, forwarded = (who.peer, who.forwarded) if who else self.addresses(headers, peer)
            audit.record(identity=who.name if who else "-", tier=who.tier.name if who else "-",
                         via=who.via if who else "-", route=route, protocol=protocol, status=exc.status,
                         outcome=exc.outcome, latency_s=time.perf_counter() - started, peer=address,
                         forwarded=forwarded, subject=who.subject if who else None, reason=exc.message,
                         refusal=exc.reason, sampler=self.refusal_lines)
            raise
        return Admission(self, identity, decision, route, protocol, started)


def parse_networks(spec: str | Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs from ``"10.0.0.0/8,127.0.0.1"`` or a list; ``ValueError`` naming a bad one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in (i.strip() for i in items):
        if item:
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"--trusted-proxies: {item!r} is not an address or CIDR") from None
    return tuple(out)


def _address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def _who(identity: Identity) -> str:
    return f"the address {identity.client}" if identity.via == "anonymous" else repr(identity.name)
