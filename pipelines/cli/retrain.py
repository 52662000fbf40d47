"""``storecast retrain``: ask the retrain service (or the broker) to refit stores, and wait for the job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

DEFAULT_RETRAIN_URL = "http://127.0.0.1:8090"


FINAL = ("done", "failed", "up_to_date")
HEARTBEAT_SECONDS = 15.0  # a progress line at least this often while the job's state does not change


def cmd_retrain(args: argparse.Namespace) -> int:
    from pipelines import events
    from pipelines.cli.data import post_event

    ev = events.event(events.RETRAIN_REQUESTED, {"store_ids": args.store, "reason": args.reason,
                                                 "force": args.force}, "storecast.cli")
    r = post_event(args.url, ev, args.api_key, "retrain request", timeout=30)
    if r is None:
        return 1
    answer = r.json() if r.content else {}
    job_id = answer.get("job_id") if isinstance(answer, dict) else None
    if not args.wait:
        if args.json:
            print(json.dumps(answer) if answer else json.dumps({"event_id": ev["id"], "http_status": r.status_code}))
        elif job_id:
            print(f"retrain job {job_id}: {answer.get('status', 'accepted')} (storecast retrain ... --wait follows a "
                  f"job; GET {args.url.rstrip('/')}/jobs/{job_id})")
        else:
            print(f"sent event {ev['id']} (HTTP {r.status_code})")
        return 0
    if not job_id:
        print("--wait needs the retrain service's answer (send to the service, or give --status-url)",
              file=sys.stderr)
        return 1
    job = wait_for_job(args, job_id)
    if job is None:
        return 1
    print(json.dumps(job) if args.json else summary(job))
    return 0 if job["status"] != "failed" else 1


def wait_for_job(args: argparse.Namespace, job_id: str) -> dict[str, Any] | None:
    """Poll the job until it finishes, one progress line on stderr per change of state (and every
    ``HEARTBEAT_SECONDS``); the final job, or None after one line saying why not."""
    import httpx

    status_url = (args.status_url or args.url).rstrip("/")
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    t0 = time.monotonic()
    deadline, last, said = t0 + args.timeout, None, 0.0
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{status_url}/jobs/{job_id}", headers=headers, timeout=10)
            r.raise_for_status()
            job = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            print(f"job {job_id}: {status_url}: {exc}", file=sys.stderr)
            return None
        state = (job.get("status"), job.get("phase"), job.get("attempt"))
        now = time.monotonic()
        if job.get("status") in FINAL:
            return job
        if state != last or now - said >= HEARTBEAT_SECONDS:
            attempt = f", attempt {job['attempt']}" if (job.get("attempt") or 0) > 1 else ""
            print(f"job {job_id}: {job.get('status')}, {job.get('phase')}{attempt} ({now - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            last, said = state, now
        time.sleep(0.5)
    print(f"job {job_id} not finished after {args.timeout:.0f} s (--timeout); it goes on: GET "
          f"{status_url}/jobs/{job_id}", file=sys.stderr)
    return None


def summary(job: dict[str, Any]) -> str:
    """A finished job in one line."""
    result, seconds = job.get("result") or {}, job.get("seconds")
    took = f" in {seconds:.0f} s" if isinstance(seconds, int | float) else ""
    if job["status"] == "up_to_date":
        return f"job {job['job_id']}: up to date{took}, nothing refitted (version {result.get('version') or '-'})"
    if job["status"] == "failed":
        return f"job {job['job_id']} failed{took}: {job.get('error') or 'see the retrain service log'}"
    stores = result.get("store_ids") or []
    gate = result.get("version_gate") or {}
    verdict = "" if gate.get("passed", True) else f"; gate failed: {'; '.join(gate.get('reasons') or [])}"
    return (f"job {job['job_id']} done{took}: version {result.get('version')} ({result.get('model_uri')}), "
            f"{len(stores)} store(s) refitted, alias {result.get('promoted') or '-'}{verdict}")


def add_parser(sub: Any) -> None:
    """Register ``storecast retrain``."""
    r = sub.add_parser("retrain", help="ask the retrain service (or the broker) to refit stores")
    r.add_argument("--store", action="append", required=True, help="store id (repeat for several)")
    r.add_argument("--reason", default="requested from the CLI", help="why, recorded with the job")
    r.add_argument("--url", default=DEFAULT_RETRAIN_URL, help="retrain service or broker ingress URL")
    r.add_argument("--status-url", help="retrain service URL for --wait when --url is a broker")
    r.add_argument("--wait", action="store_true", help="wait for the job (a progress line per step on stderr), then "
                   "print one line: the new version, or why there is none")
    r.add_argument("--force", action="store_true", help="refit the stores even if their model is up to date")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits for the job")
    r.add_argument("--json", action="store_true", help="print the service's answer (with --wait: the finished job) "
                   "as one JSON object on stdout, for scripts; progress lines stay on stderr")
    from pipelines.cli.data import add_event_arguments  # --api-key-file

    add_event_arguments(r)
    r.set_defaults(func=cmd_retrain)
