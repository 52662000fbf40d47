"""OIDC bearer tokens (Knative Eventing's sender identity, feature ``authentication-oidc``).

With ``authentication-oidc`` enabled, the Broker delivers each event with ``Authorization: Bearer
<JWT>``: a Kubernetes service-account token of the Trigger's OIDC service account, issued by the
cluster for the subscriber's audience. ``OIDCVerifier.verify(token)`` checks the signature against
the issuer's keys, the algorithm (asymmetric only; never ``none`` or HMAC), ``iss``, ``aud`` and
``exp``, and returns the claims; ``sub`` (``system:serviceaccount:NS:NAME``) is then looked up in the
auth file. Verified tokens are cached until they expire, so a redelivered token costs a dictionary lookup.

The keys (``JWKS``) never hold a request up behind the issuer:

- a daemon thread of their own fetches them at start-up and refreshes them every ``refresh_every``
  seconds, each fetch within ``deadline`` seconds in all (discovery, connect, headers, body), its body
  at most ``max_bytes``, whatever the server trickles; a failed fetch is logged and the keys known stay
  in force;
- a token whose key id is known is checked against the keys in hand: no lock, no wait, whatever
  fetch is in progress;
- a token naming an unknown key id asks for one refetch and waits for it (at most the deadline); at
  most one such refetch per ``min_refresh`` seconds, shared by all callers. A token with an unknown key
  id while a fetch is in progress, or within ``min_refresh`` of the last one, is refused at once
  (401): made-up key ids neither queue nor make us hammer the issuer. Until the first key set has
  arrived, tokens wait for it (at most the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import ssl
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jwt

log = logging.getLogger("storecast.auth")
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY = 30  # seconds of clock skew tolerated on exp / nbf / iat
CACHE_MAX = 1024
FETCH_DEADLINE = 5.0  # seconds for a whole fetch of the keys (discovery, connect, headers, body)
MAX_JWKS_BYTES = 1 << 20  # a key set (or discovery document) larger than this is refused
REFRESH_EVERY = 300.0  # seconds between background refreshes of the keys
RETRY_AFTER = 30.0  # seconds before the background tries again after a failed fetch (at most refresh_every)
MIN_REFRESH = 5.0  # seconds between two refetches that tokens with unknown key ids may cause (shared)
WAIT_GRACE = 1.0  # seconds a waiting token allows beyond the deadline for the fetch to report


class InvalidToken(Exception):
    """The token cannot be accepted; the message says why (never the token itself)."""


class FetchError(Exception):
    """The keys cannot be fetched; the message may be shown to a caller (no URL, no content)."""


def looks_like_jwt(value: str) -> bool:
    """A compact JWS (three base64url parts). API keys made by ``storecast auth add-key`` have no dots."""
    return value.count(".") == 2 and value.startswith("eyJ")


async def fetch_json(url: str, *, max_bytes: int = MAX_JWKS_BYTES, ca_file: str | None = None,
                     token_file: str | None = None) -> Any:
    """The JSON document at ``url`` (``https``, ``http`` or ``file``), at most ``max_bytes`` long. The caller
    bounds the time (``asyncio.timeout``): cancelling it closes the connection."""
    if url.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        if not path.is_file():  # a FIFO or a device would block the refresher for good
            raise FetchError("not a regular file")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    else:
        data = await _http_get(url, max_bytes, ca_file, token_file)
    if len(data) > max_bytes:
        raise FetchError(f"larger than {max_bytes} bytes")
    try:
        return json.loads(data)
    except ValueError:
        raise FetchError("not JSON") from None


async def _http_get(url: str, max_bytes: int, ca_file: str | None, token_file: str | None) -> bytes:
    import httpx  # here: importing the access package stays light

    headers = {"accept": "application/json", "accept-encoding": "identity"}  # no decompression bombs
    if token_file:  # e.g. the API server's /openid/v1/jwks wants a service-account token
        headers["authorization"] = "Bearer " + Path(token_file).read_text()[:65536].strip()
    tls = ssl.create_default_context(cafile=ca_file)
    # straight to the issuer (no proxy from the environment); no httpx timeouts: the caller's deadline is the bound
    async with httpx.AsyncClient(verify=tls, trust_env=False, follow_redirects=True, max_redirects=5,
                                 timeout=None) as client, client.stream("GET", url, headers=headers) as resp:
        if resp.status_code != 200:
            raise FetchError(f"HTTP {resp.status_code}")
        if resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise FetchError("a compressed answer")
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"larger than {max_bytes} bytes")
        body = bytearray()
        async for chunk in resp.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"larger than {max_bytes} bytes")
        return bytes(body)


def _pick(keys: dict[str, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    """The key ``kid`` names (a token without ``kid``: the only key, if there is one)."""
    if kid is None:
        return next(iter(keys.values())) if len(keys) == 1 else None
    return keys.get(kid)


class JWKS:
    """The issuer's signing keys: fetched and refreshed by a daemon thread of their own (an asyncio loop), each
    fetch bounded by ``deadline``; read by requests without a lock (the key table is swapped whole)."""

    def __init__(self, url: str | None, *, discovery: str | None = None, deadline: float = FETCH_DEADLINE,
                 refresh_every: float = REFRESH_EVERY, min_refresh: float = MIN_REFRESH,
                 max_bytes: int = MAX_JWKS_BYTES, ca_file: str | None = None, token_file: str | None = None,
                 start: bool = True) -> None:
        if url is None and discovery is None:
            raise ValueError("JWKS: give the key set's URL or the issuer's discovery URL")
        self.url, self.discovery = url, discovery
        self.deadline, self.refresh_every, self.min_refresh = deadline, refresh_every, min_refresh
        self.max_bytes, self.ca_file, self.token_file = max_bytes, ca_file, token_file
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded: float | None = None  # monotonic time of the last successful fetch
        self._attempted = -math.inf  # monotonic time the last fetch was asked for or began
        self._failure: str | None = None  # why the last fetch failed (shown to callers)
        self._pending: threading.Event | None = None  # set when the fetch asked for or in progress ends
        self._requested = False  # a token with an unknown key id asked for a fetch
        self._lock = threading.Lock()  # guards the fields above; never held across I/O
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event, asyncio.Task] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.fetches = 0  # fetches begun
        if start:
            self.start()

    @property
    def kids(self) -> frozenset[str]:
        """The key ids in hand."""
        return frozenset(self._keys)

    @property
    def where(self) -> str:
        return self.url or f"{self.discovery} (discovery)"

    # -- a request's side: the keys in hand, at most one bounded wait

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names; ``InvalidToken`` when it is unknown (after at most one bounded refetch)."""
        found = _pick(self._keys, kid)
        if found is not None:
            return found
        self.start()  # a refresher that is gone (a fork, a crash) starts again
        pending = self._ask()
        if pending is not None:
            pending.wait(self.deadline + WAIT_GRACE)
            found = _pick(self._keys, kid)
            if found is not None:
                return found
        if self._loaded is None:
            raise InvalidToken(f"the issuer's keys cannot be fetched ({self._failure})" if self._failure else
                               "the issuer's keys are being fetched; retry in a few seconds")
        raise InvalidToken(f"signed with an unknown key id {kid[:64] if kid else kid!r}")

    def _ask(self) -> threading.Event | None:
        """The fetch to wait for: a new one if none is in progress and the last began ``min_refresh`` ago or
        more; the one in progress while no key set has arrived yet; otherwise None (refuse at once)."""
        with self._lock:
            if self._closed:
                return None
            if self._pending is not None:
                return self._pending if self._loaded is None else None
            if time.monotonic() - self._attempted < self.min_refresh:
                return None
            pending = self._pending = threading.Event()
            self._requested, self._attempted = True, time.monotonic()
            waker = self._waker
        if waker is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: start() runs a new one
                waker[0].call_soon_threadsafe(waker[1].set)
        return pending

    # -- the refresher's side

    def start(self) -> JWKS:
        """Run the refresher thread (again, if it is gone); its first fetch begins at once."""
        thread = self._thread
        if self._closed or (thread is not None and thread.is_alive()):
            return self
        with self._lock:
            if self._thread is not thread:
                return self
            if self._pending is not None:  # asked of a refresher that is gone: nobody would ever end it
                self._pending.set()
                self._pending = None
            self._waker = None
            self._thread = threading.Thread(target=self._run, name="storecast-oidc-jwks", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the refresher (a fetch in progress is cancelled)."""
        self._closed = True
        waker, thread = self._waker, self._thread
        if waker is not None:
            with contextlib.suppress(RuntimeError):
                waker[0].call_soon_threadsafe(waker[2].cancel)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.deadline + WAIT_GRACE)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._refresh_forever())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("OIDC: the JWKS refresher stopped")
        finally:
            loop.close()

    async def _refresh_forever(self) -> None:
        wake, task = asyncio.Event(), asyncio.current_task()
        assert task is not None
        with self._lock:
            self._waker = (asyncio.get_running_loop(), wake, task)
        due = 0.0  # the first fetch at once
        while not self._closed:
            if self._requested or time.monotonic() >= due:
                ok = await self.fetch()
                due = time.monotonic() + (self.refresh_every if ok else min(self.refresh_every, RETRY_AFTER))
                continue
            wake.clear()  # a request's wake-up runs on this loop, so none is lost between the check and the wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await wake.wait()

    async def fetch(self) -> bool:
        """Fetch the keys within the deadline; on failure log why and keep the keys in hand. True on success."""
        with self._lock:
            pending = self._pending = self._pending or threading.Event()
            self._requested, self._attempted = False, time.monotonic()
            self.fetches += 1
        held = self._keys
        keys: dict[str, jwt.PyJWK] | None = None
        failure, detail = "cancelled", ""
        try:
            async with asyncio.timeout(self.deadline):
                keys = await self._download()
        except TimeoutError:
            failure = f"no complete answer within {self.deadline:g} s"
        except FetchError as exc:
            failure = str(exc)
        except Exception as exc:
            failure, detail = type(exc).__name__, f" ({exc})"
        finally:
            with self._lock:
                if keys is not None:
                    self._keys, self._loaded, self._failure = keys, time.monotonic(), None
                else:
                    self._failure = failure
                self._pending = None
            pending.set()
        if keys is None:
            log.warning("OIDC: cannot fetch the JWKS from %s: %s%s; %s", self.where, failure, detail,
                        f"keeping the {len(held)} key(s) in hand ({', '.join(sorted(held))})" if held else
                        "no keys yet: OIDC tokens are refused until a fetch succeeds")
            return False
        log.log(logging.DEBUG if set(keys) == set(held) else logging.INFO, "OIDC: %d key(s) from %s (%s)",
                len(keys), self.where, ", ".join(sorted(keys)))
        return True

    async def _download(self) -> dict[str, jwt.PyJWK]:
        options = {"max_bytes": self.max_bytes, "ca_file": self.ca_file, "token_file": self.token_file}
        if self.url is None:  # the issuer's /.well-known/openid-configuration names it
            doc = await fetch_json(str(self.discovery), **options)
            if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
                raise FetchError("the discovery document has no jwks_uri; set --oidc-jwks-url")
            self.url = doc["jwks_uri"]
        data = await fetch_json(str(self.url), **options)
        try:
            keyset = jwt.PyJWKSet.from_dict(data)
        except (jwt.PyJWTError, AttributeError, TypeError):
            raise FetchError("not a usable key set") from None
        return {k.key_id: k for k in keyset.keys if k.key_id}


class OIDCVerifier:
    """Verify OIDC bearer tokens of one issuer for our audience(s)."""

    def __init__(self, issuer: str, audiences: list[str] | tuple[str, ...], jwks_url: str | None = None, *,
                 deadline: float = FETCH_DEADLINE, ca_file: str | None = None, token_file: str | None = None,
                 min_refresh: float = MIN_REFRESH, refresh_every: float = REFRESH_EVERY,
                 max_bytes: int = MAX_JWKS_BYTES) -> None:
        if not issuer:
            raise ValueError("--oidc-issuer: required for OIDC tokens")
        if not audiences:
            raise ValueError("--oidc-audience: give the audience the Triggers request (subscriber.audience)")
        self.issuer, self.audiences = issuer, list(audiences)
        discovery = None if jwks_url else issuer.rstrip("/") + "/.well-known/openid-configuration"
        self.jwks = JWKS(jwks_url, discovery=discovery, deadline=deadline, refresh_every=refresh_every,
                         min_refresh=min_refresh, max_bytes=max_bytes, ca_file=ca_file, token_file=token_file)
        self._cache: dict[bytes, dict[str, Any]] = {}

    def close(self) -> None:
        """Stop refreshing the keys."""
        self.jwks.close()

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
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the key id (kid) is not a string")
        key = self.jwks.key(kid)
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
