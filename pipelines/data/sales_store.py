"""The sales store: where daily sales and calendars land, and the one reader of both.

A store is one base table (the Rossmann layout, ``pipelines.data.sales_csv``) plus the days appended since,
each append one immutable part file in ``<base>.parts/`` (``part-<UTC time>-<id>.csv.gz``), and the
calendars uploaded to it (``<base>.calendars/``, ``pipelines.data.store_objects``). Reading merges the base
and the parts in name order; a later row for the same (Store, Date) wins (a correction). The base is one of:

- a file path (``/data/sales/train.csv.gz``, e.g. on a PersistentVolumeClaim), parts in a folder beside it;
- the URL of a file behind MLflow's artifact proxy
  (``http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/sales/train.csv.gz``): read with GET,
  parts listed with the proxy's list call and written with PUT, so the cluster needs no extra volume.

Everyone who reads sales reads them here: the retrain service (jobs, the drift watch), ``storecast
train``, ``storecast data append`` and the dashboard. ``load`` is cheap while nothing changed: it
compares the base's (mtime, size) or, for a URL, its ``ETag``/``Last-Modified`` (one HEAD) and the
parts' listing; a changed or new file is read alone and merged again, the others come from memory.

Any failure to read is ``SalesUnavailable`` naming the file and the problem (missing, a directory,
not gzip, truncated gzip, not a table, HTTP status; a URL without its credentials or query: ``redact``);
rows that cannot be trained on are ``BadSales`` naming the rows (``validate_sales``); rows of stores the
caller does not know are ``UnknownStores``. Only regular files are parts of a local store: a symlink, a
FIFO or a device in ``<base>.parts/`` is left out, never opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data import store_objects
from pipelines.data.sales_csv import open_days, read_sales, write_sales
from pipelines.data.store_objects import CalendarRefused, Objects, SalesUnavailable, describe, object_name, redact
from serving.contract import store_sort_key
from serving.mlflow_env import http_credentials

__all__ = ["BadSales", "CalendarRefused", "Sales", "SalesStore", "SalesUnavailable", "UnknownStores", "read_file",
           "redact", "sales_problems", "validate_sales"]

PARTS = ".parts"
MAX_SALES = 1e9  # no store sells this much in a day
ABSURD_FACTOR = 50.0  # a day above this many times the store's median open-day sales is a typo
SHOW_ROWS = 5


class BadSales(ValueError):
    """Sales rows that must not be trained on (negative, not finite, missing on an open day, absurd)."""


class UnknownStores(BadSales):
    """Sales rows naming stores the caller's version does not hold (refused unless kept on purpose)."""

    def __init__(self, stores: list[str]) -> None:
        self.stores = stores
        more = f" (and {len(stores) - SHOW_ROWS} more)" if len(stores) > SHOW_ROWS else ""
        super().__init__(f"sales rejected: {len(stores)} store(s) the version does not hold: "
                         f"{', '.join(stores[:SHOW_ROWS])}{more}; nothing was written (--keep-unknown-stores "
                         "keeps their rows for when those stores are trained)")


@dataclass
class Sales:
    """The merged sales table and, per store, its last open day with a sales figure (days since epoch)."""

    frame: pd.DataFrame
    last: dict[str, int]
    files: list[str] = field(default_factory=list)


def read_file(path: Path, label: str | None = None) -> pd.DataFrame:
    """``read_sales`` with any failure as ``SalesUnavailable`` naming the file and the problem."""
    label = label or str(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(str(path))
        return read_sales(path)
    except Exception as exc:  # every failure names the file; nothing reaches a client as a 500
        problem = describe(exc)
        problem = problem.removeprefix(f"ValueError: {path}: ")
        raise SalesUnavailable(f"sales file {label}: {problem}") from None


class SalesStore:
    """One sales store (a path or an artifact-proxy URL); ``load`` caches until a file changes."""

    def __init__(self, location: str, timeout: float = 60.0) -> None:
        self.location = location.removeprefix("file://")
        self.remote = self.location.startswith(("http://", "https://"))
        self.timeout = timeout
        self.objects = Objects(self.location, timeout)
        self._lock = threading.Lock()
        self._key: Any = None
        self._files: dict[str, tuple[Any, str | None, pd.DataFrame]] = {}  # name -> (change key, digest, frame)
        self._inputs: list[pd.DataFrame] = []
        self._sales: Sales | None = None
        self.error: str | None = None
        self.checked: float | None = None

    # ---- reading ------------------------------------------------------------------------
    def load(self) -> Sales:
        """The merged table (the same object while no file changed); ``SalesUnavailable`` when it cannot be read."""
        with self._lock:
            try:
                sales = self._load()
            except SalesUnavailable as exc:
                self.error, self.checked = str(exc), time.time()
                raise
            self.error, self.checked = None, time.time()
            return sales

    def _load(self) -> Sales:
        files = self._listing()
        key = tuple(files)
        if self._sales is not None and key == self._key and all(k is not None for _, k in files):
            return self._sales
        entries = {}
        for name, k in files:
            hit = self._files.get(name)
            if hit is None or k is None or hit[0] != k:
                digest, frame = self._read(name, hit)
                hit = (k, digest, frame)
            entries[name] = hit
        inputs = [e[2] for e in entries.values()]
        if self._sales is None or len(inputs) != len(self._inputs) or \
                any(a is not b for a, b in zip(inputs, self._inputs, strict=True)):
            frame = inputs[0] if len(inputs) == 1 else _merge(inputs)
            od = open_days(frame)
            od = od[np.isfinite(od["y"].to_numpy())]
            last = od.groupby("store_id")["ds"].max()
            days = last.to_numpy().astype("datetime64[D]").astype(np.int64)
            self._sales = Sales(frame, dict(zip(last.index, days.tolist(), strict=True)), list(entries))
            self._inputs = inputs
        self._files, self._key = entries, key
        return self._sales

    def _listing(self) -> list[tuple[str, Any]]:
        """(file, change key or None when unknown) of the base and every part, in merge order."""
        parts = sorted((n, k) for n, k in self.objects.listing(PARTS).items()
                       if n.startswith("part-") and (self.remote or k is not None))  # local: regular files only
        folder = f"{self.location}{PARTS}/" if self.remote else str(Path(self.location + PARTS)) + "/"
        return [(self.location, self._base_key()), *((folder + n, k) for n, k in parts)]

    def _base_key(self) -> Any:
        """(mtime, size) of the base file; for a URL its validators from one HEAD (None: the server gives none)."""
        if not self.remote:
            try:
                st = Path(self.location).stat()
            except OSError as exc:
                raise SalesUnavailable(f"sales file {self.location}: {describe(exc)}") from None
            if stat.S_ISDIR(st.st_mode):
                raise SalesUnavailable(f"sales file {self.location}: is a directory, not a sales file")
            return st.st_mtime_ns, st.st_size
        import httpx

        try:
            r = httpx.head(self.location, timeout=self.timeout, follow_redirects=True,
                           **http_credentials(self.location))
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales file {self.location}: unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code == 404:
            raise SalesUnavailable(f"sales file {self.location}: does not exist (HTTP 404)")
        found = tuple(r.headers.get(h) for h in ("etag", "last-modified", "content-length"))
        return found if r.status_code < 400 and (found[0] or found[1]) else None

    def _read(self, name: str, hit: tuple[Any, str | None, pd.DataFrame] | None) -> tuple[str | None, pd.DataFrame]:
        """(digest, frame) of one file; a URL whose bytes did not change keeps the frame it had."""
        if not self.remote:
            return None, read_file(Path(name))
        import httpx

        try:
            r = httpx.get(name, timeout=self.timeout, follow_redirects=True, **http_credentials(name))
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales file {name}: unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code == 404:
            raise SalesUnavailable(f"sales file {name}: does not exist (HTTP 404)")
        if r.status_code >= 400:
            raise SalesUnavailable(f"sales file {name}: HTTP {r.status_code} {r.text[:200]}")
        digest = hashlib.sha256(r.content).hexdigest()
        if hit is not None and hit[1] == digest:
            return digest, hit[2]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / (name.split("?")[0].rpartition("/")[2] or "sales.csv")
            path.write_bytes(r.content)
            return digest, read_file(path, name)

    # ---- writing ------------------------------------------------------------------------
    def append(self, rows: pd.DataFrame, known: Any = None, keep_unknown: bool = False, tag: str | None = None) -> str:
        """Validate ``rows`` and write them as a new part; returns its path or URL.

        ``known``: the stores of the caller's version (None: not checked). Rows of a store neither in it
        nor already in this store's history are refused with ``UnknownStores`` and nothing is written;
        ``keep_unknown=True`` stores them anyway (they are trained when those stores first are). Every
        row is checked against the store's history (``validate_sales``).
        """
        current = self.load()
        if known is not None and not keep_unknown:
            have = {str(s) for s in known} | set(current.frame["Store"].unique().tolist())
            unknown = sorted(set(rows["Store"].astype(str).unique().tolist()) - have, key=store_sort_key)
            if unknown:
                raise UnknownStores(unknown)
        validate_sales(rows, reference=current.frame)
        name = object_name("part", tag)
        with tempfile.TemporaryDirectory() as tmp:
            data = write_sales(rows, Path(tmp) / name).read_bytes()
        return self.objects.put(PARTS, name, data)

    # ---- calendars (pipelines.data.store_objects) -----------------------------------------------
    def put_calendar(self, frame: pd.DataFrame) -> str:
        """Store a calendar (``pipelines.data.calendar.read_calendar``'s frame) as a new object; returns its ref."""
        return store_objects.put_calendar(self.objects, frame)

    def read_calendar(self, ref: str) -> pd.DataFrame:
        """The calendar ``ref`` through the bounded reader: ``CalendarRefused`` (400) or ``SalesUnavailable`` (503)."""
        return store_objects.read_calendar(self.objects, ref)

    def calendar_refs(self) -> list[str]:
        """The refs of the store's calendars, oldest first."""
        return store_objects.calendar_refs(self.objects)

    def read_calendars(self, refs: list[str] | None = None) -> pd.DataFrame | None:
        """Calendars ``refs`` (default: all, oldest first) as one, a later upload winning on a store-day; None: none."""
        return store_objects.read_calendars(self.objects, refs)

    def health(self) -> dict[str, Any]:
        """Whether the store could be read the last time (re-checked now when it never was)."""
        if self.checked is None:
            with contextlib.suppress(SalesUnavailable):
                self.load()
        return {"ok": self.error is None, "location": redact(self.location), "error": self.error,
                "checked": self.checked}


def _merge(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Base and parts as one table sorted by (Store, Date); a later row for the same day wins."""
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.drop_duplicates(["Store", "Date"], keep="last")
    return frame.sort_values(["Store", "Date"], kind="stable").reset_index(drop=True)


# ---- validation -----------------------------------------------------------------------------
def sales_problems(df: pd.DataFrame, *, reference: pd.DataFrame | None = None, max_sales: float = MAX_SALES,
                   absurd_factor: float = ABSURD_FACTOR) -> list[str]:
    """Every row that must not be trained on, as "Store S on DATE: Sales X <why>".

    Negative or non-finite sales, a missing figure on an open day (a day after the store's last
    figure with none is a calendar row, not missing), above ``max_sales``, or above ``absurd_factor``
    times the store's median open-day sales (of ``reference`` when given, else of ``df``).
    """
    if df.empty:
        return []
    y = df["Sales"].to_numpy(dtype=np.float64)
    is_open = df["Open"].to_numpy() == 1 if "Open" in df.columns else np.ones(len(df), dtype=bool)
    day = df["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    store = df["Store"].astype(str).to_numpy()
    codes, uniques = pd.factorize(store)
    has = np.isfinite(y)
    last = np.full(len(uniques), np.iinfo(np.int64).min)
    np.maximum.at(last, codes[has], day[has])
    if reference is not None:
        ref_day = reference["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
        ref_y = reference["Sales"].to_numpy(dtype=np.float64)
        ref_last = pd.Series(ref_day[np.isfinite(ref_y)]).groupby(
            reference["Store"].astype(str).to_numpy()[np.isfinite(ref_y)]).max()
        last = np.maximum(last, ref_last.reindex(uniques).fillna(np.iinfo(np.int64).min).to_numpy(np.int64))
    median = _medians(reference if reference is not None else df, uniques)
    why = np.full(len(df), "", dtype=object)
    with np.errstate(invalid="ignore"):
        why[np.isnan(y) & is_open & (day <= last[codes])] = "missing on an open day"
        why[np.isinf(y)] = "is not finite"
        why[y < 0] = "is negative"
        absurd = (y > max_sales) | (y > absurd_factor * median[codes])
    why[absurd & (why == "")] = "is absurd"
    bad = np.flatnonzero(why != "")
    out = []
    for i in bad:
        text = f"Store {store[i]} on {np.datetime64(int(day[i]), 'D')}: Sales {y[i]:g} {why[i]}"
        if why[i] == "is absurd":
            text += f" (over {max_sales:g}, or over {absurd_factor:g} x the store's median {median[codes[i]]:g})"
        out.append(text)
    return out


def validate_sales(df: pd.DataFrame, *, reference: pd.DataFrame | None = None, max_sales: float = MAX_SALES,
                   absurd_factor: float = ABSURD_FACTOR) -> None:
    """Raise ``BadSales`` naming the bad rows (the first few, and how many) of ``sales_problems``."""
    problems = sales_problems(df, reference=reference, max_sales=max_sales, absurd_factor=absurd_factor)
    if problems:
        more = f" (and {len(problems) - SHOW_ROWS} more)" if len(problems) > SHOW_ROWS else ""
        raise BadSales(f"sales rejected, {len(problems)} bad row(s): " + "; ".join(problems[:SHOW_ROWS]) + more)


def _medians(df: pd.DataFrame, stores: np.ndarray, least: int = 14) -> np.ndarray:
    """Each store's median positive open-day sales (inf, i.e. no bound, with fewer than ``least`` days)."""
    y = df["Sales"].to_numpy(dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    if "Open" in df.columns:
        ok &= df["Open"].to_numpy() == 1
    grouped = pd.Series(y[ok]).groupby(df["Store"].astype(str).to_numpy()[ok])
    med = grouped.median().where(grouped.size() >= least)
    return med.reindex(stores).fillna(np.inf).to_numpy(np.float64)
