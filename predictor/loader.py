"""Load a model version once, keep it, and follow an alias: the serving state of a predictor.

The state is one immutable :class:`~predictor.snapshot.Snapshot` (version, parameter table,
precomputed horizon). A request reads the reference once and uses that snapshot throughout, so
swapping in a new version is a single assignment: no request ever sees a mix of versions, and none
waits for a load.

:class:`Loader` fetches the first version in a background thread, retrying with exponential backoff
while the registry is unreachable; then, for a URI that can move (an alias, ``latest``), it re-resolves
every ``refresh_seconds`` and swaps when the version changed. A pinned version or a folder is only
reloaded on request (``refresh()``, e.g. KServe's repository load endpoint). Registry outages after
the first load only produce log lines: serving goes on with the loaded version.

Every version is checked before it serves (``predictor.validate``, every store's whole horizon up to
``ahead_days``, ``--max-days-ahead``): a bad one is refused with one log line (naming the store and the
day for a forecast that is not finite) and a metric, never downloaded again, and the loaded version
goes on serving (at start the model stays not ready and says why).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from predictor.prefetch import PrefetchError
from predictor.source import ModelSource
from serving.contract import MAX_DAYS_AHEAD, Shard
from serving.logs import configure_logging

if TYPE_CHECKING:  # numpy is imported with the first table, not before (see predictor.prefetch)
    from predictor.prefetch import Prefetch
    from predictor.snapshot import Snapshot
    from predictor.table import ParamTable

log = logging.getLogger("storecast.predictor")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


__all__ = ["Loader", "Shard", "configure_logging"]


class Loader:
    """Holds the current snapshot of a source, loads it in the background and follows it."""

    def __init__(self, source: ModelSource, shard: Shard | None = None, refresh_seconds: float = 30.0,
                 prefetch: Prefetch | None = None, horizon_days: int = 366, ahead_days: int = MAX_DAYS_AHEAD) -> None:
        self.source = source
        self.horizon_days = horizon_days
        self.ahead_days = ahead_days  # a version must forecast finite values this far ahead (predictor.validate)
        self.prefetch = prefetch
        self.shard = shard
        self.refresh_seconds = float(refresh_seconds)
        self.current: Snapshot | None = None
        self.last_error: str | None = None
        self.refused: dict[str, str] = {}  # version -> why it was refused (never fetched again)
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._refusal_listeners: list[Callable[[str, str], None]] = []
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

    def on_refused(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(version, reason)`` whenever a version is refused by the checks."""
        self._refusal_listeners.append(listener)

    def refresh(self) -> bool:
        """Resolve the source now and swap in its version if it differs and passes the checks; True if
        swapped. Raises when the registry cannot be asked."""
        with self._lock:
            t0 = time.perf_counter()
            version = self.source.resolve()
            if (self.current is not None and self.current.version == version) or version in self.refused:
                return False
            return self._swap(version, self.source.fetch(version), t0)

    def _load_prefetched(self, prefetch: Prefetch) -> None:
        """The first version, fetched by a child process started with the server (predictor.prefetch)."""
        from predictor.table import ParamTable

        with self._lock:
            t0 = time.perf_counter()
            try:
                version, path = prefetch.result()
                if self.current is None or self.current.version != version:
                    try:
                        table = ParamTable.load(path)
                    except (ValueError, KeyError, OSError) as exc:  # not a table this predictor reads
                        self._refuse(version, f"{type(exc).__name__}: {exc}")
                    else:
                        self._swap(version, table, t0)
            finally:
                prefetch.cleanup()

    def _refuse(self, version: str, reason: str) -> None:
        """Remember and report a version that must not serve (one log line, the listeners told)."""
        self.refused[version] = reason
        self.last_error = f"version {version} was refused: {reason}"
        keeps = f"still serving version {self.current.version}" if self.current else "not ready: no version to serve"
        log.error("refused version %s of %s: %s; %s", version, self.source.uri, reason, keeps)
        for listener in list(self._refusal_listeners):
            listener(version, reason)

    def _swap(self, version: str, table: ParamTable, t0: float) -> bool:
        """Check and install a newly loaded version (caller holds the lock) and tell the listeners.

        It serves at once, evaluating every request; then each store's next ``horizon_days`` are
        evaluated and the snapshot is replaced by the same one with that horizon (same answers)."""
        from predictor.snapshot import Snapshot
        from predictor.validate import VersionRefused, check

        previous = self.current
        try:
            if self.shard is not None:
                table = table.shard(self.shard.k, self.shard.n)
            check(table, self.shard, self.ahead_days)
        except VersionRefused as exc:
            self._refuse(version, str(exc))
            return False
        except (ValueError, IndexError, TypeError, KeyError) as exc:  # arrays that do not fit together
            self._refuse(version, f"inconsistent table ({type(exc).__name__}: {exc})")
            return False
        snapshot = Snapshot.build(version, table, self.source.uri, self.shard, time.time(), horizon_days=0)
        self.current = snapshot  # the swap: one reference, read once per request
        self.last_error = None
        verb = "serving" if previous is None else f"swapped from version {previous.version} to"
        log.info("%s %s (loaded in %.2f s)", verb, snapshot.describe(), time.perf_counter() - t0)
        for listener in list(self._listeners):
            listener(snapshot)
        if self.horizon_days > 0 and len(table):
            t1 = time.perf_counter()
            self.current = snapshot.with_horizon(self.horizon_days)
            log.info("precomputed the next %d days of %d stores in %.2f s", self.horizon_days, len(table),
                     time.perf_counter() - t1)
        return True

    # ---- background thread ---------------------------------------------------------------------
    def start(self) -> None:
        """Start loading (and following) in a daemon thread; returns at once. Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="storecast-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        attempt, backoff = 0, FIRST_BACKOFF
        cap = min(MAX_BACKOFF, max(1.0, self.refresh_seconds))
        while not self._stopped.is_set():
            attempt += 1
            try:
                prefetch, self.prefetch = self.prefetch, None
                if prefetch is not None:
                    self._load_prefetched(prefetch)
                else:
                    self.refresh()
            except Exception as exc:  # the registry may be down: never let the thread die
                self.last_error = str(exc) if isinstance(exc, PrefetchError) else f"{type(exc).__name__}: {exc}"
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
        state["prefetch"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        started = state.pop("_started", False)
        self.__dict__.update(state)
        self._init_sync()
        if started:
            configure_logging()
            self.start()  # each worker process follows the alias on its own
