"""``storecast forecast --stores ...``: every store's forecast from the business API into one table.

The stores are split into requests of ``--batch-size`` stores (one V1 business request each) and at
most ``--concurrency`` requests are in flight at any time (a fixed pool of workers, one request each).
429 and 503 answers and connection errors are retried with exponential backoff and full jitter,
never before the server's ``Retry-After``: a ``Retry-After`` also holds back every worker's next
request until it has passed (a rate limit or an overload is the whole client's, not one request's).
A batch is given up after ``--max-attempts`` attempts; a batch answered with another 4xx is split in
halves until the store at fault is alone (so one unknown store does not fail its neighbours), except
401/403, which stop the run (every request would get the same). The
stores given up are listed on stderr and in ``OUT.failed.txt`` (usable as ``--stores FILE``) and the
exit status is 1.

The table has one row per store-day, exactly as the API answered it (a closed day, ``open`` false, is
``value``, ``lower`` and ``upper`` 0): ``store, date, value, lower, upper, open, promo, holiday,
model_version`` (``promo``/``holiday`` when the business rows carry them, ``model_version`` when the
answer carries it or ``--predictor-url`` says what is served; else null).

Which stores ``all`` means: the business API has no store listing (yet), so ``all`` asks it first
(``{"list_stores": true}``) and otherwise the predictor's listing (``--predictor-url``, V1
``{"list_stores": true}``; on a cluster the predictor's REST port stays in its pod, so
``kubectl port-forward`` to it, or pass ``--stores FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email.utils
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RETRY_STATUS = (429, 503)
FATAL_STATUS = (401, 403)  # the same for every request: no retry, no split, and no more requests
COLUMNS = ("store", "date", "value", "lower", "upper", "open", "promo", "holiday", "model_version")
MODEL = "storecast"


class BatchError(RuntimeError):
    """A problem with the batch as a whole (bad arguments, no store list): nothing was written."""


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


def parse_stores(spec: str) -> list[str] | None:
    """``1-1115``, ``1,2,7-9``, a file (one id a line, or a CSV with a Store/store_id column), or
    ``all`` (None: ask the service)."""
    if spec == "all":
        return None
    path = Path(spec)
    if path.is_file():
        return _stores_from_file(path)
    stores: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise BatchError(f"--stores: range {part} ends before it begins")
            stores.extend(str(i) for i in range(int(lo), int(hi) + 1))
        else:
            stores.append(part)
    if not stores:
        raise BatchError(f"--stores: no store in {spec!r} (give 1-1115, 1,2,7, all or a file)")
    return stores


def _stores_from_file(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise BatchError(f"--stores: {path} lists no store")
    if "," in lines[0]:
        header = [h.strip().strip('"') for h in lines[0].split(",")]
        names = [h.lower() for h in header]
        col = next((names.index(n) for n in ("store", "store_id", "storeid") if n in names), None)
        rows = [[c.strip().strip('"') for c in line.split(",")] for line in lines[1:]] if col is not None else \
            [[c.strip().strip('"') for c in line.split(",")] for line in lines]
        stores = [r[col or 0] for r in rows if len(r) > (col or 0) and r[col or 0]]
    else:
        stores = lines
    return list(dict.fromkeys(stores))


def default_window(begin: str | None, end: str | None) -> tuple[str, str]:
    """The window sent with every request (as the API's default: 7 days from today, UTC)."""
    try:
        first = dt.date.fromisoformat(begin[:10]) if begin else dt.datetime.now(dt.UTC).date()
        last = dt.date.fromisoformat(end[:10]) if end else first + dt.timedelta(days=6)
    except ValueError as exc:
        raise BatchError(f"--begin/--end: {exc} (give ISO dates, e.g. 2015-08-01)") from None
    if last < first:
        raise BatchError(f"--end {last} is before --begin {first}")
    return first.isoformat(), last.isoformat()


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
                why = f"HTTP {r.status_code}: {_error(r)}"
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


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))[:300]
    except ValueError:
        return r.text[:300]


def list_stores(url: str, predictor_url: str | None, headers: dict[str, str], timeout: float = 30.0) -> list[str]:
    """Every store served: the business API's listing if it has one, else the predictor's."""
    tried = []
    for base in [url] + ([predictor_url] if predictor_url else []):
        target = f"{base.rstrip('/')}/v1/models/{MODEL}:predict"
        try:
            r = httpx.post(target, json={"list_stores": True}, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            tried.append(f"{target}: {exc}")
            continue
        if r.status_code == 200 and isinstance(r.json().get("stores"), list):
            return [str(s) for s in r.json()["stores"]]
        tried.append(f"{target}: HTTP {r.status_code} {_error(r)[:120]}")
    raise BatchError("--stores all: no store list (" + "; ".join(tried) + "); give --predictor-url (the "
                     "predictor's REST URL lists its stores) or --stores FILE")


def served_version(predictor_url: str | None, timeout: float = 10.0) -> str | None:
    """The version the predictor serves (its V2 metadata ``versions``), or None."""
    if not predictor_url:
        return None
    try:
        r = httpx.get(f"{predictor_url.rstrip('/')}/v2/models/{MODEL}", timeout=timeout)
        versions = r.json().get("versions") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return str(versions[0]) if versions else None


def to_columns(stores: list[str], answers: dict[str, tuple[dict[str, Any], str | None]],
               fallback_version: str | None) -> dict[str, list[Any]]:
    """The long table, stores in the order asked, days in the order answered."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for store in stores:
        if store not in answers:
            continue
        prediction, version = answers[store]
        version = version or fallback_version
        for row in prediction["forecast"]:
            cols["store"].append(store)
            cols["date"].append(row["timestamp"][:10])
            for k in ("value", "lower", "upper", "open", "promo", "holiday"):
                cols[k].append(row.get(k))
            cols["model_version"].append(None if version is None else str(version))
    return cols


def write_table(cols: dict[str, list[Any]], out: Path) -> Path:
    """``.parquet`` (typed: date32, float64, nullable bool/string) or ``.csv`` (ISO dates, exact floats)."""
    import pyarrow as pa

    types = {"store": pa.string(), "date": pa.date32(), "value": pa.float64(), "lower": pa.float64(),
             "upper": pa.float64(), "open": pa.bool_(), "promo": pa.bool_(), "holiday": pa.string(),
             "model_version": pa.string()}
    arrays = {c: pa.array([dt.date.fromisoformat(d) for d in v] if c == "date" else v, type=types[c])
              for c, v in cols.items()}
    table = pa.table(arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    elif out.suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, tmp)
    else:
        raise BatchError(f"--out {out}: give a .parquet or .csv file")
    tmp.replace(out)
    return out


def cmd_batch(args: argparse.Namespace) -> int:
    """``storecast forecast --stores ...``."""
    out = Path(args.out or "")
    try:
        if not args.out:
            raise BatchError("--stores needs --out FILE.parquet or FILE.csv")
        if out.suffix not in (".parquet", ".csv"):
            raise BatchError(f"--out {out}: give a .parquet or .csv file")
        if args.batch_size < 1 or args.concurrency < 1 or args.max_attempts < 1:
            raise BatchError("--batch-size, --concurrency and --max-attempts must be at least 1")
        begin, end = default_window(args.begin, args.end)
        api_key = args.api_key or os.environ.get("STORECAST_API_KEY") or None
        headers = {"content-type": "application/json", **({"x-api-key": api_key} if api_key else {})}
        stores = parse_stores(args.stores)
        if stores is None:
            stores = list_stores(args.url, args.predictor_url, headers)
        return asyncio.run(_run(args, stores, begin, end, api_key, out))
    except BatchError as exc:
        print(f"forecast failed: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, stores: list[str], begin: str, end: str, api_key: str | None,
               out: Path) -> int:
    from tqdm import tqdm

    policy = Policy(concurrency=args.concurrency, max_attempts=args.max_attempts, backoff=args.backoff,
                    max_backoff=args.max_backoff, timeout=args.timeout)
    before = served_version(args.predictor_url)
    print(f"forecast {len(stores)} stores, {begin} .. {end}, {args.batch_size} stores a request, at most "
          f"{args.concurrency} in flight -> {out}", file=sys.stderr)
    with tqdm(total=len(stores), unit="store", disable=args.no_progress, file=sys.stderr) as bar:
        client = BatchClient(args.url, begin, end, policy, api_key, progress=bar)
        stats = await client.run(stores, args.batch_size)
    after = served_version(args.predictor_url)
    fallback = before if before == after else None
    if before != after:
        print(f"the predictor's version changed during the run ({before} -> {after}): model_version left null "
              "where the answers do not carry it", file=sys.stderr)
    cols = to_columns(stores, client.answers, fallback)
    stats.rows = len(cols["store"])
    write_table(cols, out)
    failed_file = out.with_name(out.name + ".failed.txt")
    if stats.failed:
        failed_file.write_text("".join(f"{s}\n" for s in stats.failed))
        for store, why in list(stats.failed.items())[:20]:
            print(f"failed store {store}: {why}", file=sys.stderr)
        if len(stats.failed) > 20:
            print(f"... {len(stats.failed) - 20} more", file=sys.stderr)
        print(f"failed stores listed in {failed_file} (retry them with --stores {failed_file})", file=sys.stderr)
    elif failed_file.exists():
        failed_file.unlink()
    print(stats.line(), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 1 if stats.failed else 0


def add_arguments(f: argparse.ArgumentParser) -> None:
    """The batch flags of ``storecast forecast`` (``--stores`` selects the batch mode)."""
    f.add_argument("--out", help="with --stores: the table to write, .parquet or .csv")
    f.add_argument("--batch-size", type=int, default=100, help="with --stores: stores in one request (default 100)")
    f.add_argument("--concurrency", type=int, default=4, help="with --stores: requests in flight at most (default 4)")
    f.add_argument("--max-attempts", type=int, default=8,
                   help="with --stores: attempts per request before its stores are given up (default 8)")
    f.add_argument("--backoff", type=float, default=0.5,
                   help="with --stores: first backoff cap in seconds, doubled per attempt, full jitter (default 0.5)")
    f.add_argument("--max-backoff", type=float, default=30.0,
                   help="with --stores: largest backoff cap in seconds, added to any Retry-After (default 30)")
    f.add_argument("--timeout", type=float, default=60.0, help="with --stores: seconds per request (default 60)")
    f.add_argument("--predictor-url", help="with --stores: the predictor's REST URL, to list the stores of `all` "
                   "and to read the served model version")
    f.add_argument("--api-key", help="business API key, sent as x-api-key (default: $STORECAST_API_KEY)")
    f.add_argument("--no-progress", action="store_true", help="with --stores: no progress bar on stderr")
