"""``storecast retrain``: ask the retrain service (or the broker) to refit stores, and wait for the job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

DEFAULT_RETRAIN_URL = "http://127.0.0.1:8090"


def cmd_retrain(args: argparse.Namespace) -> int:
    from pipelines import events
    from pipelines.cli.data import post_event

    ev = events.event(events.RETRAIN_REQUESTED, {"store_ids": args.store, "reason": args.reason,
                                                 "force": args.force}, "storecast.cli")
    r = post_event(args.url, ev, args.api_key, "retrain request", timeout=30)
    if r is None:
        return 1
    answer = r.json() if r.content else {}
    print(json.dumps(answer) if answer else f"sent event {ev['id']} (HTTP {r.status_code})")
    if not args.wait:
        return 0
    job_id = answer.get("job_id")
    if not job_id:
        print("--wait needs the retrain service's answer (send to the service, or give --status-url)",
              file=sys.stderr)
        return 1
    status_url = (args.status_url or args.url).rstrip("/")
    deadline = time.monotonic() + args.timeout
    import httpx

    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{status_url}/jobs/{job_id}", headers=headers, timeout=10)
            r.raise_for_status()
            job = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            print(f"job {job_id}: {status_url}: {exc}", file=sys.stderr)
            return 1
        if job["status"] in ("done", "failed", "up_to_date"):
            print(json.dumps(job))
            if job["status"] == "done" and job["result"].get("version"):
                print(f"new version {job['result']['version']} ({job['result']['model_uri']}), alias "
                      f"{job['result']['promoted'] or '-'}", file=sys.stderr)
            return 0 if job["status"] != "failed" else 1
        time.sleep(0.5)
    print(f"job {job_id} not finished after {args.timeout} s", file=sys.stderr)
    return 1


def add_parser(sub: Any) -> None:
    """Register ``storecast retrain``."""
    r = sub.add_parser("retrain", help="ask the retrain service (or the broker) to refit stores")
    r.add_argument("--store", action="append", required=True, help="store id (repeat for several)")
    r.add_argument("--reason", default="requested from the CLI", help="why, recorded with the job")
    r.add_argument("--url", default=DEFAULT_RETRAIN_URL, help="retrain service or broker ingress URL")
    r.add_argument("--status-url", help="retrain service URL for --wait when --url is a broker")
    r.add_argument("--wait", action="store_true", help="wait for the job and print the new version")
    r.add_argument("--force", action="store_true", help="refit the stores even if their model is up to date")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits for the job")
    from pipelines.cli.data import add_event_arguments  # --api-key-file

    add_event_arguments(r)
    r.set_defaults(func=cmd_retrain)
