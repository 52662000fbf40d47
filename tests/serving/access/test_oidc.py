"""OIDC bearer tokens (Knative sender identity): a real JWKS over HTTP on loopback, real signatures.

A locally generated RSA key pair plays the cluster's service-account issuer; the test serves its JWKS
(and the OIDC discovery document) from a real HTTP server (``tests.support.Issuer``) and mints tokens
with PyJWT: valid, expired, wrong audience, wrong issuer, bad signature, ``alg: none``, an HMAC forgery
with the public key, a key rotation (unknown ``kid`` → one refetch), the issuer down (a clear 401 in
bounded time). A slow issuer (``tests.support.TricklingIssuer``: one byte every 2 s) holds nobody up: a
token whose key is known and an API key are answered while its refetch trickles, unknown key ids are
refused at once, the fetch gives up at its deadline and keeps the keys in hand; the background refresh
picks up a rotated key with no request asking.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest

from serving.access.admission import Access, Forbidden, Unauthenticated
from serving.access.auth_file import parse
from serving.access.oidc import OIDCVerifier
from tests.support import AUDIENCE, SUBJECT, Issuer, TricklingIssuer, jwk, new_key, wait_until

AUTH = f"""
tiers:
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}}
identities:
  - name: broker-forecast
    tier: service
    oidc_subject: {SUBJECT}
"""


API_KEY = "sk-test-planner"
VERIFIERS: list[OIDCVerifier] = []  # every verifier a test made, closed after it (each runs a refresher thread)


@pytest.fixture(autouse=True)
def _close_verifiers():
    yield
    while VERIFIERS:
        VERIFIERS.pop().close()


@pytest.fixture
def issuer():
    found = Issuer()
    yield found
    found.close()


@pytest.fixture
def slow_issuer():
    found = TricklingIssuer(interval=2.0)
    yield found
    found.close()


@pytest.fixture
def auth_log(caplog):
    """The ``storecast.auth`` lines (caught on the logger itself: a process log set-up may stop propagation)."""
    logger = logging.getLogger("storecast.auth")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="storecast.auth")
    yield caplog
    logger.removeHandler(caplog.handler)


def access_for(issuer: Issuer | TricklingIssuer, jwks_url: str | None = "default", min_refresh: float = 5.0,
               deadline: float = 2.0, **options: Any) -> Access:
    url = f"{issuer.url}/jwks" if jwks_url == "default" else jwks_url
    verifier = OIDCVerifier(issuer.url, [AUDIENCE], url, deadline=deadline, min_refresh=min_refresh, **options)
    VERIFIERS.append(verifier)
    key_hash = hashlib.sha256(API_KEY.encode()).hexdigest()
    return Access(parse(AUTH + f"  - {{name: planner, tier: service, key_sha256: {key_hash}}}\n"), oidc=verifier)


def within(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()``'s result, failing the test (not hanging it) when it takes longer than ``seconds``."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def admit(access: Access, token: str):
    async def go():
        admission = await access.admit({"authorization": f"Bearer {token}"}, ("10.1.2.3", 1), route="/",
                                       protocol="rest", permission="forecast")
        admission.finish(200)
        return admission.identity
    return asyncio.run(go())


def refusal(access: Access, token: str) -> Exception:
    with pytest.raises((Unauthenticated, Forbidden)) as info:
        admit(access, token)
    return info.value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_valid_token_maps_its_subject_to_the_identity(issuer):
    access = access_for(issuer)
    who = admit(access, issuer.token())
    assert (who.name, who.tier.name, who.via, who.subject) == ("broker-forecast", "service", "oidc", SUBJECT)
    # a redelivery with the same token is served from the cache: no new JWKS fetch, no signature check
    admit(access, issuer.token())
    assert issuer.fetches == 1


@pytest.mark.parametrize(("claims", "says"), [
    ({"exp": int(time.time()) - 120}, "the token has expired"),
    ({"aud": "serving.knative.dev/service/storecast/other"}, "not for this audience"),
    ({"iss": "https://evil.example"}, "not from the issuer"),
    ({"sub": None}, "no 'sub' claim"),
    ({"exp": None}, "no 'exp' claim"),
])
def test_bad_claims_are_refused(issuer, claims, says):
    err = refusal(access_for(issuer), issuer.token(**claims))
    assert isinstance(err, Unauthenticated) and err.status == 401 and says in err.message, err.message


def test_bad_signature_none_and_hmac_forgery_are_refused(issuer):
    access = access_for(issuer)
    forged = issuer.token(key=new_key())  # same kid, another key
    assert "signature does not verify" in refusal(access, forged).message

    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps({"iss": issuer.url, "aud": AUDIENCE, "sub": SUBJECT,
                               "exp": int(time.time()) + 600}).encode())
    assert "algorithm 'none' is not accepted" in refusal(access, f"{header}.{payload}.").message

    # HS256 "signed" with the public key as the secret (the classic algorithm confusion)
    public = json.dumps(jwk(issuer.keys["k1"], "k1")).encode()
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    signature = _b64(hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert "algorithm 'HS256' is not accepted" in refusal(access, f"{header}.{payload}.{signature}").message


def test_unknown_subject_is_forbidden(issuer):
    err = refusal(access_for(issuer), issuer.token(sub="system:serviceaccount:other:intruder"))
    assert isinstance(err, Forbidden) and "system:serviceaccount:other:intruder" in err.message


def test_key_rotation_refetches_once_and_made_up_kids_do_not_hammer_the_issuer(issuer):
    access = access_for(issuer, min_refresh=0.3)
    admit(access, issuer.token())
    time.sleep(0.35)  # past the refetch interval
    issuer.keys["k2"] = new_key()  # the issuer rotates: new tokens carry kid k2
    who = admit(access, issuer.token(kid="k2"))
    assert who.name == "broker-forecast" and issuer.fetches == 2
    bogus = new_key()
    for i in range(20):  # made-up kids right after: refused, at most one more fetch between them all
        err = refusal(access, issuer.token(kid=f"bogus{i}", key=bogus))
        assert "unknown key id" in err.message
    assert issuer.fetches <= 3


def test_discovery_finds_the_jwks(issuer):
    who = admit(access_for(issuer, jwks_url=None), issuer.token())
    assert who.name == "broker-forecast" and issuer.fetches == 1


def test_issuer_down_is_a_clear_401_in_bounded_time(issuer):
    url = f"{issuer.url}/jwks"
    issuer.close()
    verifier = OIDCVerifier(issuer.url, [AUDIENCE], url, deadline=1.0)
    VERIFIERS.append(verifier)
    access = Access(parse(AUTH), oidc=verifier)
    t0 = time.monotonic()
    err = refusal(access, jwt.encode({"sub": SUBJECT}, new_key(), algorithm="RS256", headers={"kid": "k1"}))
    assert isinstance(err, Unauthenticated) and "keys cannot be fetched" in err.message
    assert time.monotonic() - t0 < 10


def test_jwt_without_oidc_configured_is_refused_and_never_treated_as_a_key(issuer):
    access = Access(parse(AUTH + "  - {name: k, tier: service, key_sha256: " + "ab" * 32 + "}\n"))
    err = refusal(access, issuer.token())
    assert isinstance(err, Unauthenticated) and "no --oidc-issuer" in err.message


def test_jwks_from_a_file(issuer, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(issuer.keys["k1"], "k1")]}))
    who = admit(access_for(issuer, jwks_url=path.as_uri()), issuer.token())
    assert who.name == "broker-forecast"


def test_known_keys_and_api_keys_are_answered_while_a_trickling_refetch_is_in_progress(slow_issuer):
    # a long deadline, so the refetch below is certainly still in progress while the test runs
    access = access_for(slow_issuer, min_refresh=0, deadline=120)
    admit(access, slow_issuer.token())  # the first key set, at full speed
    slow_issuer.trickle.set()
    outcome: list[Exception] = []
    new = slow_issuer.token(kid="new", key=new_key())
    waiter = threading.Thread(target=lambda: outcome.append(refusal(access, new)))
    waiter.start()  # a token with a new key id: asks for a refetch, which now trickles, and waits for it
    assert slow_issuer.trickling.wait(30)
    bogus = new_key()

    async def burst():
        # made-up key ids first (more than the default thread pool has threads), then a known key id in a
        # token not verified before, then an API key
        headers = [{"authorization": f"Bearer {slow_issuer.token(kid=f'made-up-{i}', key=bogus)}"} for i in range(20)]
        headers += [{"authorization": f"Bearer {slow_issuer.token(jti='fresh')}"}, {"x-api-key": API_KEY}]
        answers = await asyncio.gather(*(access.admit(h, ("10.1.2.3", 1), route="/", protocol="rest",
                                                      permission="forecast") for h in headers),
                                       return_exceptions=True)
        for a in answers:
            if not isinstance(a, Exception):
                a.finish(200)
        return answers

    # well before the trickle (about 20 minutes) or the fetch's deadline would end
    answers = within(lambda: asyncio.run(burst()), 60)
    assert waiter.is_alive() and not slow_issuer.hung_up.is_set()  # the refetch is still in progress
    oidc, key = answers[-2:]
    assert (oidc.identity.name, oidc.identity.via) == ("broker-forecast", "oidc")
    assert (key.identity.name, key.identity.via) == ("planner", "key")
    for refused in answers[:-2]:  # refused at once, not queued behind the refetch
        assert isinstance(refused, Unauthenticated) and "unknown key id 'made-up-" in refused.message, refused
    assert slow_issuer.fetches == 2  # the first key set and the one refetch: the burst asked for none

    access.oidc.close()  # cancels the refetch: its waiter is refused
    waiter.join(timeout=30)
    assert not waiter.is_alive() and "unknown key id 'new'" in outcome[0].message


def test_a_trickling_fetch_gives_up_at_its_deadline_and_keeps_the_keys(slow_issuer, auth_log):
    # a deadline longer than the 2 s between bytes: no per-read timeout would ever end this answer
    access = access_for(slow_issuer, min_refresh=0, deadline=3)
    admit(access, slow_issuer.token())
    slow_issuer.trickle.set()
    # the new key id waits for its refetch, which gives up at the deadline (the trickle would take minutes)
    err = within(lambda: refusal(access, slow_issuer.token(kid="new", key=new_key())), 60)
    assert isinstance(err, Unauthenticated) and "unknown key id 'new'" in err.message
    assert slow_issuer.hung_up.wait(30)  # the verifier hung up mid-answer
    assert any("no complete answer within 3 s; keeping the 1 key(s) in hand (k1)" in r.getMessage()
               for r in auth_log.records if r.levelno == logging.WARNING)
    assert access.oidc.jwks.kids == {"k1"}
    assert admit(access, slow_issuer.token(jti="after")).name == "broker-forecast"  # the old key still verifies


def test_the_first_fetch_is_bounded_by_the_deadline(slow_issuer):
    slow_issuer.trickle.set()  # slow from the start
    access = access_for(slow_issuer, deadline=2.5)
    err = within(lambda: refusal(access, slow_issuer.token()), 60)
    assert isinstance(err, Unauthenticated)
    assert "the issuer's keys cannot be fetched (no complete answer within 2.5 s)" in err.message, err.message


def test_the_background_refresh_picks_up_a_rotated_key(issuer):
    # tokens may not cause a refetch here (one an hour): only the background refresh fetches
    access = access_for(issuer, min_refresh=3600, refresh_every=0.2)
    admit(access, issuer.token())
    old = issuer.keys["k1"]
    issuer.keys = {"k2": new_key()}  # the issuer rotates and drops the old key
    assert wait_until(lambda: access.oidc.jwks.kids == {"k2"}, timeout=30)
    assert admit(access, issuer.token(kid="k2")).name == "broker-forecast"
    assert "unknown key id 'k1'" in refusal(access, issuer.token(kid="k1", key=old, jti="new")).message


def test_a_key_set_over_the_size_cap_is_refused(issuer, auth_log):
    access = access_for(issuer, max_bytes=100)
    err = refusal(access, issuer.token())
    assert "the issuer's keys cannot be fetched (larger than 100 bytes)" in err.message, err.message
    assert any("larger than 100 bytes; no keys yet" in r.getMessage() for r in auth_log.records)


def test_a_jwks_file_that_is_not_a_regular_file_is_refused_not_read(issuer, tmp_path):
    fifo = tmp_path / "jwks.fifo"
    os.mkfifo(fifo)  # reading it would block the refresher for good
    err = within(lambda: refusal(access_for(issuer, jwks_url=fifo.as_uri()), issuer.token()), 60)
    assert "the issuer's keys cannot be fetched (not a regular file)" in err.message, err.message
