"""The objects of a sales store beside its base file: where they live, how they are written and read back.

A store's location is a file path (objects in folders beside it: ``<base>.parts/``, ``<base>.calendars/``)
or the URL of a file behind MLflow's artifact proxy (the same folders under the same artifact path, listed
with the proxy's list call, written with PUT, read with GET). Objects are immutable and named
``<kind>-<UTC time>-<id>.csv.gz``, so name order is time order; a local object is written to a hidden
temporary file and renamed (a reader sees all of it or nothing).

Calendars (Rossmann ``test.csv`` layout) are such objects: ``put_calendar`` stores one and returns its
name, the *ref* a ``com.storecast.calendar.updated`` event carries; ``read_calendar`` reads one back
through a bounded reader, because a ref arrives in a request: only a plain calendar name
(``REF``), only inside the store's calendar folder (a local file is opened without following a
symlink, without blocking, and must be a regular file with one link; a URL is fetched without
following redirects and must be a file the proxy lists), at most ``MAX_BYTES`` stored and
``MAX_TEXT`` unpacked, within ``TIMEOUT`` seconds. Errors never quote the object's contents, and
anything that is not a calendar object of the store is "not allowed", whatever it is and whether or not
it exists (a symlink, a FIFO, a device, a hard link, a folder and a missing name get the same words;
``CalendarRefused``, a ValueError: 400); a store that does not answer, or not in time, is
``SalesUnavailable`` (503: asking later may work). Parsing is ``pipelines.data.calendar.read_calendar``'s.

No message of this module or the sales store carries a URL's credentials or query (``redact``): a store
URL with ``user:password@`` or a token in its query is shown without them.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import stat
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from serving.mlflow_env import http_credentials

PROXY = "/api/2.0/mlflow-artifacts/artifacts"
CALENDARS = ".calendars"
REF = re.compile(r"calendar-\d{8}T\d{12}Z-[0-9a-z]{1,32}\.csv\.gz")
MAX_BYTES = 16 << 20  # a stored calendar (gzip): a year of 1,115 stores is about 1 MB
MAX_TEXT = 128 << 20  # the same unpacked
TIMEOUT = 30.0  # seconds to read one calendar, URL or file
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#'\"]*)[?#][^\s'\")]*?([:,;.]?)(?=[\s'\")]|$)")


def redact(text: str) -> str:
    """``text`` with every URL's credentials (``user:password@``) and query or fragment (tokens) left out."""
    return _QUERY.sub(r"\1\2", _USERINFO.sub(r"\1", text))


class SalesUnavailable(RuntimeError):
    """The sales store cannot be read right now (answered 503; a job fails with this message, redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class CalendarRefused(ValueError):
    """A calendar ref that cannot be served from the store (answered 400): the message says why, never the content."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def not_allowed(what: str) -> CalendarRefused:
    """The one refusal of anything that is not an object of the store, whether or not it exists."""
    return CalendarRefused(f"{what}: not allowed (no object of the sales store by that name)")


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


def object_name(kind: str, tag: str | None = None) -> str:
    """``<kind>-<UTC time to the microsecond>Z-<id>.csv.gz``: unique, and name order is time order."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}Z"
    safe = "".join(c for c in (tag or uuid.uuid4().hex).lower() if c.isascii() and c.isalnum())[:16]
    return f"{kind}-{stamp}-{safe or uuid.uuid4().hex[:16]}.csv.gz"


class Objects:
    """The objects beside one base (a path or an artifact-proxy URL)."""

    def __init__(self, location: str, timeout: float = 60.0) -> None:
        self.location = location
        self.remote = location.startswith(("http://", "https://"))
        self.timeout = timeout

    def proxy_path(self, url: str) -> str | None:
        """The artifact path of a URL behind MLflow's artifact proxy (None for another server)."""
        _, sep, tail = url.partition(PROXY + "/")
        return tail.strip("/") if sep else None

    def listing(self, folder: str, timeout: float | None = None) -> dict[str, Any]:
        """name -> change key of the files in ``<base><folder>/`` ({} when it does not exist).

        The key is (mtime, size) of a local file, the size the proxy lists for a URL; None for anything
        that is not a plain file (a directory, a symlink, a FIFO). Hidden (temporary) files are left out.
        """
        if not self.remote:
            path = Path(self.location + folder)
            if not path.is_dir():
                return {}
            out: dict[str, Any] = {}
            for p in path.iterdir():
                try:
                    st = p.lstat()
                except OSError:  # gone since the listing
                    continue
                if not p.name.startswith("."):
                    out[p.name] = (st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else None
            return out
        path = self.proxy_path(self.location + folder)
        if path is None:
            return {}
        import httpx

        root = self.location.partition(PROXY)[0] + PROXY
        try:
            r = httpx.get(root, params={"path": path}, timeout=timeout or self.timeout, **http_credentials(root))
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales store {self.location}: unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code >= 400:
            raise SalesUnavailable(f"sales store {root}?path={path}: HTTP {r.status_code} {r.text[:200]}")
        files = r.json().get("files", []) if r.content else []
        return {f["path"].rpartition("/")[2]: f.get("file_size") for f in files if not f.get("is_dir")}

    def put(self, folder: str, name: str, data: bytes) -> str:
        """Write one object (atomically on a file system); returns its path or URL."""
        if not self.remote:
            where = Path(self.location + folder)
            target, tmp = where / name, where / f".{name}.tmp"
            try:
                where.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
                tmp.replace(target)  # atomic: a reader sees the whole object or none
            except OSError as exc:  # full disk, read-only volume, ...
                tmp.unlink(missing_ok=True)
                raise SalesUnavailable(f"sales store {where}: cannot write {name}: {describe(exc)}") from None
            return str(target)
        import httpx

        url = f"{self.location}{folder}/{name}"
        try:
            r = httpx.put(url, content=data, timeout=self.timeout, **http_credentials(url))
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales store {url}: unreachable ({exc})") from None
        if r.status_code >= 400:
            raise SalesUnavailable(f"sales store {url}: upload failed, HTTP {r.status_code} {r.text[:200]}")
        return url

    # ---- the bounded reader -----------------------------------------------------------------
    def read_bounded(self, folder: str, name: str, what: str, limit: int = MAX_BYTES,
                     timeout: float = TIMEOUT) -> bytes:
        """The bytes of ``<base><folder>/<name>``, a plain object of this store, within ``limit`` and ``timeout``.

        ``CalendarRefused`` ("not allowed", "no such", "over the limit": asking again cannot help), or
        ``SalesUnavailable`` when the store does not answer, or not within ``timeout`` (503: later may work);
        no message quotes what was read.
        """
        deadline = time.monotonic() + timeout
        if not self.remote:
            return _read_file(Path(self.location + folder), name, what, limit, deadline, timeout)
        size = self.listing(folder, timeout).get(name)
        if size is None:  # not listed, or not a file
            raise not_allowed(what)
        if size > limit:
            raise CalendarRefused(f"{what}: {size} bytes, over the limit of {limit}")
        return self._get_bounded(f"{self.location}{folder}/{name}", what, limit, deadline, timeout)

    def _get_bounded(self, url: str, what: str, limit: int, deadline: float, timeout: float) -> bytes:
        import httpx

        chunks, total = [], 0
        step = max(0.5, timeout / 5)  # no single wait longer than this; the deadline bounds the whole read
        try:
            with httpx.Client(timeout=httpx.Timeout(step), follow_redirects=False, **http_credentials(url)) as client, \
                    client.stream("GET", url, headers={"accept-encoding": "identity"}) as r:
                if r.status_code >= 500:
                    raise SalesUnavailable(f"sales store {self.location}: HTTP {r.status_code} reading {what}")
                if r.status_code != 200:  # gone, a redirect, a refusal (the proxy's answer to a symlink)
                    raise not_allowed(what)
                for chunk in r.iter_raw():  # whatever arrived: a trickle meets the deadline
                    total += len(chunk)
                    if total > limit:
                        raise CalendarRefused(f"{what}: over the limit of {limit} bytes")
                    if time.monotonic() > deadline:
                        raise SalesUnavailable(f"sales store {self.location}: reading {what} took longer than "
                                               f"{timeout:g} s")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise SalesUnavailable(f"sales store {self.location}: reading {what} took longer than {timeout:g} s") \
                from None
        except httpx.HTTPError as exc:
            raise SalesUnavailable(f"sales store {self.location}: unreachable ({type(exc).__name__})") from None
        return b"".join(chunks)


def _read_file(folder: Path, name: str, what: str, limit: int, deadline: float, timeout: float) -> bytes:
    """A regular file of ``folder`` (itself not a symlink), opened without following links or blocking."""
    refused = not_allowed(what)  # a missing name too: the words never tell what exists
    cloexec = getattr(os, "O_CLOEXEC", 0)
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | cloexec)
    except OSError:
        raise refused from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | cloexec, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.EIO):
            raise SalesUnavailable(f"sales store {folder}: cannot open {what} ({exc.strerror})") from None
        raise refused from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a FIFO, a device, a hard link to elsewhere
            raise refused
        if st.st_size > limit:
            raise CalendarRefused(f"{what}: {st.st_size} bytes, over the limit of {limit}")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise CalendarRefused(f"{what}: over the limit of {limit} bytes")
            if time.monotonic() > deadline:
                raise SalesUnavailable(f"sales store {folder}: reading {what} took longer than {timeout:g} s")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise SalesUnavailable(f"sales store {folder}: cannot read {what} ({exc.strerror})") from None
    finally:
        os.close(fd)


def gunzip_bounded(data: bytes, what: str, limit: int = MAX_TEXT) -> bytes:
    """The gzip member unpacked, refused past ``limit`` bytes (a small file may unpack to gigabytes)."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        raise CalendarRefused(f"{what}: not a calendar object (not gzip)") from None
    if len(out) > limit or d.unconsumed_tail:
        raise CalendarRefused(f"{what}: unpacks to over the limit of {limit} bytes")
    if not d.eof:
        raise CalendarRefused(f"{what}: not a calendar object (truncated gzip)")
    return out


# ---- calendars --------------------------------------------------------------------------------
def check_ref(ref: Any) -> str:
    """``ref`` if it is a plain calendar name, else ``CalendarRefused`` (it is never resolved as a path)."""
    if isinstance(ref, str) and REF.fullmatch(ref):
        return ref
    shown = repr(ref)[:40] if isinstance(ref, str) else type(ref).__name__
    raise CalendarRefused(f"calendar {shown}: not allowed: a calendar is named by its ref in the sales store "
                          "(calendar-<UTC time>-<id>.csv.gz, as `storecast calendar upload` prints it)")


def put_calendar(objects: Objects, frame: pd.DataFrame) -> str:
    """Store a calendar frame as a new immutable object; returns its ref. Refused unless it reads back."""
    from pipelines.data.calendar import CALENDAR_COLUMNS, read_calendar
    from pipelines.data.sales_csv import write_sales

    if frame is None or not len(frame):
        raise CalendarRefused("calendar: no rows")
    name = object_name("calendar")
    with tempfile.TemporaryDirectory(prefix="storecast-calendar-") as tmp:
        path = write_sales(frame[[c for c in CALENDAR_COLUMNS if c in frame.columns]], Path(tmp) / name)
        try:
            read_calendar(path)  # what is stored is a calendar its readers accept
        except ValueError as exc:
            raise CalendarRefused(str(exc).replace(str(path), "calendar")) from None
        data = path.read_bytes()
    if len(data) > MAX_BYTES or len(gzip.decompress(data)) > MAX_TEXT:
        raise CalendarRefused(f"calendar: over the limit of {MAX_BYTES} bytes stored, {MAX_TEXT} unpacked")
    objects.put(CALENDARS, name, data)
    return name


def read_calendar(objects: Objects, ref: Any, timeout: float = TIMEOUT, limit: int = MAX_BYTES) -> pd.DataFrame:
    """The calendar ``ref`` of the store, through the bounded reader (see the module docstring)."""
    from pipelines.data.calendar import read_calendar as parse

    ref = check_ref(ref)
    what = f"calendar {ref}"
    text = gunzip_bounded(objects.read_bounded(CALENDARS, ref, what, limit=limit, timeout=timeout), what)
    with tempfile.TemporaryDirectory(prefix="storecast-calendar-") as tmp:
        path = Path(tmp) / "calendar.csv"
        path.write_bytes(text)
        try:
            return parse(path)
        except ValueError:  # its messages may quote cells: say only that it is no calendar
            raise CalendarRefused(f"{what}: not a calendar (test.csv layout: Store, Date and Open, Promo, "
                                  "StateHoliday or SchoolHoliday)") from None


def calendar_refs(objects: Objects) -> list[str]:
    """The store's calendars, oldest first."""
    return sorted(n for n, size in objects.listing(CALENDARS).items() if size is not None and REF.fullmatch(n))


def read_calendars(objects: Objects, refs: list[str] | None = None) -> pd.DataFrame | None:
    """The calendars ``refs`` (default: every one, oldest first) as one, a later one winning on a store-day."""
    refs = calendar_refs(objects) if refs is None else refs
    if not refs:
        return None
    frames = [read_calendar(objects, r) for r in refs]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return frame.drop_duplicates(["Store", "Date"], keep="last").reset_index(drop=True)
