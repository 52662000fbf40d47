"""Recent actual sales per store from a sales file, read once and again only when the file changes."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("storecast.dashboard")
KEEP_DAYS = 84  # the last 12 weeks of each store are kept; the page asks for 4 by default


@dataclass
class Recent:
    """The last days of every store: ISO dates, sales, open flags (one list each)."""

    data_end: str = ""
    stores: dict[str, dict[str, list]] = field(default_factory=dict)
    error: str = ""


class SalesCache:
    """``--sales FILE``: the last ``KEEP_DAYS`` of each store, re-read when (mtime, size) changes."""

    def __init__(self, path: str, check_seconds: float = 5.0, keep_days: int = KEEP_DAYS) -> None:
        self.path = Path(path) if path else None
        self.check_seconds, self.keep_days = check_seconds, keep_days
        self._key: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.recent = Recent()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def get(self) -> Recent:
        """The current table, re-read first if the file changed (checked at most every ``check_seconds``)."""
        if self.path is None:
            return self.recent
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            with self._lock:
                if now - self._checked >= self.check_seconds:
                    self._refresh()
                    self._checked = time.monotonic()
        return self.recent

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            self.recent = Recent(error=f"sales file {self.path.name}: {exc.strerror or exc}")
            self._key = None
            return
        key = (st.st_mtime_ns, st.st_size)
        if key == self._key:
            return
        t0 = time.perf_counter()
        try:
            self.recent = self._read()
        except (OSError, ValueError, EOFError) as exc:  # a bad file is reported, the old table is dropped
            self.recent = Recent(error=f"sales file {self.path.name}: {exc}")
            log.warning("cannot read %s: %s", self.path, exc)
        self._key = key
        log.info("sales %s read in %.2f s: %d stores up to %s", self.path.name, time.perf_counter() - t0,
                 len(self.recent.stores), self.recent.data_end or "-")

    def _read(self) -> Recent:
        from pipelines.data import read_sales

        df = read_sales(self.path)
        if df.empty:
            return Recent()
        end = df["Date"].max()
        df = df[df["Date"] > end - np.timedelta64(self.keep_days, "D")]
        stores: dict[str, dict[str, list]] = {}
        dates = df["Date"].dt.strftime("%Y-%m-%d").to_numpy()
        store = df["Store"].to_numpy()
        sales, is_open = df["Sales"].to_numpy(), df["Open"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, store[1:] != store[:-1], True])  # rows are sorted by store
        for a, b in itertools.pairwise(bounds):
            stores[str(store[a])] = {"dates": dates[a:b].tolist(), "sales": sales[a:b].tolist(),
                                     "open": is_open[a:b].astype(int).tolist()}
        return Recent(data_end=end.strftime("%Y-%m-%d"), stores=stores)

    def view(self, ids: list[str], days: int) -> dict:
        """The answer of ``/api/sales``: each known store's last ``days`` days up to the file's end."""
        recent = self.get()
        days = max(1, min(days, self.keep_days))
        out, unknown = {}, []
        if recent.data_end:
            first = str(np.datetime64(recent.data_end) - np.timedelta64(days - 1, "D"))
        for s in ids:
            rows = recent.stores.get(s)
            if rows is None:
                unknown.append(s)
                continue
            i = int(np.searchsorted(np.asarray(rows["dates"]), first))
            out[s] = {k: v[i:] for k, v in rows.items()}
        answer = {"data_end": recent.data_end, "stores": out, "unknown": unknown}
        if recent.error:
            answer["error"] = recent.error
        return answer
