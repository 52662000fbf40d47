"""``storecast forecast --stores ...``: every store's forecast from the business API into one table.

The stores are split into requests of ``--batch-size`` stores, sent by ``pipelines.clients.retrying``
(at most ``--concurrency`` in flight, retried with backoff, split to find the store at fault). The
stores given up are listed on stderr and in ``OUT.failed.txt`` (usable as ``--stores FILE``) and the
exit status is 1.

The table has one row per store-day, exactly as the API answered it (a closed day, ``open`` false, is
``value``, ``lower`` and ``upper`` 0): ``store, date, value, lower, upper, open, promo, holiday, calendar,
model_version`` (``promo``/``holiday`` when the business rows carry them, ``model_version`` when the
answer carries it or ``--predictor-url`` says what is served; else null). ``calendar`` says where the
day's calendar came from: ``calendar`` (the version's known-ahead calendar), ``default`` (beyond it: the
default holidays, the store's weekday pattern and holiday habits) or ``what-if``.

Which stores ``all`` means: the business API lists the stores its shards serve (V1
``{"list_stores": true}``, with the same key and permission as a forecast), so the business URL alone
is enough; ``--predictor-url`` is asked only if the business API has no listing (an older transformer).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import httpx

from pipelines.clients.retrying import MODEL, BatchClient, Policy, error_text

COLUMNS = ("store", "date", "value", "lower", "upper", "open", "promo", "holiday", "calendar", "model_version")


class BatchError(RuntimeError):
    """A problem with the batch as a whole (bad arguments, no store list): nothing was written."""


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


def list_stores(url: str, predictor_url: str | None, headers: dict[str, str], timeout: float = 30.0) -> list[str]:
    """Every store served: the business API's listing (its shards' stores); the predictor's only if the business
    API has none (an older transformer). A refusal of the key (401, 403) is said as it is, in one line."""
    tried = []
    for base in [url] + ([predictor_url] if predictor_url else []):
        target = f"{base.rstrip('/')}/v1/models/{MODEL}:predict"
        try:
            r = httpx.post(target, json={"list_stores": True}, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            tried.append(f"{target}: {exc}")
            continue
        listed = _stores(r)
        if listed is not None:
            return listed
        if r.status_code in (401, 403):
            raise BatchError(f"--stores all: {base} refused the store listing: HTTP {r.status_code} "
                             f"{error_text(r)[:160]} (give the key as STORECAST_API_KEY or --api-key-file)")
        tried.append(f"{target}: HTTP {r.status_code} {error_text(r)[:120]}")
    raise BatchError("--stores all: no store list (" + "; ".join(tried) + "); give --stores FILE")


def _stores(r: httpx.Response) -> list[str] | None:
    """The ``stores`` of a listing answer, or None."""
    try:
        stores = r.json().get("stores") if r.status_code == 200 else None
    except (ValueError, AttributeError):
        return None
    return [str(s) for s in stores] if isinstance(stores, list) else None


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
            for k in ("value", "lower", "upper", "open", "promo", "holiday", "calendar"):
                cols[k].append(row.get(k))
            cols["model_version"].append(None if version is None else str(version))
    return cols


def write_table(cols: dict[str, list[Any]], out: Path) -> Path:
    """``.parquet`` (typed: date32, float64, nullable bool/string; the ``parquet`` extra) or ``.csv`` (ISO dates,
    exact floats, ``true``/``false``; no extra needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"store": pa.string(), "date": pa.date32(), "value": pa.float64(), "lower": pa.float64(),
                 "upper": pa.float64(), "open": pa.bool_(), "promo": pa.bool_(), "holiday": pa.string(),
                 "calendar": pa.string(), "model_version": pa.string()}
        arrays = {c: pa.array([dt.date.fromisoformat(d) for d in v] if c == "date" else v, type=types[c])
                  for c, v in cols.items()}
        pq.write_table(pa.table(arrays), tmp)
    elif out.suffix == ".csv":
        import csv

        def cell(v: Any) -> Any:
            return "" if v is None else ("true" if v else "false") if isinstance(v, bool) else repr(v) \
                if isinstance(v, float) else v

        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL)
            writer.writerow(list(cols))
            writer.writerows([cell(v) for v in row] for row in zip(*cols.values(), strict=True))
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
        api_key = args.api_key  # pipelines.cli.options.api_key: --api-key-file or $STORECAST_API_KEY
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
    f.add_argument("--predictor-url", help="with --stores: the predictor's REST URL, to read the served model "
                   "version (and to list the stores of `all` if the business API cannot)")
    f.add_argument("--no-progress", action="store_true", help="with --stores: no progress bar on stderr")
