"""``storecast data append``: new actual sales into the sales store (and the retrain service told)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _records(frame: Any) -> list[dict[str, Any]]:
    out = frame.copy()
    out["Date"] = out["Date"].dt.strftime("%Y-%m-%d")
    return json.loads(out.to_json(orient="records"))


def cmd_append(args: argparse.Namespace) -> int:
    import httpx
    from cloudevents.conversion import to_binary

    from pipelines import events
    from pipelines.sales_store import BadSales, SalesStore, SalesUnavailable, read_file

    if not args.sales and not args.url:
        print("give --sales (the store to append to) and/or --url (the retrain service, which appends)",
              file=sys.stderr)
        return 2
    try:
        rows = read_file(Path(args.data))
        data: dict[str, Any] = {"rows": _records(rows)}
        if args.sales:
            part = SalesStore(args.sales).append(rows)
            print(f"appended {len(rows)} rows to {args.sales} as {part}", file=sys.stderr)
            data = {"part": part, "rows_appended": len(rows)}
    except (BadSales, SalesUnavailable) as exc:
        print(f"data append: {exc}", file=sys.stderr)
        return 2
    if not args.url:
        return 0
    ev = events.event(events.SALES_APPENDED, data, "storecast.cli")
    headers, body = to_binary(ev)
    try:
        r = httpx.post(args.url, headers=headers, content=body, timeout=120)
    except httpx.HTTPError as exc:
        print(f"data append: {args.url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        print(f"data append rejected: HTTP {r.status_code}: {r.text}", file=sys.stderr)
        return 1
    print(r.text)
    return 0


def add_parser(data: Any) -> None:
    """``data append`` under ``storecast data``."""
    a = data.add_parser("append", help="append new actual sales to the sales store; the retrain service scores the "
                        "champion on them and refits drifting stores")
    a.add_argument("--data", required=True, help="the new rows (Rossmann layout: .csv, .csv.gz, .parquet)")
    a.add_argument("--sales", help="append to this sales store directly (a path, or the artifact-proxy URL the retrain "
                   "service reads); with --url the service is told")
    a.add_argument("--url", help="retrain service (or broker) URL: sends com.storecast.sales.appended (with the rows "
                   "unless --sales wrote them)")
    a.set_defaults(func=cmd_append)
