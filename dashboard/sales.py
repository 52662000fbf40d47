"""Recent actual sales per store from a sales file, read once and again only when the file changes.

``--sales`` is a path (re-read when its mtime or size changes) or an ``http(s)://`` URL, e.g. the
sales table behind MLflow's artifact proxy as the retrain service reads it (fetched again at most
once a minute, with ``If-None-Match``/``If-Modified-Since``, and parsed only when its bytes changed).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("storecast.dashboard")
KEEP_DAYS = 84  # the last 12 weeks of each store are kept; the page asks for 4 by default
URL_CHECK_SECONDS = 60.0


@dataclass
class Recent:
    """The last days of every store: ISO dates, sales, open flags (one list each)."""

    data_end: str = ""
    stores: dict[str, dict[str, list]] = field(default_factory=dict)
    error: str = ""


class SalesCache:
    """``--sales FILE``: the last ``KEEP_DAYS`` of each store, re-read when (mtime, size) changes."""

    def __init__(self, path: str, check_seconds: float = 5.0, keep_days: int = KEEP_DAYS) -> None:
        self.url = path if path.startswith(("http://", "https://")) else ""
        self.path = Path(path) if path and not self.url else None
        self.check_seconds, self.keep_days = check_seconds, keep_days
        if self.url:
            self.check_seconds = max(check_seconds, URL_CHECK_SECONDS)
        self._key: tuple | None = None
        self._validators: dict[str, str] = {}
        self._checked = 0.0
        self._lock = threading.Lock()
        self.recent = Recent()

    @property
    def enabled(self) -> bool:
        return self.path is not None or bool(self.url)

    def get(self) -> Recent:
        """The current table, re-read first if the file changed (checked at most every ``check_seconds``)."""
        if not self.enabled:
            return self.recent
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            with self._lock:
                if now - self._checked >= self.check_seconds:
                    self._refresh()
                    self._checked = time.monotonic()
        return self.recent

    def _refresh(self) -> None:
        if self.url:
            self._refresh_url()
            return
        try:
            st = self.path.stat()
        except OSError as exc:
            self.recent = Recent(error=f"sales file {self.path.name}: {exc.strerror or exc}")
            self._key = None
            return
        key = (st.st_mtime_ns, st.st_size)
        if key == self._key:
            return
        self._key = key
        self._load(self.path, self.path.name)

    def _refresh_url(self) -> None:
        import httpx

        name = Path(self.url.split("?")[0]).name or "sales.csv"
        try:
            r = httpx.get(self.url, headers=self._validators, timeout=60, follow_redirects=True)
            if r.status_code == 304:
                return
            r.raise_for_status()
        except httpx.HTTPError as exc:  # keep the last table; the page shows the error
            self.recent = Recent(self.recent.data_end, self.recent.stores, f"sales {name}: {exc}")
            log.warning("cannot fetch %s: %s", name, exc)
            return
        self._validators = {h: r.headers[k] for h, k in (("if-none-match", "etag"),
                                                          ("if-modified-since", "last-modified")) if k in r.headers}
        key = (hashlib.sha256(r.content).hexdigest(),)
        if key == self._key:
            return
        self._key = key
        with tempfile.TemporaryDirectory(prefix="storecast-dashboard-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(r.content)
            self._load(path, name)

    def _load(self, path: Path, name: str) -> None:
        t0 = time.perf_counter()
        try:
            self.recent = self._read(path)
        except (OSError, ValueError, EOFError) as exc:  # a bad file is reported, the old table is dropped
            self.recent = Recent(error=f"sales file {name}: {exc}")
            log.warning("cannot read %s: %s", name, exc)
        log.info("sales %s read in %.2f s: %d stores up to %s", name, time.perf_counter() - t0,
                 len(self.recent.stores), self.recent.data_end or "-")

    def _read(self, path: Path) -> Recent:
        from pipelines.data import read_sales

        df = read_sales(path)
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
