"""Rate limits per identity (the ``limits`` library, moving window) and a concurrency bulkhead per identity.

* ``RateLimiter.hit(key, tier)``: one request of ``key`` against its tier's window. Per replica by
  default (``memory://``: the process's own counts, thread-safe, no I/O); ``redis://host:port[/db]``
  (``--rate-limit-storage``) keeps the windows in Redis, so every replica shares one limit. When Redis
  cannot be reached (0.5 s timeouts) the replica falls back to its own memory counts for a few
  seconds and says so in the log: a limit stays in force, and a request never hangs on the store.
* ``Decision.headers()``: ``RateLimit-Policy`` / ``RateLimit`` of the IETF httpapi draft
  (draft-ietf-httpapi-ratelimit-headers: ``"planner";q=40;w=2`` and ``"planner";r=39;t=2``) plus
  ``Retry-After`` on a refusal; ``Decision.grpc_metadata()`` the same for gRPC trailing metadata
  (with ``grpc-retry-pushback-ms``, gRFC A6).
* ``Bulkhead``: at most ``tier.concurrent`` requests of one identity in flight in this replica (a request
  over it waits briefly for a slot of its own identity, then is refused with 429).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from serving.access.auth_file import Tier

log = logging.getLogger("storecast.auth")
REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")
REDIS_TIMEOUT = 0.5  # seconds, for connecting and for each command
FALLBACK_SECONDS = 5.0  # after a Redis failure, how long this replica counts on its own


@dataclass(frozen=True)
class Decision:
    """The outcome of one rate-limit check, with the values of its headers."""

    allowed: bool
    policy: str  # the tier's name
    quota: int
    window: int  # seconds
    remaining: int
    reset: float  # seconds until the oldest request in the window leaves it

    @property
    def retry_after(self) -> int:
        """Whole seconds until a refused request may succeed (at least 1)."""
        return max(1, math.ceil(self.reset))

    def policy_header(self) -> str:
        return f'"{self.policy}";q={self.quota};w={self.window}'

    def ratelimit_header(self) -> str:
        return f'"{self.policy}";r={max(0, self.remaining)};t={max(0, math.ceil(self.reset))}'

    def headers(self) -> list[tuple[str, str]]:
        """HTTP response headers: RateLimit-Policy, RateLimit, and Retry-After when refused."""
        out = [("RateLimit-Policy", self.policy_header()), ("RateLimit", self.ratelimit_header())]
        if not self.allowed:
            out.append(("Retry-After", str(self.retry_after)))
        return out

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC trailing metadata (keys lower-case, as gRPC requires)."""
        out = [("ratelimit-policy", self.policy_header()), ("ratelimit", self.ratelimit_header())]
        if not self.allowed:
            out += [("retry-after", str(self.retry_after)),
                    ("grpc-retry-pushback-ms", str(max(1, math.ceil(self.reset * 1000))))]
        return tuple(out)


@functools.lru_cache(maxsize=256)
def item_of(tier: Tier) -> RateLimitItemPerSecond:
    """The ``limits`` item of a tier (one per tier definition: a changed tier is a new item)."""
    return RateLimitItemPerSecond(tier.quota, tier.window_seconds, namespace=f"storecast-{tier.name}")


class RateLimiter:
    """Moving-window limits per key, in this process's memory or shared in Redis."""

    def __init__(self, storage: str = "memory://", fallback_seconds: float = FALLBACK_SECONDS) -> None:
        storage = storage.strip() or "memory://"
        if storage != "memory://" and not storage.startswith(REDIS_SCHEMES):
            raise ValueError(f"--rate-limit-storage: expected memory:// or redis://host:port[/db], got {storage!r}")
        self.uri = storage
        self.shared = storage != "memory://"
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._redis: dict[asyncio.AbstractEventLoop, AsyncMovingWindow] = {}  # one client per event loop
        self._lock = threading.Lock()
        self.fallback_seconds = fallback_seconds
        self._fallback_until = 0.0
        self.failovers = 0

    def describe(self) -> str:
        if not self.shared:
            return "per replica (memory)"
        return f"shared in Redis at {_redact(self.uri)}"

    def _redis_limiter(self) -> AsyncMovingWindow:
        loop = asyncio.get_running_loop()
        limiter = self._redis.get(loop)
        if limiter is None:
            with self._lock:
                limiter = self._redis.get(loop)
                if limiter is None:
                    storage = RedisStorage(f"async+{self.uri}", wrap_exceptions=True, implementation="redispy",
                                           key_prefix="storecast", socket_timeout=REDIS_TIMEOUT,
                                           socket_connect_timeout=REDIS_TIMEOUT)
                    limiter = self._redis[loop] = AsyncMovingWindow(storage)
        return limiter

    async def hit(self, key: str, tier: Tier) -> Decision | None:
        """Count one request of ``key``; None when the tier has no rate limit."""
        if tier.requests_per_second is None:
            return None
        item = item_of(tier)
        if self.shared and time.monotonic() >= self._fallback_until:
            try:
                limiter = self._redis_limiter()
                allowed = await limiter.hit(item, key)
                stats = await limiter.get_window_stats(item, key)
                return _decision(tier, item, allowed, stats.reset_time, stats.remaining)
            except Exception as exc:  # the store is down or slow: count locally for a while
                self._fallback_until = time.monotonic() + self.fallback_seconds
                self.failovers += 1
                log.warning("rate-limit storage %s failed (%s: %s); counting per replica for %.0f s",
                            _redact(self.uri), type(exc).__name__, exc, self.fallback_seconds)
        allowed = self._memory.hit(item, key)
        stats = self._memory.get_window_stats(item, key)
        return _decision(tier, item, allowed, stats.reset_time, stats.remaining)

    async def ping(self) -> bool:
        """Whether the storage answers (memory always does)."""
        if not self.shared:
            return True
        try:
            return bool(await self._redis_limiter().storage.check())
        except Exception:
            return False


def _decision(tier: Tier, item: RateLimitItemPerSecond, allowed: bool, reset_time: float, remaining: int) -> Decision:
    return Decision(allowed, tier.name, item.amount, tier.window_seconds, int(remaining),
                    max(0.0, reset_time - time.time()))


def _redact(uri: str) -> str:
    """A storage URI without its password."""
    if "@" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


class Bulkhead:
    """Requests in flight per key in this replica, at most the tier's ``concurrent``.

    ``enter`` waits up to ``wait`` seconds for a slot (a well-behaved client riding out a hiccup is not
    refused), then gives up; a slot freed by ``leave`` goes to the oldest waiter of that key, on whatever
    event loop it waits. Slots are per key, so one identity's queue never delays another's.
    """

    def __init__(self) -> None:
        self._inflight: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future]] = {}
        self._lock = threading.Lock()

    def try_enter(self, key: str, limit: int | None) -> bool:
        with self._lock:
            n = self._inflight.get(key, 0)
            if limit is not None and n >= limit:
                return False
            self._inflight[key] = n + 1
            return True

    async def enter(self, key: str, limit: int | None, wait: float = 0.0) -> bool:
        """Take a slot, waiting up to ``wait`` seconds for one; False when none came."""
        if self.try_enter(key, limit):
            return True
        if wait <= 0:
            return False
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            n = self._inflight.get(key, 0)
            if limit is None or n < limit:  # freed meanwhile
                self._inflight[key] = n + 1
                return True
            self._waiters.setdefault(key, deque()).append(fut)
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(fut)
            return True
        except TimeoutError:
            with self._lock:
                queue = self._waiters.get(key)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._waiters[key]
                    return False
            return True  # leave() handed the slot over just as the wait ended

    def leave(self, key: str) -> None:
        with self._lock:
            queue = self._waiters.get(key)
            if queue:
                fut = queue.popleft()
                if not queue:
                    del self._waiters[key]
                fut.get_loop().call_soon_threadsafe(_grant, fut)  # the slot passes on: the count stays
                return
            n = self._inflight.get(key, 0) - 1
            if n > 0:
                self._inflight[key] = n
            else:
                self._inflight.pop(key, None)

    def inflight(self, key: str) -> int:
        return self._inflight.get(key, 0)


def _grant(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
