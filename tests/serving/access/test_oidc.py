"""OIDC bearer tokens (Knative sender identity): a real JWKS over HTTP on loopback, real signatures.

A locally generated RSA key pair plays the cluster's service-account issuer; the test serves its JWKS
(and the OIDC discovery document) from a real HTTP server (``tests.support.Issuer``) and mints tokens
with PyJWT: valid, expired, wrong audience, wrong issuer, bad signature, ``alg: none``, an HMAC forgery
with the public key, a key rotation (unknown ``kid`` → one refetch), the issuer down (a clear 401 in
bounded time).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from serving.access.admission import Access, Forbidden, Unauthenticated
from serving.access.auth_file import parse
from serving.access.oidc import OIDCVerifier
from tests.support import AUDIENCE, SUBJECT, Issuer, jwk, new_key

AUTH = f"""
tiers:
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}}
identities:
  - name: broker-forecast
    tier: service
    oidc_subject: {SUBJECT}
"""


@pytest.fixture
def issuer():
    found = Issuer()
    yield found
    found.close()


def access_for(issuer: Issuer, jwks_url: str | None = "default", min_refresh: float = 5.0) -> Access:
    url = f"{issuer.url}/jwks" if jwks_url == "default" else jwks_url
    return Access(parse(AUTH), oidc=OIDCVerifier(issuer.url, [AUDIENCE], url, timeout=2.0, min_refresh=min_refresh))


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
    access = Access(parse(AUTH), oidc=OIDCVerifier(issuer.url, [AUDIENCE], url, timeout=1.0))
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
