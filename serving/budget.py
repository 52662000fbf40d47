"""The work in flight bounded by its size: a budget of rows shared by the large requests of one server.

``--max-inflight`` bounds how many requests are served at once; one request for 2,000 stores x 366
days is 732,000 rows, ten thousand times a one-store request, so a count alone lets a few of them
take every core and starve the small ones. :class:`RowBudget` holds the rows of every request larger
than ``small`` while it is evaluated and encoded: at most ``limit`` such rows at once (a request
larger than the limit runs alone), the others wait their turn in arrival order, for at most
``wait`` seconds, then are refused with 503 + ``Retry-After`` (``serving.errors.Unavailable``).
Requests of at most ``small`` rows never wait: they are what the budget protects.

The CPU work of a large request (parsing thousands of stores, evaluating, building a 100 MB answer)
runs in the one bulk thread (:func:`offload`), never on the event loop: large requests take turns
there, and the event loop shares the GIL with that one thread only, handed over every
:data:`SWITCH_SECONDS` (``serving.server`` sets it), so one-store requests keep their latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from serving.errors import Unavailable

SMALL_ROWS = 4096  # a request of more rows is large: it holds the budget, its work runs in the bulk thread
SWITCH_SECONDS = 0.0005  # sys.setswitchinterval of a server: the GIL is offered to the event loop this often
T = TypeVar("T")
BULK_NICE = 19  # the bulk thread's scheduling priority below the event loop's (Linux: per thread)


def _lower_priority() -> None:
    """Make the bulk thread yield the CPU to the event loops of this machine (where the OS allows)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICE)


_BULK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storecast-bulk", initializer=_lower_priority)


async def offload(large: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: in the bulk thread when the work is ``large``, else at once on the event loop."""
    if large:
        return await asyncio.get_running_loop().run_in_executor(_BULK, fn, *args)
    return fn(*args)


class RowBudget:
    """At most ``limit`` rows of large requests in flight (``limit`` 0: unbounded)."""

    def __init__(self, limit: int, small: int = SMALL_ROWS, wait: float = 30.0) -> None:
        self.limit, self.small, self.wait = int(limit), int(small), float(wait)
        self.used = 0  # rows held now
        self.peak = 0  # most rows ever held at once (tests, metrics)
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @classmethod
    def of(cls, settings: Any) -> RowBudget:
        """The budget a server's settings ask for (``--max-inflight-rows``, ``--row-wait-seconds``)."""
        return cls(settings.max_inflight_rows, wait=settings.row_wait_seconds)

    @contextlib.asynccontextmanager
    async def hold(self, rows: int) -> AsyncIterator[None]:
        """Hold ``rows`` while the block runs (at once when small, else in turn)."""
        if self.limit <= 0 or rows <= self.small:
            yield
            return
        await self._acquire(rows)
        try:
            yield
        finally:
            self._release(rows)

    async def _acquire(self, rows: int) -> None:
        if not self._queue and self._fits(rows):
            self._take(rows)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (rows, future)
        self._queue.append(entry)
        try:
            done, _ = await asyncio.wait({future}, timeout=self.wait)  # a cancellation propagates
        except asyncio.CancelledError:
            self._abandon(entry)
            raise
        if not done:
            self._abandon(entry)
            raise Unavailable(f"busy: {self.used:,} rows of large requests in flight (--max-inflight-rows "
                              f"{self.limit:,}); this one has {rows:,} rows and waited {self.wait:g} s",
                              retry_after=max(1, math.ceil(self.wait / 10)))

    def _abandon(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        """A waiter that gives up: its rows handed on if granted meanwhile, else its place freed."""
        rows, future = entry
        if future.done() and not future.cancelled():
            self._release(rows)
            return
        future.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(entry)
        self._grant()

    def _fits(self, rows: int) -> bool:
        return self.used == 0 or self.used + rows <= self.limit

    def _take(self, rows: int) -> None:
        self.used += rows
        self.peak = max(self.peak, self.used)

    def _release(self, rows: int) -> None:
        self.used -= rows
        self._grant()

    def _grant(self) -> None:
        while self._queue and self._fits(self._queue[0][0]):
            rows, future = self._queue.popleft()
            if not future.done():
                self._take(rows)
                future.set_result(None)
