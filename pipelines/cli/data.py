"""``storecast data append``: new actual sales into the sales store (and the retrain service told).

With ``--sales`` the rows are written here as a new part of the store; with a registry
(``--tracking-uri`` or ``$MLFLOW_TRACKING_URI``) rows of stores that neither the ``--alias`` version
(champion) holds nor the store has history for are refused, naming them, and nothing is written, unless
``--keep-unknown-stores`` (or ``$STORECAST_KEEP_UNKNOWN_STORES=1``: then they wait in the store until those
stores are trained; with ``--url`` alone the service's own setting decides). With ``--url``
the retrain service (or the Broker) gets ``com.storecast.sales.appended``: the rows themselves, or the
name of the part written; the key (``$STORECAST_API_KEY`` or ``--api-key-file``: ``pipelines.cli.options``)
goes with it as ``authorization: Bearer`` (an API key, or an OIDC token the Broker accepts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.cli.options import add_api_key, add_keep_unknown, keep_unknown_default
from serving.contract import MODEL_NAME


def _records(frame: Any) -> list[dict[str, Any]]:
    out = frame.copy()
    out["Date"] = out["Date"].dt.strftime("%Y-%m-%d")
    return json.loads(out.to_json(orient="records"))


def known_stores(tracking_uri: str | None, model_name: str, alias: str) -> list[str] | None:
    """The stores of the registry's ``alias`` version (None: no registry given, or no such version yet)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    from pipelines.versions.registry import Registry

    registry = Registry(uri, model_name)
    mv = registry.alias(alias)
    return None if mv is None else [str(s) for s in registry.table(str(mv.version)).store_id.tolist()]


def post_event(url: str, ev: Any, api_key: str | None, what: str, timeout: float = 120) -> Any | None:
    """POST one CloudEvent (binary mode) with ``api_key`` (``pipelines.cli.options.api_key``) as a Bearer
    credential; the response, or None after one line on stderr when it was refused or not delivered."""
    import httpx
    from cloudevents.conversion import to_binary

    headers, body = to_binary(ev)
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    try:
        r = httpx.post(url, headers=headers, content=body, timeout=timeout)
    except httpx.HTTPError as exc:
        print(f"{what}: {url}: {exc}", file=sys.stderr)
        return None
    if r.status_code >= 400:
        print(f"{what} rejected: HTTP {r.status_code}: {r.text}", file=sys.stderr)
        return None
    return r


def send_event(url: str, kind: str, data: dict[str, Any], api_key: str | None, what: str) -> int:
    """POST one CloudEvent of ``kind``; the answer on stdout; 1 when it was refused or not delivered."""
    from pipelines import events

    r = post_event(url, events.event(kind, data, "storecast.cli"), api_key, what)
    if r is None:
        return 1
    print(r.text)
    return 0


def cmd_append(args: argparse.Namespace) -> int:
    from pipelines import events
    from pipelines.data.sales_store import BadSales, SalesStore, SalesUnavailable, read_file
    from pipelines.versions.registry import RegistryUnavailable

    if not args.sales and not args.url:
        print("give --sales (the store to append to) and/or --url (the retrain service, which appends)",
              file=sys.stderr)
        return 2
    keep = bool(args.keep_unknown_stores) or keep_unknown_default()
    if args.keep_unknown_stores and not args.sales:
        print("--keep-unknown-stores needs --sales: with --url alone the retrain service appends, and keeps rows of "
              "unknown stores only with its own --keep-unknown-stores", file=sys.stderr)
        return 2
    try:
        rows = read_file(Path(args.data))
        data: dict[str, Any] = {"rows": _records(rows)}
        if args.sales:
            known = None if keep else known_stores(args.tracking_uri, args.model_name, args.alias)
            part = SalesStore(args.sales).append(rows, known=known, keep_unknown=keep)
            print(f"appended {len(rows)} rows to {args.sales} as {part}", file=sys.stderr)
            data = {"part": part.rpartition("/")[2], "rows_appended": len(rows)}  # a name, never a path
    except (BadSales, SalesUnavailable) as exc:
        print(f"data append: {exc}", file=sys.stderr)
        return 2
    except RegistryUnavailable as exc:
        print(f"data append: cannot read the stores of {args.alias} ({exc}); nothing appended "
              "(--keep-unknown-stores appends without that check)", file=sys.stderr)
        return 1
    if not args.url:
        return 0
    return send_event(args.url, events.SALES_APPENDED, data, args.api_key, "data append")


def add_event_arguments(p: argparse.ArgumentParser) -> None:
    """The key of the commands that send an event (an API key of the retrain service's auth file, or an OIDC
    token for the Broker): ``--api-key-file`` or ``$STORECAST_API_KEY``."""
    add_api_key(p, "'authorization: Bearer' with the event (a key of the retrain service's auth file, or an OIDC "
                   "token for the Broker)")


def add_parser(data: Any) -> None:
    """``data append`` under ``storecast data``."""
    a = data.add_parser("append", help="append new actual sales to the sales store; the retrain service scores the "
                        "champion on them and refits drifting stores")
    a.add_argument("--data", required=True, help="the new rows (Rossmann layout: .csv, .csv.gz, .parquet)")
    a.add_argument("--sales", help="append to this sales store directly (a path, or the artifact-proxy URL the retrain "
                   "service reads); with --url the service is told")
    a.add_argument("--url", help="retrain service (or broker) URL: sends com.storecast.sales.appended (with the rows "
                   "unless --sales wrote them)")
    add_keep_unknown(a, "with --sales: keep rows of stores the version does not hold (trained when those stores "
                        "are); without it they are refused, named, and nothing is appended", from_env=False)
    a.add_argument("--tracking-uri", help="registry whose --alias version says which stores are known (default: "
                   "$MLFLOW_TRACKING_URI; neither: not checked here)")
    a.add_argument("--model-name", default=MODEL_NAME, help="registered model name")
    a.add_argument("--alias", default="champion", help="the version whose stores are known")
    add_event_arguments(a)
    a.set_defaults(func=cmd_append)
