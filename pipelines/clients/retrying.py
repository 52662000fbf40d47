"""Batches of V1 business requests sent by a fixed pool of workers, retried, split, given up.

At most ``Policy.concurrency`` requests are in flight at any time (a fixed pool of workers, one request
each). 429 and 503 answers and connection errors are retried with exponential backoff and full jitter,
never before the server's ``Retry-After``: a ``Retry-After`` also holds back every worker's next
request until it has passed (a rate limit or an overload is the whole client's, not one request's).
A batch is given up after ``Policy.max_attempts`` attempts; a batch answered with another 4xx is split
in halves until the store at fault is alone (so one unknown store does not fail its neighbours),
except 401/403, which stop the run (every request would get the same).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving.contract import MODEL_NAME

RETRY_STATUS = (429, 503)
FATAL_STATUS = (401, 403)  # the same for every request: no retry, no split, and no more requests
MODEL = MODEL_NAME


@dataclass(frozen=True)
class Policy:
    """How hard to try: attempts per request, backoff base and cap (seconds), request timeout."""

    concurrency: int = 4
    max_attempts: int = 8
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 60.0


@dataclass
class Stats:
    """What a run did: requests sent (retries included), retries, answers by status, stores given up."""

    requests: int = 0
    retries: int = 0
    splits: int = 0
    statuses: Counter = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # store -> why
    seconds: float = 0.0
    rows: int = 0
    stores: int = 0

    def line(self) -> str:
        codes = ", ".join(f"{k} x{v}" for k, v in sorted(self.statuses.items(), key=str))
        return (f"{self.stores - len(self.failed)} of {self.stores} stores, {self.rows} rows in {self.seconds:.1f} s: "
                f"{self.requests} requests ({codes or 'none'}), {self.retries} retries, {self.splits} splits, "
                f"{len(self.failed)} stores failed")


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, policy: Policy, after: float | None, rng: random.Random) -> float:
    """Full jitter on an exponential cap (attempt 1 -> up to ``backoff``), added to ``Retry-After``:
    never earlier than the server asked, and clients told the same wait do not return together."""
    jitter = rng.uniform(0.0, min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)))
    return (after or 0.0) + jitter


class BatchClient:
    """Sends the batches; ``run`` returns the answered predictions by store, and the stats."""

    def __init__(self, url: str, begin: str, end: str, policy: Policy, api_key: str | None = None,
                 progress: Any = None, seed: int | None = None) -> None:
        self.url = f"{url.rstrip('/')}/v1/models/{MODEL}:predict"
        self.begin, self.end, self.policy = begin, end, policy
        self.headers = {"content-type": "application/json", **({"x-api-key": api_key} if api_key else {})}
        self.progress = progress
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.answers: dict[str, tuple[dict[str, Any], str | None]] = {}  # store -> (prediction, version)
        self._not_before = 0.0  # monotonic time before which no request may start (a Retry-After)
        self._fatal: str | None = None  # set by a 401/403: the remaining batches are not sent

    async def run(self, stores: list[str], batch_size: int) -> Stats:
        t0 = time.perf_counter()
        self.stats.stores = len(stores)
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for i in range(0, len(stores), batch_size):
            queue.put_nowait(stores[i:i + batch_size])
        n = self.policy.concurrency
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=self.policy.timeout, limits=limits) as client:
            workers = [asyncio.create_task(self._worker(client, queue)) for _ in range(self.policy.concurrency)]
            try:
                await queue.join()
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    async def _worker(self, client: httpx.AsyncClient, queue: asyncio.Queue[list[str]]) -> None:
        while True:
            batch = await queue.get()
            try:
                await self._send(client, batch, queue)
            except Exception as exc:  # an answer we cannot read: its stores fail, the others go on
                for s in batch:
                    self.stats.failed[s] = f"{type(exc).__name__}: {exc}"
                self._tick(len(batch))
            finally:
                queue.task_done()

    async def _send(self, client: httpx.AsyncClient, batch: list[str], queue: asyncio.Queue[list[str]]) -> None:
        body = {"instances": [{"storeId": s, "beginDate": self.begin, "endDate": self.end} for s in batch]}
        why = "no attempt"
        for attempt in range(1, self.policy.max_attempts + 1):
            if self._fatal:
                why = f"not sent: {self._fatal}"
                break
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.stats.requests += 1
            after: float | None = None
            try:
                r = await client.post(self.url, json=body, headers=self.headers)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may be restarting
                self.stats.statuses[type(exc).__name__] += 1
                why = f"{type(exc).__name__}: {exc}"
            else:
                self.stats.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self._accept(batch, r)
                    return
                why = f"HTTP {r.status_code}: {error_text(r)}"
                if r.status_code in FATAL_STATUS:
                    self._fatal = why
                    break
                if r.status_code not in RETRY_STATUS:
                    if len(batch) > 1:  # find the store at fault; its neighbours are fine
                        self.stats.splits += 1
                        half = len(batch) // 2
                        queue.put_nowait(batch[:half])
                        queue.put_nowait(batch[half:])
                        return
                    break
                after = retry_after(r.headers)
                if after is not None:
                    self._not_before = max(self._not_before, time.monotonic() + after)
            if attempt == self.policy.max_attempts:
                why = f"gave up after {attempt} attempts, last: {why}"
                break
            self.stats.retries += 1
            await asyncio.sleep(backoff_delay(attempt, self.policy, after, self.rng))
        for s in batch:
            self.stats.failed[s] = why
        self._tick(len(batch))

    def _accept(self, batch: list[str], r: httpx.Response) -> None:
        answer = r.json()
        version = answer.get("model_version") or r.headers.get("x-model-version")
        predictions = answer.get("predictions", [])
        if len(predictions) != len(batch):
            raise ValueError(f"{len(predictions)} predictions for {len(batch)} stores from {self.url}")
        for store, p in zip(batch, predictions, strict=True):
            self.answers[store] = (p, p.get("model_version", version))
        self._tick(len(batch))

    def _tick(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)
            self.progress.set_postfix(retries=self.stats.retries, failed=len(self.stats.failed), refresh=False)


def error_text(r: httpx.Response) -> str:
    """The error an answer carries (its JSON ``error``, else its text), at most 300 characters."""
    try:
        return str(r.json().get("error", r.text))[:300]
    except ValueError:
        return r.text[:300]
