"""One rate limit across replicas: two limiters (two "replicas") sharing a real ``redis-server``.

The test starts redis-server on a free loopback port (``scripts/system_deps.sh`` installs it for
``make test``), checks that the second replica sees the first one's requests, that the refusal's
headers come from the shared window, and that a Redis that goes away makes each replica count on its
own at once (a limit stays in force, nothing hangs) and that the shared limit comes back with Redis.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from pipelines.stack import free_port
from serving.access.admission import Access, RateLimited
from serving.access.auth_file import hash_key, parse
from serving.access.ratelimit import RateLimiter

REDIS = shutil.which("redis-server")
KEY = "sc_alice-key"
AUTH = f"""
tiers:
  planner: {{requests_per_second: 5, burst: 10, concurrent: null, permissions: [forecast]}}
identities:
  - {{name: alice, tier: planner, key_sha256: {hash_key(KEY)}}}
"""


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture
def redis_url():
    if REDIS is None:
        pytest.skip("redis-server is not installed (scripts/system_deps.sh installs it)")
    port = free_port()
    procs = [start_redis(port)]
    try:
        yield f"redis://127.0.0.1:{port}/0", port, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


async def hit(access: Access) -> tuple[bool, dict]:
    try:
        admission = await access.admit({"x-api-key": KEY}, ("10.0.0.1", 1), route="/", protocol="rest",
                                       permission="forecast")
    except RateLimited as exc:
        return False, dict(exc.http_headers())
    admission.finish(200)
    return True, dict(admission.headers())


def test_two_replicas_share_one_limit(redis_url):
    url, _, _ = redis_url

    async def scenario():
        a = Access(parse(AUTH), limiter=RateLimiter(url))
        b = Access(parse(AUTH), limiter=RateLimiter(url))
        assert await a.limiter.ping() and a.limiter.describe().startswith("shared in Redis")
        results = [await hit(a if i % 2 else b) for i in range(14)]
        return results, a, b

    results, a, b = asyncio.run(scenario())
    allowed = [ok for ok, _ in results]
    assert allowed == [True] * 10 + [False] * 4  # 10 per 2 s in total, not 10 per replica
    assert results[9][1]["RateLimit"] == '"planner";r=0;t=2'  # the shared count, seen from either replica
    refused = results[10][1]
    assert refused["RateLimit-Policy"] == '"planner";q=10;w=2' and refused["Retry-After"] in ("1", "2")
    assert a.limiter.failovers == b.limiter.failovers == 0


def test_per_replica_memory_limits_are_separate():
    async def scenario():
        a, b = Access(parse(AUTH)), Access(parse(AUTH))
        return [(await hit(a))[0] for _ in range(12)], [(await hit(b))[0] for _ in range(12)]

    first, second = asyncio.run(scenario())
    assert first == second == [True] * 10 + [False] * 2


def test_redis_down_falls_back_to_the_replica_and_comes_back(redis_url):
    url, port, procs = redis_url

    async def scenario():
        limiter = RateLimiter(url, fallback_seconds=0.5)
        access = Access(parse(AUTH), limiter=limiter)
        assert (await hit(access))[0]
        procs[0].kill()
        procs[0].wait(timeout=10)
        t0 = time.monotonic()
        during = [(await hit(access))[0] for _ in range(12)]
        elapsed = time.monotonic() - t0
        assert limiter.failovers == 1
        # Redis back: after the fallback period the shared window is used again (fresh server: empty)
        procs.append(start_redis(port))
        await asyncio.sleep(0.6)
        back = (await hit(access))[0]
        return during, elapsed, back, limiter

    during, elapsed, back, limiter = asyncio.run(scenario())
    assert during == [True] * 10 + [False] * 2  # the replica's own window still limits
    assert elapsed < 3  # one timed-out attempt at most, not one per request
    assert back and limiter.failovers == 1
