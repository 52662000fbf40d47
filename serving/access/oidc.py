"""OIDC bearer tokens (Knative Eventing's sender identity, feature ``authentication-oidc``).

With ``authentication-oidc`` enabled, the Broker delivers each event with ``Authorization: Bearer
<JWT>``: a Kubernetes service-account token of the Trigger's OIDC service account, issued by the
cluster for the subscriber's audience. ``OIDCVerifier.verify(token)`` checks the signature against
the issuer's JWKS (fetched with a timeout, cached, refreshed when a token names an unknown key id,
at most once per ``min_refresh`` seconds so made-up key ids cannot make us hammer the issuer), the
algorithm (asymmetric only; never ``none`` or HMAC), ``iss``, ``aud`` and ``exp``, and returns the
claims; ``sub`` (``system:serviceaccount:NS:NAME``) is then looked up in the auth file. Verified
tokens are cached until they expire, so a redelivered token costs a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt

log = logging.getLogger("storecast.auth")
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY = 30  # seconds of clock skew tolerated on exp / nbf / iat
CACHE_MAX = 1024


class InvalidToken(Exception):
    """The token cannot be accepted; the message says why (never the token itself)."""


def looks_like_jwt(value: str) -> bool:
    """A compact JWS (three base64url parts). API keys made by ``storecast auth add-key`` have no dots."""
    return value.count(".") == 2 and value.startswith("eyJ")


class JWKS:
    """The issuer's signing keys, fetched over HTTP(S) with a timeout and cached."""

    def __init__(self, url: str, timeout: float = 3.0, lifespan: float = 300.0, min_refresh: float = 5.0,
                 ca_file: str | None = None, token_file: str | None = None) -> None:
        self.url, self.timeout, self.lifespan, self.min_refresh = url, timeout, lifespan, min_refresh
        self.ca_file, self.token_file = ca_file, token_file
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0  # monotonic time of the last fetch attempt
        self._loaded = 0.0  # monotonic time of the last successful fetch
        self._lock = threading.Lock()
        self.fetches = 0

    def _get(self) -> dict[str, Any]:
        headers = {"accept": "application/json"}
        if self.token_file:  # e.g. the API server's /openid/v1/jwks wants a service-account token
            headers["authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        handlers: list[Any] = [urllib.request.ProxyHandler({})]  # straight to the issuer, no proxy
        if self.url.startswith("https"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=self.ca_file)))
        opener = urllib.request.build_opener(*handlers)
        with opener.open(urllib.request.Request(self.url, headers=headers), timeout=self.timeout) as resp:
            return json.loads(resp.read(1 << 20))

    def refresh(self, force: bool = False) -> None:
        """Fetch the key set (unless fetched less than ``min_refresh`` seconds ago)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._fetched < self.min_refresh:
                return
            self._fetched = now
            self.fetches += 1
            try:
                data = self._get()
                keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(data).keys if k.key_id}
            except Exception as exc:
                log.warning("OIDC: cannot fetch the JWKS from %s: %s", self.url, exc)
                raise InvalidToken(f"the issuer's keys cannot be fetched ({type(exc).__name__})") from None
            self._keys, self._loaded = keys, now

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names (fetching the set when the id is new or the set is old)."""
        if kid not in self._keys or time.monotonic() - self._loaded > self.lifespan:
            try:
                self.refresh()
            except InvalidToken:
                if kid not in self._keys:  # the issuer is down: known keys stay usable
                    raise
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        found = self._keys.get(kid) if kid is not None else None
        if found is None:
            raise InvalidToken(f"signed with an unknown key id {kid!r}")
        return found


class OIDCVerifier:
    """Verify OIDC bearer tokens of one issuer for our audience(s)."""

    def __init__(self, issuer: str, audiences: list[str] | tuple[str, ...], jwks_url: str | None = None,
                 timeout: float = 3.0, ca_file: str | None = None, token_file: str | None = None,
                 min_refresh: float = 5.0) -> None:
        if not issuer:
            raise ValueError("--oidc-issuer: required for OIDC tokens")
        if not audiences:
            raise ValueError("--oidc-audience: give the audience the Triggers request (subscriber.audience)")
        self.issuer, self.audiences = issuer, list(audiences)
        self.timeout, self.ca_file, self.token_file = timeout, ca_file, token_file
        self.min_refresh = min_refresh
        self._jwks_url = jwks_url
        self._jwks: JWKS | None = None
        self._cache: dict[bytes, dict[str, Any]] = {}

    @property
    def jwks(self) -> JWKS:
        if self._jwks is None:
            self._jwks = JWKS(self._jwks_url or self._discover(), timeout=self.timeout, ca_file=self.ca_file,
                              token_file=self.token_file, min_refresh=self.min_refresh)
        return self._jwks

    def _discover(self) -> str:
        """``jwks_uri`` from the issuer's ``/.well-known/openid-configuration``."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            doc = JWKS(url, timeout=self.timeout, ca_file=self.ca_file, token_file=self.token_file)._get()
            return str(doc["jwks_uri"])
        except Exception as exc:
            raise InvalidToken(f"OIDC discovery at {url} failed ({type(exc).__name__}); "
                               "set --oidc-jwks-url") from None

    def cached(self, token: str) -> dict[str, Any] | None:
        """The claims of a token verified before and not expired yet (no signature check, no I/O)."""
        found = self._cache.get(hashlib.sha256(token.encode()).digest())
        return found if found is not None and found["exp"] + LEEWAY > time.time() else None

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; ``InvalidToken`` saying what is wrong otherwise."""
        cached = self.cached(token)
        if cached is not None:
            return cached
        digest = hashlib.sha256(token.encode()).digest()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {alg!r} is not accepted (asymmetric signatures only)")
        key = self.jwks.key(header.get("kid"))
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=self.audiences, issuer=self.issuer,
                                leeway=LEEWAY, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"the token is not for this audience (expected {' or '.join(self.audiences)})") \
                from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(f"the token is not from the issuer {self.issuer}") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        if len(self._cache) >= CACHE_MAX:
            now = time.time()
            self._cache = {k: v for k, v in self._cache.items() if v["exp"] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[digest] = claims
        return claims
