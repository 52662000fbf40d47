"""Recent actual sales per store, from the sales store the retrain service reads (base plus appended parts).

``--sales`` is the store's location as everywhere else (``pipelines.data.sales_store.SalesStore``): a path,
or the URL of the base behind MLflow's artifact proxy. Every ``--sales-check-seconds`` at most the store
is asked whether anything changed (the base's mtime and size, or its ``ETag`` from one HEAD, and the
listing of the parts: no data moves while nothing did); a new part or a new base is read and merged, so
actuals appended with ``storecast data append`` or ``com.storecast.sales.appended`` show at the next reload.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("storecast.dashboard")
KEEP_DAYS = 84  # the last 12 weeks of each store are kept; the page asks for 4 by default


@dataclass
class Recent:
    """The last days of every store: ISO dates, sales, open flags (one list each)."""

    data_end: str = ""
    stores: dict[str, dict[str, list]] = field(default_factory=dict)
    error: str = ""


class SalesCache:
    """``--sales STORE``: the last ``KEEP_DAYS`` of each store, worked out again when the store changed."""

    def __init__(self, location: str, check_seconds: float = 5.0, keep_days: int = KEEP_DAYS) -> None:
        from pipelines.data.sales_store import SalesStore

        self.store = SalesStore(location) if location else None
        self.check_seconds, self.keep_days = check_seconds, keep_days
        self._seen: object | None = None  # the store's Sales object the current table came from
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self.recent = Recent()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def get(self) -> Recent:
        """The current table, worked out again first if the store changed (asked at most every ``check_seconds``)."""
        if self.store is None:
            return self.recent
        if time.monotonic() - self._checked >= self.check_seconds:
            with self._lock:
                if time.monotonic() - self._checked >= self.check_seconds:
                    self._refresh()
                    self._checked = time.monotonic()
        return self.recent

    def _refresh(self) -> None:
        from pipelines.data.sales_store import SalesUnavailable

        t0 = time.perf_counter()
        try:
            sales = self.store.load()
        except SalesUnavailable as exc:  # keep the last table; the page shows the error
            self.recent = Recent(self.recent.data_end, self.recent.stores, self._short(str(exc)))
            log.warning("%s", exc)
            return
        if sales is self._seen:
            if self.recent.error:
                self.recent = Recent(self.recent.data_end, self.recent.stores)
            return
        self.recent, self._seen = self._recent(sales.frame), sales
        log.info("sales %s read in %.2f s (%d file(s)): %d stores up to %s", self._name(),
                 time.perf_counter() - t0, len(sales.files), len(self.recent.stores), self.recent.data_end or "-")

    def _name(self) -> str:
        return Path(self.store.location.split("?")[0]).name

    def _short(self, message: str) -> str:
        """An error without the folders of the server's disk or the store's host (the file name stays)."""
        where = self.store.location.split("?")[0]
        return message.replace(where.rpartition("/")[0] + "/", "")

    def _recent(self, df: pd.DataFrame) -> Recent:
        """The last ``keep_days`` days up to the last day with a sales figure (calendar rows are not actuals)."""
        df = df[np.isfinite(df["Sales"].to_numpy(dtype=np.float64))]
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
        """The answer of ``/api/sales``: each known store's last ``days`` days up to the store's end."""
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
