"""Access library (issue 13): the auth file, keys, tiers, anonymous callers, rate limits, bulkhead, audit.

In-process and real: real YAML files on disk (rewritten and swapped like a Kubernetes Secret volume),
the real ``limits`` moving window, the real audit logger and Prometheus registry. HTTP and gRPC doors
are in test_access_doors.py, OIDC in test_access_oidc.py, Redis in test_access_redis.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from serving.access.admission import Access, ConcurrencyLimited, Forbidden, RateLimited, Unauthenticated, peer_address
from serving.access.auth_file import AuthFileError, AuthFileWatcher, hash_key, load, parse
from serving.access.settings import AccessSettings, add_access_arguments, build_access, check_exposure

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"alice": "sc_alice-key", "svc": "sc_service-key", "root": "sc_admin-key"}


def auth_text(anonymous: bool = True, planner_rps: float = 5, planner_burst: int = 10, planner_concurrent: int = 4,
              extra: str = "") -> str:
    anon = ("  anonymous: {requests_per_second: 1, burst: 3, concurrent: 2, permissions: [forecast]}\n"
            if anonymous else "")
    return (
        "tiers:\n" + anon +
        f"  planner: {{requests_per_second: {planner_rps}, burst: {planner_burst}, concurrent: {planner_concurrent},"
        " permissions: [forecast, refresh]}\n"
        "  service: {requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}\n"
        "  admin: {requests_per_second: 100, burst: 100, concurrent: 8,"
        " permissions: [forecast, refresh, retrain, rollout, admin]}\n"
        "identities:\n"
        f"  - {{name: alice, tier: planner, key_sha256: {hash_key(KEYS['alice'])}}}\n"
        f"  - {{name: svc, tier: service, key_sha256: [{hash_key(KEYS['svc'])}]}}\n"
        f"  - {{name: root, tier: admin, key_sha256: {hash_key(KEYS['root'])}}}\n" + extra)


def run(coro):
    return asyncio.run(coro)


async def admit(access: Access, headers: dict, permission: str | None = "forecast", peer=("10.0.0.1", 5000)):
    return await access.admit(headers, peer, route="/v1/models/storecast:predict", protocol="rest",
                              permission=permission)


def ok(access: Access, headers: dict, permission: str | None = "forecast", peer=("10.0.0.1", 5000)):
    admission = run(admit(access, headers, permission, peer))
    admission.finish(200)
    return admission.identity


def refused(access: Access, headers: dict, permission: str | None = "forecast", peer=("10.0.0.1", 5000)):
    with pytest.raises((Unauthenticated, Forbidden, RateLimited)) as info:
        run(admit(access, headers, permission, peer))
    return info.value


# ---------------------------------------------------------------------------------------------
# The file


@pytest.mark.parametrize(("text", "says"), [
    ("tiers: [", "not valid YAML at line 1"),
    ("- a\n- b\n", "expected a mapping with 'tiers' and 'identities'"),
    ("identities: []\n", "tiers: expected a mapping"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\nidentity: []\n",
     "identity: unknown field"),
    ("tiers: {planner: {requests_per_second: -1, concurrent: 2, permissions: [forecast]}}\n",
     "tiers.planner.requests_per_second: expected a number > 0 or null, got -1"),
    ("tiers: {planner: {requests_per_second: 5, burst: 2.5, concurrent: 2, permissions: [forecast]}}\n",
     "tiers.planner.burst: expected a whole number > 0"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 0, permissions: [forecast]}}\n",
     "tiers.planner.concurrent: expected a whole number > 0 or null, got 0"),
    ("tiers: {planner: {requests_per_second: 5, permissions: [forecast]}}\n",
     "tiers.planner.concurrent: missing"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast, delete]}}\n",
     "tiers.planner.permissions: unknown 'delete'"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast], rps: 3}}\n",
     "tiers.planner.rps: unknown field"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: a, tier: boss, key_sha256: " + "0" * 64 + "}]\n",
     "identities[0] (a).tier: unknown tier 'boss'"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: a, tier: planner, key_sha256: sc_plain-key}]\n",
     "that looks like a key, not its hash"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: a, tier: planner}]\n",
     "give key_sha256 (storecast auth add-key) or oidc_subject"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: a, tier: planner, key_sha256: " + "a" * 64 + "}, {name: a, tier: planner, key_sha256: "
     + "b" * 64 + "}]\n", "the name 'a' appears twice"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: a, tier: planner, key_sha256: " + "a" * 64 + "}, {name: b, tier: planner, key_sha256: "
     + "a" * 64 + "}]\n", "'b' and 'a' have the same key"),
    ("tiers: {anonymous: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: anonymous, tier: anonymous, key_sha256: " + "1" * 64 + "}]\n",
     "'anonymous' is reserved"),
    ("tiers: {planner: {requests_per_second: 5, concurrent: 2, permissions: [forecast]}}\n"
     "identities: [{name: a, tier: planner, key_sha256: " + "1" * 64 + "}]\n",
     "identities[0] (a).key_sha256: YAML read a number here: quote the value"),
])
def test_file_errors_name_the_field_and_the_problem(text, says):
    with pytest.raises(AuthFileError) as info:
        parse(text, "auth.yaml")
    assert str(info.value).startswith("auth.yaml: ") and says in str(info.value), str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AuthFileError, match="cannot read the auth file"):
        load(tmp_path / "nope.yaml")


def test_example_file_parses_with_its_tiers_and_no_anonymous_access():
    config = load(ROOT / "config" / "auth.example.yaml")
    assert list(config.tiers) == ["planner", "service", "broker-forecast", "broker-retrain", "broker-fleet", "admin"]
    assert config.anonymous is None  # callers without credentials are refused unless the file says otherwise
    perms = {name: tier.permissions for name, tier in config.tiers.items()}
    assert perms == {"planner": {"forecast", "refresh"}, "service": {"forecast", "refresh", "retrain"},
                     "broker-forecast": {"forecast"}, "broker-retrain": {"refresh", "retrain"},
                     "broker-fleet": {"retrain"}, "admin": {"forecast", "refresh", "retrain", "rollout", "admin"}}
    # The window: at most `burst` requests in any burst/rps seconds.
    planner = config.tiers["planner"]
    assert (planner.quota, planner.window_seconds) == (40, 2)


def test_new_files_from_the_cli_have_the_examples_people_and_service_tiers():
    from pipelines.cli.auth import NEW_FILE

    new, example = parse(NEW_FILE), load(ROOT / "config" / "auth.example.yaml")
    assert list(new.tiers) == ["planner", "service", "admin"] and new.anonymous is None
    assert all(tier == example.tiers[name] for name, tier in new.tiers.items())


def test_hash_is_sha256_hex_and_the_key_is_not_in_the_parsed_config():
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    config = parse(auth_text())
    assert KEYS["alice"] not in repr(config)


# ---------------------------------------------------------------------------------------------
# Keys, tiers, anonymous


def test_key_in_either_header_and_each_tier_permissions():
    access = Access(parse(auth_text()))
    assert ok(access, {"x-api-key": KEYS["alice"]}).name == "alice"
    assert ok(access, {"authorization": f"Bearer {KEYS['alice']}"}).name == "alice"
    assert ok(access, {"authorization": f"bearer   {KEYS['svc']}"}).name == "svc"
    table = {"alice": {"forecast", "refresh"}, "svc": {"forecast", "refresh", "retrain"},
             "root": {"forecast", "refresh", "retrain", "rollout"}}
    for who, allowed in table.items():
        for permission in ("forecast", "refresh", "retrain", "rollout"):
            headers = {"x-api-key": KEYS[who]}
            if permission in allowed:
                assert ok(access, headers, permission).tier.name in ("planner", "service", "admin")
            else:
                err = refused(access, headers, permission)
                assert isinstance(err, Forbidden) and err.status == 403 and err.grpc_code == "PERMISSION_DENIED"
                assert f"may not {permission}" in err.message


def test_wrong_empty_or_foreign_credentials_are_401_never_anonymous():
    access = Access(parse(auth_text(anonymous=True)))
    for headers in ({"x-api-key": "sc_wrong"}, {"authorization": "Bearer sc_wrong"}, {"x-api-key": ""},
                    {"authorization": "Basic YWxpY2U6cHc="}, {"authorization": KEYS["alice"]},
                    {"x-api-key": "x" * 5000}):
        err = refused(access, headers)
        assert isinstance(err, Unauthenticated) and err.status == 401 and err.grpc_code == "UNAUTHENTICATED"
        assert ("www-authenticate", 'Bearer realm="storecast"') in err.http_headers()
        assert KEYS["alice"] not in err.message and "YWxp" not in err.message
    # x-api-key wins over authorization: a wrong x-api-key is refused even with a good Bearer key
    assert isinstance(refused(access, {"x-api-key": "sc_wrong", "authorization": f"Bearer {KEYS['alice']}"}),
                      Unauthenticated)


def test_anonymous_denied_without_the_tier_and_limited_per_address_with_it():
    denied = Access(parse(auth_text(anonymous=False)))
    err = refused(denied, {})
    assert isinstance(err, Unauthenticated) and "credentials required" in err.message

    access = Access(parse(auth_text(anonymous=True)))
    who = ok(access, {}, peer=("10.0.0.9", 1))
    assert (who.name, who.via, who.limit_key) == ("anonymous", "anonymous", "addr:10.0.0.9")
    assert isinstance(refused(access, {}, "refresh"), Forbidden)
    # burst 3 per 3 s for each address; another address has its own budget; a key its own too
    for _ in range(2):
        ok(access, {}, peer=("10.0.0.9", 2))
    err = refused(access, {}, peer=("10.0.0.9", 3))
    assert isinstance(err, RateLimited) and err.status == 429
    ok(access, {}, peer=("10.0.0.10", 1))
    ok(access, {"x-api-key": KEYS["alice"]}, peer=("10.0.0.9", 4))


def test_forwarded_address_only_from_trusted_hops():
    access = Access(parse(auth_text()), trusted_proxies="10.0.0.0/8,127.0.0.1")
    # the client forged 6.6.6.6; the gateway appended the client's 203.0.113.7, then proxies in the cluster theirs
    headers = {"x-forwarded-for": "6.6.6.6, 203.0.113.7, 10.4.0.2, 10.4.0.9"}
    assert access.client_address(headers, ("127.0.0.1", 1)) == "203.0.113.7"
    assert access.client_address(headers, ("198.51.100.1", 1)) == "198.51.100.1"  # not from a trusted proxy
    assert access.client_address({}, ("10.0.0.1", 1)) == "10.0.0.1"
    assert Access(parse(auth_text())).client_address(headers, ("10.0.0.1", 1)) == "10.0.0.1"
    who = ok(access, headers, peer=("127.0.0.1", 1))  # both addresses kept, the budget the forwarded one's
    assert (who.peer, who.forwarded, who.subject, who.limit_key) == ("127.0.0.1", "203.0.113.7", None,
                                                                     "addr:203.0.113.7")
    assert access.addresses({"x-forwarded-for": "10.4.0.2, not-an-address"}, ("127.0.0.1", 1)) == ("127.0.0.1", None)
    with pytest.raises(ValueError, match="not an address or CIDR"):
        Access(parse(auth_text()), trusted_proxies="10.0.0.0/8,gateway")
    assert peer_address("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_address("ipv6:[::1]:5555") == "::1"
    assert peer_address("10.1.2.3:4567") == "10.1.2.3" and peer_address("[fe80::1]:80") == "fe80::1"
    assert peer_address("fe80::1") == "fe80::1" and peer_address("") == "-"


def test_rate_limit_refusal_with_retry_after_and_draft_headers():
    access = Access(parse(auth_text(planner_rps=2, planner_burst=4)))  # 4 requests per 2 s
    remaining = []
    for _ in range(4):
        admission = run(admit(access, {"x-api-key": KEYS["alice"]}))
        assert ("RateLimit-Policy", '"planner";q=4;w=2') in admission.headers()
        remaining.append(dict(admission.headers())["RateLimit"])
        admission.finish(200)
    assert remaining == [f'"planner";r={n};t=2' for n in (3, 2, 1, 0)]
    err = refused(access, {"x-api-key": KEYS["alice"]})
    assert isinstance(err, RateLimited) and err.grpc_code == "RESOURCE_EXHAUSTED"
    headers = dict(err.http_headers())
    assert headers["Retry-After"] in ("1", "2") and headers["RateLimit-Policy"] == '"planner";q=4;w=2'
    assert headers["RateLimit"].startswith('"planner";r=0;t=')
    assert json.loads(err.body())["error"].startswith("rate limit of tier planner reached")
    trailing = dict(err.grpc_trailing_metadata())
    assert trailing["retry-after"] == headers["Retry-After"] and int(trailing["grpc-retry-pushback-ms"]) > 0
    # other identities are not affected; a tier without a rate limit never is
    for _ in range(50):
        ok(access, {"x-api-key": KEYS["svc"]})
    # the window moves: after it, alice is admitted again
    time.sleep(int(headers["Retry-After"]) + 0.05)
    ok(access, {"x-api-key": KEYS["alice"]})


def test_concurrency_bulkhead_per_identity():
    access = Access(parse(auth_text(planner_concurrent=2)), concurrency_wait=0.05)

    async def scenario():
        held = [await admit(access, {"x-api-key": KEYS["alice"]}) for _ in range(2)]
        with pytest.raises(ConcurrencyLimited) as info:  # waited 50 ms for a slot of alice's, none came
            await admit(access, {"x-api-key": KEYS["alice"]})
        other = await admit(access, {"x-api-key": KEYS["root"]})  # another identity still gets in at once
        other.finish(200)
        held[0].finish(200)
        again = await admit(access, {"x-api-key": KEYS["alice"]})  # a slot freed
        again.finish(200)
        held[1].finish(200)
        held[1].finish(200)  # finishing twice releases once
        return info.value

    err = run(scenario())
    assert err.status == 429 and dict(err.http_headers())["Retry-After"] == "1"
    assert "2 requests in flight" in err.message and access.bulkhead.inflight("id:alice") == 0


def test_bulkhead_hands_a_freed_slot_to_the_oldest_waiter():
    access = Access(parse(auth_text(planner_concurrent=1)), concurrency_wait=2.0)

    async def scenario():
        first = await admit(access, {"x-api-key": KEYS["alice"]})
        waiting = [asyncio.create_task(admit(access, {"x-api-key": KEYS["alice"]})) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiting) and access.bulkhead.inflight("id:alice") == 1
        first.finish(200)
        second = await asyncio.wait_for(waiting[0], 1)  # the oldest waiter got the slot
        assert not waiting[1].done()
        second.finish(200)
        third = await asyncio.wait_for(waiting[1], 1)
        third.finish(200)
        return access.bulkhead.inflight("id:alice")

    assert run(scenario()) == 0


def test_open_mode_without_auth_file_and_its_loopback_guard():
    access = build_access(AccessSettings())
    assert access.open
    who = ok(access, {"x-api-key": "anything"}, "rollout")
    assert who.via == "anonymous" and who.tier.permissions == {"forecast", "refresh", "retrain", "rollout"}
    err = refused(access, {}, "admin")  # the model repository is never open, not even on loopback
    assert isinstance(err, Forbidden) and "admin permission" in err.message and "--auth-file" in err.message
    check_exposure(AccessSettings(), "127.0.0.1")
    with pytest.raises(ValueError, match=r"--auth-file is required to listen on 0\.0\.0\.0"):
        check_exposure(AccessSettings(), "0.0.0.0")
    check_exposure(AccessSettings(auth_file="auth.yaml"), "0.0.0.0")


def test_flags_and_environment(tmp_path, monkeypatch):
    import argparse

    path = tmp_path / "auth.yaml"
    path.write_text(auth_text())
    monkeypatch.setenv("STORECAST_AUTH_FILE", str(path))
    monkeypatch.setenv("STORECAST_OIDC_AUDIENCE", "a, b")
    settings = AccessSettings.from_env()
    assert settings.auth_file == str(path) and settings.oidc_audience == ("a", "b")
    parser = argparse.ArgumentParser()
    add_access_arguments(parser)
    args = parser.parse_args(["--auth-file", "x.yaml", "--rate-limit-storage", "redis://127.0.0.1:1/0",
                              "--trusted-proxies", "10.0.0.0/8"])
    s = AccessSettings.from_args(args)
    assert (s.auth_file, s.rate_limit_storage, s.trusted_proxies) == ("x.yaml", "redis://127.0.0.1:1/0", "10.0.0.0/8")
    with pytest.raises(ValueError, match=r"--rate-limit-storage: expected memory:// or redis://"):
        build_access(AccessSettings(auth_file=str(path), rate_limit_storage="mongodb://x"))
    with pytest.raises(ValueError, match=r"--oidc-issuer needs --auth-file"):
        build_access(AccessSettings(oidc_issuer="https://issuer"))


# ---------------------------------------------------------------------------------------------
# Reload (Secret rotation)


def test_reload_on_rewrite_and_on_secret_symlink_swap(tmp_path):
    # The layout of a Kubernetes Secret volume: auth.yaml -> ..data/auth.yaml, ..data -> ..<timestamp>/
    def publish(version: str, text: str) -> None:
        folder = tmp_path / f"..{version}"
        folder.mkdir()
        (folder / "auth.yaml").write_text(text)
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(folder.name)
        os.replace(tmp_link, tmp_path / "..data")  # the atomic swap kubelet does

    publish("v1", auth_text())
    (tmp_path / "auth.yaml").symlink_to("..data/auth.yaml")
    watcher = AuthFileWatcher(tmp_path / "auth.yaml", interval=0.05)
    access = Access(watcher)
    assert ok(access, {"x-api-key": KEYS["alice"]}).name == "alice"
    assert not watcher.check()  # unchanged: nothing re-read

    # rotation: alice's key removed, a new identity added
    new_key = "sc_new-key"
    rotated = auth_text().replace(f"  - {{name: alice, tier: planner, key_sha256: {hash_key(KEYS['alice'])}}}\n",
                                  f"  - {{name: bob, tier: planner, key_sha256: {hash_key(new_key)}}}\n")
    publish("v2", rotated)
    watcher.start()
    try:
        deadline = time.monotonic() + 5
        while watcher.reloads < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.reloads == 1
        assert isinstance(refused(access, {"x-api-key": KEYS["alice"]}), Unauthenticated)
        assert ok(access, {"x-api-key": new_key}).name == "bob"

        # a broken file keeps the last good configuration in force and says why
        publish("v3", "tiers: [")
        deadline = time.monotonic() + 5
        while watcher.last_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "not valid YAML" in watcher.last_error
        assert ok(access, {"x-api-key": new_key}).name == "bob"
    finally:
        watcher.stop()


def test_reload_on_in_place_rewrite(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text(auth_text())
    watcher = AuthFileWatcher(path)
    access = Access(watcher)
    assert ok(access, {"x-api-key": KEYS["alice"]}, "refresh")
    path.write_text(auth_text().replace("permissions: [forecast, refresh]}", "permissions: [forecast]}"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse clock must not hide the change
    assert watcher.check()
    assert isinstance(refused(access, {"x-api-key": KEYS["alice"]}, "refresh"), Forbidden)


def test_cli_add_key_appends_and_the_key_works(tmp_path):
    from pipelines.cli.auth import add_key

    path = tmp_path / "auth.yaml"
    key = add_key(path, "carol", "planner")
    key2 = add_key(path, "dave", "admin", description='ops "on call"')
    assert key.startswith("sc_") and len(key) > 40 and key != key2
    text = path.read_text()
    assert key not in text and hash_key(key) in text and oct(path.stat().st_mode & 0o777) == "0o600"
    access = Access(load(path))
    assert ok(access, {"x-api-key": key}).name == "carol"
    assert ok(access, {"authorization": f"Bearer {key2}"}, "rollout").name == "dave"
    with pytest.raises(AuthFileError, match="exists already"):
        add_key(path, "carol", "planner")
    with pytest.raises(AuthFileError, match="no tier 'boss'"):
        add_key(path, "erin", "boss")
    with pytest.raises(AuthFileError, match="--name"):
        add_key(path, "x\n  tier: admin", "planner")


# ---------------------------------------------------------------------------------------------
# Audit


def test_audit_line_per_request_never_the_key(caplog):
    access = Access(parse(auth_text(planner_rps=1, planner_burst=1)))
    caplog.set_level(logging.INFO, logger="storecast.audit")

    async def scenario():
        admission = await admit(access, {"x-api-key": KEYS["alice"]})
        admission.note_rows(7)
        admission.finish(200)
        for headers in ({"x-api-key": KEYS["alice"]}, {"x-api-key": "sc_guess"}, {"authorization": "Bearer sc_zz"}):
            with pytest.raises(Unauthenticated if headers != {"x-api-key": KEYS["alice"]} else RateLimited):
                await admit(access, headers)

    before = REGISTRY.get_sample_value("storecast_access_requests_total",
                                       {"tier": "planner", "outcome": "ok", "protocol": "rest"}) or 0
    unknown = REGISTRY.get_sample_value("storecast_access_refusals_total",
                                        {"reason": "unknown_key", "protocol": "rest"}) or 0
    run(scenario())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "storecast.audit"]
    # every admitted request has its line; refusals one line per reason (the second unknown key is counted only)
    assert [(x["identity"], x["tier"], x["status"], x["outcome"]) for x in lines] == [
        ("alice", "planner", 200, "ok"), ("alice", "planner", 429, "rate_limited"),
        ("-", "-", 401, "unauthenticated")]
    assert (lines[1]["refusal"], lines[2]["refusal"], lines[2]["reason"]) == (
        "rate_limited", "unknown_key", "unknown API key")
    assert REGISTRY.get_sample_value("storecast_access_refusals_total",
                                     {"reason": "unknown_key", "protocol": "rest"}) == unknown + 2
    first = lines[0]
    assert first["route"] == "/v1/models/storecast:predict" and first["protocol"] == "rest"
    assert first["rows"] == 7 and first["latency_ms"] >= 0 and first["via"] == "key" and first["peer"] == "10.0.0.1"
    text = caplog.text
    for secret in (KEYS["alice"], "sc_guess", "sc_zz"):
        assert secret not in text
    after = REGISTRY.get_sample_value("storecast_access_requests_total",
                                      {"tier": "planner", "outcome": "ok", "protocol": "rest"})
    assert after == before + 1
    assert REGISTRY.get_sample_value("storecast_access_requests_total",
                                     {"tier": "-", "outcome": "unauthenticated", "protocol": "rest"}) >= 2


def test_metrics_text_has_counters_by_tier_and_outcome():
    from serving.access.audit import metrics_text

    access = Access(parse(auth_text()))
    ok(access, {"x-api-key": KEYS["root"]}, "rollout")
    body, content_type = metrics_text()
    assert content_type.startswith("text/plain")
    assert b'storecast_access_requests_total{outcome="ok",protocol="rest",tier="admin"}' in body
