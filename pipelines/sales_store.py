"""The sales store: where daily sales land and how the retrain service reads them.

A store is one base table (the Rossmann layout, ``pipelines.data``) plus the days appended since,
each append one immutable part file in ``<base>.parts/`` (``part-<UTC time>-<id>.csv.gz``). Reading
merges the base and the parts in name order; a later row for the same (Store, Date) wins (a
correction). The base is one of:

- a file path (``/data/sales/train.csv.gz``, e.g. on a PersistentVolumeClaim), parts in a folder beside it;
- the URL of a file behind MLflow's artifact proxy
  (``http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/sales/train.csv.gz``): read with GET,
  parts listed with the proxy's list call and written with PUT, so the cluster needs no extra volume.

Any failure to read is ``SalesUnavailable`` naming the file and the problem (missing, a directory,
not gzip, truncated gzip, not a table, HTTP status); rows that cannot be trained on are ``BadSales``
naming the rows (``validate_sales``).
"""

from __future__ import annotations

import contextlib
import gzip
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data import open_days, read_sales, write_sales

PARTS = ".parts"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"
MAX_SALES = 1e9  # no store sells this much in a day
ABSURD_FACTOR = 50.0  # a day above this many times the store's median open-day sales is a typo
SHOW_ROWS = 5


class SalesUnavailable(RuntimeError):
    """The sales store cannot be read right now (answered 503; a job fails with this message)."""


class BadSales(ValueError):
    """Sales rows that must not be trained on (negative, not finite, missing on an open day, absurd)."""


@dataclass
class Sales:
    """The merged sales table and, per store, its last open day with a sales figure (days since epoch)."""

    frame: pd.DataFrame
    last: dict[str, int]
    files: list[str] = field(default_factory=list)


def describe(exc: BaseException) -> str:
    """What is wrong with a file, in words (the exception types pandas, gzip and the OS raise)."""
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a sales file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, EOFError):
        return "truncated gzip (the file ends before the end of its compressed stream)"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"not a valid gzip file ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return "not a text table (undecodable bytes)"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "empty: no table in it"
    if isinstance(exc, pd.errors.ParserError):
        return f"not a CSV table ({str(exc).strip()[:200]})"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


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
        self._lock = threading.Lock()
        self._key: Any = None
        self._sales: Sales | None = None
        self.error: str | None = None
        self.checked: float | None = None

    # ---- reading ------------------------------------------------------------------------
    def load(self) -> Sales:
        """The merged table (cached while no file changed); ``SalesUnavailable`` when it cannot be read."""
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
        if self._sales is not None and key == self._key and all(k[1] is not None for k in key):
            return self._sales
        frames = [self._read(name) for name, _ in files]
        frame = frames[0] if len(frames) == 1 else _merge(frames)
        od = open_days(frame)
        od = od[np.isfinite(od["y"].to_numpy())]
        last = od.groupby("store_id")["ds"].max()
        days = last.to_numpy().astype("datetime64[D]").astype(np.int64)
        self._sales = Sales(frame, dict(zip(last.index, days.tolist(), strict=True)), [n for n, _ in files])
        self._key = key
        return self._sales

    def _listing(self) -> list[tuple[str, Any]]:
        """(file, change key or None when unknown) of the base and every part, in merge order."""
        if not self.remote:
            base = Path(self.location)
            try:
                st = base.stat()
            except OSError as exc:
                raise SalesUnavailable(f"sales file {base}: {describe(exc)}") from None
            if base.is_dir():
                raise SalesUnavailable(f"sales file {base}: is a directory, not a sales file")
            out = [(str(base), (st.st_mtime_ns, st.st_size))]
            parts = Path(self.location + PARTS)
            if parts.is_dir():
                for p in sorted(parts.glob("part-*")):
                    s = p.stat()
                    out.append((str(p), (s.st_mtime_ns, s.st_size)))
            return out
        size = self._remote_sizes(self._proxy_path(self.location).rpartition("/")[0]).get(
            self.location.rpartition("/")[2]) if self._proxy_path(self.location) is not None else None
        out = [(self.location, size)]
        parts_path = self._proxy_path(self.location + PARTS)
        if parts_path is not None:
            for name, sz in sorted(self._remote_sizes(parts_path).items()):
                if name.startswith("part-"):
                    out.append((f"{self.location}{PARTS}/{name}", sz))
        return out

    def _read(self, name: str) -> pd.DataFrame:
        if not self.remote:
            return read_file(Path(name))
        import httpx

        try:
            r = httpx.get(name, timeout=self.timeout, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales file {name}: unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code == 404:
            raise SalesUnavailable(f"sales file {name}: does not exist (HTTP 404)")
        if r.status_code >= 400:
            raise SalesUnavailable(f"sales file {name}: HTTP {r.status_code} {r.text[:200]}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / (name.split("?")[0].rpartition("/")[2] or "sales.csv")
            path.write_bytes(r.content)
            return read_file(path, name)

    def _proxy_path(self, url: str) -> str | None:
        """The artifact path of a URL behind MLflow's artifact proxy (None for another server)."""
        _, sep, tail = url.partition(PROXY + "/")
        return tail.strip("/") if sep else None

    def _remote_sizes(self, path: str) -> dict[str, int | None]:
        """name -> size of the files in an artifact-proxy folder ({} when it does not exist)."""
        import httpx

        root = self.location.partition(PROXY)[0] + PROXY
        try:
            r = httpx.get(root, params={"path": path}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales store {self.location}: unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code >= 400:
            raise SalesUnavailable(f"sales store {root}?path={path}: HTTP {r.status_code} {r.text[:200]}")
        files = r.json().get("files", []) if r.content else []
        return {f["path"].rpartition("/")[2]: f.get("file_size") for f in files if not f.get("is_dir")}

    # ---- writing ------------------------------------------------------------------------
    def append(self, rows: pd.DataFrame, tag: str | None = None) -> str:
        """Validate ``rows`` (against the store's history) and write them as a new part; returns its name."""
        current = self.load()
        validate_sales(rows, reference=current.frame)
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}Z"
        safe = "".join(c for c in (tag or uuid.uuid4().hex) if c.isalnum())[:16] or uuid.uuid4().hex[:16]
        name = f"part-{stamp}-{safe}.csv.gz"
        with tempfile.TemporaryDirectory() as tmp:
            local = write_sales(rows, Path(tmp) / name)
            if not self.remote:
                folder = Path(self.location + PARTS)
                target = folder / name
                tmp_target = folder / f".{name}.tmp"
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    tmp_target.write_bytes(local.read_bytes())
                    tmp_target.replace(target)  # atomic: a reader sees the whole part or none
                except OSError as exc:  # full disk, read-only volume, ...
                    tmp_target.unlink(missing_ok=True)
                    raise SalesUnavailable(f"sales store {folder}: cannot write {name}: {describe(exc)}") from None
                return str(target)
            import httpx

            url = f"{self.location}{PARTS}/{name}"
            try:
                r = httpx.put(url, content=local.read_bytes(), timeout=self.timeout)
            except httpx.HTTPError as exc:
                raise SalesUnavailable(f"sales store {url}: unreachable ({exc})") from None
            if r.status_code >= 400:
                raise SalesUnavailable(f"sales store {url}: upload failed, HTTP {r.status_code} {r.text[:200]}")
            return url

    def health(self) -> dict[str, Any]:
        """Whether the store could be read the last time (re-checked now when it never was)."""
        if self.checked is None:
            with contextlib.suppress(SalesUnavailable):
                self.load()
        return {"ok": self.error is None, "location": self.location, "error": self.error,
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
