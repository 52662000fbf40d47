"""``storecast retrain`` and ``storecast canary ...``: the rollout commands of the CLI."""

from __future__ import annotations

import argparse
import json
import os
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

    key = args.api_key or os.environ.get("STORECAST_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
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


def cmd_canary(args: argparse.Namespace) -> int:
    from pipelines.rollout import canary as c

    if getattr(args, "dry_run", False):  # no kubeconfig, no API call: a file or the base manifest's predictor
        can = None
        try:
            isvc, source = c.offline(args.isvc, args.namespace, args.from_file)
        except (OSError, ValueError) as exc:
            print(f"canary {args.action}: {exc}", file=sys.stderr)
            return 1
        print(f"dry run, no cluster read: patch computed against {source}", file=sys.stderr)
    else:
        can = c.Canary(args.isvc, args.namespace)
        isvc = can.get()
    if args.action == "status":
        arg = c.uri_arg(isvc)
        percent = isvc["spec"]["predictor"].get("canaryTrafficPercent")
        print(f"{args.namespace}/{args.isvc}: predictor pinned to {arg.uri}; canaryTrafficPercent: "
              f"{'-' if percent is None else percent}")
        for row in c.traffic(isvc):
            print(f"  {row['revision']:<40} {row['percent']:>4}%  {'latest' if row['latest'] else 'previous'}"
                  f"{'  tag=' + row['tag'] if row['tag'] else ''}")
        return 0
    alias_move: tuple[str, str] | None = None
    if args.action == "start":
        ops = c.start_patch(isvc, args.model_name, args.version, args.percent)
    elif args.action == "promote":
        uri = c.uri_arg(isvc).uri
        if uri.rstrip("/").rsplit("/", 1)[-1].isdigit():
            alias_move = ("champion", c.version_of(uri))
        elif "@" in uri and not uri.endswith("@champion"):  # a canary following another alias (@challenger)
            alias_move = ("champion", f"@{uri.rsplit('@', 1)[1]}")
        ops = c.promote_patch(isvc, args.model_name)
    elif args.to_version:
        ops = c.rollback_patch(isvc, args.model_name, args.to_version)
    else:  # the stable form: no traffic to the canary, the predictor following champion again
        ops = c.rollback_follow_patch(isvc, args.model_name)
    if alias_move:
        print(f"mlflow: set alias {alias_move[0]} of {args.model_name} to version {alias_move[1]}"
              + (" (resolved when run)" if alias_move[1].startswith("@") else ""))
    print(c.show(ops, args.isvc, args.namespace))
    if args.dry_run or can is None:
        return 0
    if alias_move:  # first: the predictor then follows champion to the version the canary serves
        from pipelines.rollout.controller import promote
        from pipelines.versions.registry import Registry

        registry = Registry(args.tracking_uri, args.model_name)
        version = alias_move[1]
        if version.startswith("@"):
            mv = registry.alias(version[1:])
            if mv is None:
                print(f"canary promote: no version at models:/{args.model_name}{version}", file=sys.stderr)
                return 1
            version = str(mv.version)
        promoted = promote(registry, version)  # compare-and-set, as the automatic rollout does
        if promoted != version:
            print(f"the champion moved during the canary: promoted version {promoted} (version {version} with what "
                  "the champion gained carried over)", file=sys.stderr)
    can.patch(ops)
    print(f"{args.action}: done", file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("retrain", help="ask the retrain service (or the broker) to refit stores")
    r.add_argument("--store", action="append", required=True, help="store id (repeat for several)")
    r.add_argument("--reason", default="requested from the CLI", help="why, recorded with the job")
    r.add_argument("--url", default=DEFAULT_RETRAIN_URL, help="retrain service or broker ingress URL")
    r.add_argument("--status-url", help="retrain service URL for --wait when --url is a broker")
    r.add_argument("--wait", action="store_true", help="wait for the job and print the new version")
    r.add_argument("--force", action="store_true", help="refit the stores even if their model is up to date")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits for the job")
    from pipelines.cli.data import add_event_arguments  # --api-key

    add_event_arguments(r)
    r.set_defaults(func=cmd_retrain)

    can = sub.add_parser("canary", help="canary a model version on the InferenceService (kubernetes)")
    steps = can.add_subparsers(dest="action", required=True)
    for name, text in (("start", "pin --version N with --percent of the traffic"), ("status", "show the split"),
                       ("promote", "move champion to the canary's version; the predictor follows champion again"),
                       ("rollback", "no traffic to the canary; the predictor follows champion again")):
        s = steps.add_parser(name, help=text)
        s.add_argument("--isvc", default="storecast", help="InferenceService name")
        s.add_argument("--namespace", default="storecast", help="its namespace")
        s.add_argument("--model-name", default="storecast", help="registered model name in MLflow")
        s.add_argument("--tracking-uri", help="MLflow (promote moves, rollback reads the champion alias)")
        if name != "status":
            s.add_argument("--dry-run", action="store_true",
                           help="print the exact patch, change nothing (no cluster: see --from-file)")
            s.add_argument("--from-file", help="with --dry-run: the InferenceService to patch, e.g. from "
                           "`kubectl get isvc storecast -o json` (default: the predictor of manifests/base)")
        if name == "start":
            s.add_argument("--version", required=True, help="model version to canary (models:/NAME/N)")
            s.add_argument("--percent", type=int, default=10, help="share of the traffic it gets, 0..100")
        if name == "rollback":
            s.add_argument("--to-version", help="pin to this version instead (default: follow the champion alias)")
        s.set_defaults(func=cmd_canary)
