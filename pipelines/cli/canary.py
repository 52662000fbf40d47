"""``storecast canary start|status|promote|rollback``: canary a model version on the InferenceService."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from serving.contract import MODEL_NAME


def emit(args: argparse.Namespace) -> int:
    """``start --emit``: print the values of manifests/components/canary, read no cluster."""
    from pipelines.rollout.canary import COMPONENT_VALUES, component_values

    if args.isvc != "storecast":
        print(f"canary start --emit: the component canaries the InferenceService storecast, not {args.isvc!r}",
              file=sys.stderr)
        return 1
    try:
        text = component_values(args.model_name, args.version, args.percent)
    except ValueError as exc:
        print(f"canary start --emit: {exc}", file=sys.stderr)
        return 1
    print(text, end="")
    print(f"write it to {COMPONENT_VALUES}; the overlay you deployed takes the component (manifests/README.md, "
          "\"Canary rollout\"), then kubectl apply -k that overlay", file=sys.stderr)
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    from pipelines.rollout import canary as c

    if getattr(args, "emit", False):
        return emit(args)
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


def add_parser(sub: Any) -> None:
    """Register ``storecast canary``."""
    can = sub.add_parser("canary", help="canary a model version on the InferenceService (kubernetes)")
    steps = can.add_subparsers(dest="action", required=True)
    for name, text in (("start", "pin --version N with --percent of the traffic"), ("status", "show the split"),
                       ("promote", "move champion to the canary's version; the predictor follows champion again"),
                       ("rollback", "no traffic to the canary; the predictor follows champion again")):
        s = steps.add_parser(name, help=text)
        s.add_argument("--isvc", default="storecast", help="InferenceService name")
        s.add_argument("--namespace", default="storecast", help="its namespace")
        s.add_argument("--model-name", default=MODEL_NAME, help="registered model name in MLflow")
        s.add_argument("--tracking-uri", help="MLflow (promote moves, rollback reads the champion alias)")
        if name != "status":
            s.add_argument("--dry-run", action="store_true",
                           help="print the exact patch, change nothing (no cluster: see --from-file)")
            s.add_argument("--from-file", help="with --dry-run: the InferenceService to patch, e.g. from "
                           "`kubectl get isvc storecast -o json` (default: the predictor of manifests/base)")
        if name == "start":
            s.add_argument("--version", required=True, help="model version to canary (models:/NAME/N)")
            s.add_argument("--percent", type=int, default=10, help="share of the traffic it gets, 0..100")
            s.add_argument("--emit", action="store_true",
                           help="print the values file of manifests/components/canary for --version and --percent "
                           "(the declarative canary), change nothing (no cluster)")
        if name == "rollback":
            s.add_argument("--to-version", help="pin to this version instead (default: follow the champion alias)")
        s.set_defaults(func=cmd_canary)
