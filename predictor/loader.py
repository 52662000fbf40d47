"""Load a model version once, keep it, and follow an alias: the serving state of a predictor.

The state is one immutable :class:`Snapshot` (version + parameter table). A request reads the
reference once and uses that snapshot throughout, so swapping in a new version is a single
assignment: no request ever sees a mix of versions, and none waits for a load.

:class:`Loader` fetches the first version in a background thread, retrying with exponential backoff
while the registry is unreachable; then, for a URI that can move (an alias, ``latest``), it re-resolves
every ``refresh_seconds`` and swaps when the version changed. A pinned version or a folder is only
reloaded on request (``refresh()``, e.g. KServe's repository load endpoint). Registry outages after
the first load only produce log lines: serving goes on with the loaded version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from predictor.source import ModelSource
from predictor.table import ParamTable

log = logging.getLogger("storecast.predictor")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n``: the stores with ``crc32(store_id) % n == k``."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with ``0 <= K < N``."""
        try:
            k, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"shard must be K/N, e.g. 0/4; got {text!r}") from None
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"shard must be K/N with 0 <= K < N; got {text!r}")
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


@dataclass(frozen=True)
class Snapshot:
    """One loaded model version; replaced as a whole, never modified."""

    version: str
    table: ParamTable
    uri: str
    shard: Shard | None
    loaded_at: float

    def describe(self) -> str:
        shard = f" (shard {self.shard})" if self.shard else ""
        data_end = self.table.meta.get("data_end", "?")
        return f"version {self.version} of {self.uri}: {len(self.table)} stores{shard}, data to {data_end}"


class Loader:
    """Holds the current snapshot of a source, loads it in the background and follows it."""

    def __init__(self, source: ModelSource, shard: Shard | None = None, refresh_seconds: float = 30.0) -> None:
        self.source = source
        self.shard = shard
        self.refresh_seconds = float(refresh_seconds)
        self.current: Snapshot | None = None
        self.last_error: str | None = None
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._init_sync()

    def _init_sync(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- state ---------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener(snapshot)`` after every swap (and now, if a version is loaded already)."""
        self._listeners.append(listener)
        if self.current is not None:
            listener(self.current)

    def refresh(self) -> bool:
        """Resolve the source now and swap in its version if it differs; True if swapped. Raises on failure."""
        with self._lock:
            t0 = time.perf_counter()
            version = self.source.resolve()
            current = self.current
            if current is not None and current.version == version:
                return False
            table = self.source.fetch(version)
            if self.shard is not None:
                table = table.shard(self.shard.k, self.shard.n)
            snapshot = Snapshot(version, table, self.source.uri, self.shard, time.time())
            self.current = snapshot  # the swap: one reference, read once per request
            self.last_error = None
        if len(table) == 0:
            log.warning("%s holds no store: every request will be answered 'unknown store'", snapshot.describe())
        verb = "serving" if current is None else f"swapped from version {current.version} to"
        log.info("%s %s (loaded in %.2f s)", verb, snapshot.describe(), time.perf_counter() - t0)
        for listener in list(self._listeners):
            listener(snapshot)
        return True

    # ---- background thread ---------------------------------------------------------------------
    def start(self) -> None:
        """Start loading (and following) in a daemon thread; returns at once. Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="storecast-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a version is loaded (for tools and tests); True if loaded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.current is None:
            if self._stopped.is_set() or (deadline is not None and time.monotonic() > deadline):
                return False
            time.sleep(0.02)
        return True

    def _run(self) -> None:
        attempt, backoff = 0, FIRST_BACKOFF
        cap = min(MAX_BACKOFF, max(1.0, self.refresh_seconds))
        while not self._stopped.is_set():
            attempt += 1
            try:
                self.refresh()
            except Exception as exc:  # the registry may be down: never let the thread die
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.current is None:
                    log.error("model not loaded yet: cannot load %s from %s (attempt %d): %s; retrying in %.1f s",
                              self.source.uri, self.source.registry, attempt, self.last_error, backoff)
                    self._stopped.wait(backoff)
                    backoff = min(cap, backoff * 2)
                    continue
                log.warning("refresh of %s from %s failed: %s; still serving version %s",
                            self.source.uri, self.source.registry, self.last_error, self.current.version)
            if not self.source.follows or self.refresh_seconds <= 0:
                return  # pinned (or following disabled): loaded once, reloads only on request
            attempt, backoff = 0, FIRST_BACKOFF
            self._stopped.wait(self.refresh_seconds)

    # ---- pickling (KServe pickles models into its worker processes when --workers > 1) ----------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_started"] = self._thread is not None
        for name in ("_lock", "_stopped", "_thread"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        started = state.pop("_started", False)
        self.__dict__.update(state)
        self._init_sync()
        if started:
            self.start()  # each worker process follows the alias on its own
