"""``storecast train``: one version through the publish step (``pipelines.versions.publish``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.cli.options import add_keep_unknown

# train flags that are FitConfig fields: with --parent, those given explicitly override the inherited ones
CONFIG_FLAGS = ("fitter", "holdout_days", "min_days", "seed", "gate_margin", "interval_width", "transform")


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The publish flags of ``storecast train`` (the gate's as the retrain service has them)."""
    from pipelines.retrain.settings import add_gate_arguments

    t.add_argument("--parent", help="derive from this version (N or @ALIAS, e.g. @champion): its configuration is "
                   "inherited, only stale stores are refitted and its other stores copied")
    t.add_argument("--force", action="store_true", help="with --parent: refit the stores even if they are up to date")
    t.add_argument("--drop-stores", type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()), default=(),
                   help="stores of the current champion this version may leave out (else the gate fails)")
    add_keep_unknown(t, "keep --calendar rows of stores neither in the version nor in the data (pending, applied "
                        "when they are first trained) instead of refusing them")
    add_gate_arguments(t)


def gate_line(summary: dict[str, Any], failed: list[str], margin: float, gate: Any) -> str:
    """The quality gate in words: how many stores passed, which failed, and whether the version passed."""
    evaluated, n_failed = int(summary.get("stores_evaluated", 0)), int(summary.get("gate_failed", len(failed)))
    stores = (f"{evaluated - n_failed} of {evaluated} stores passed the quality gate (holdout WAPE at most "
              f"{1 + margin:.2f} x the seasonal-naive baseline's)")
    if n_failed:
        shown = ", ".join(map(str, failed[:10])) + (" ..." if len(failed) > 10 else "")
        stores += f"; {n_failed} failed: {shown}"
    return f"{stores}; version {'passed' if gate.passed else 'failed: ' + '; '.join(gate.reasons)}"


def _overrides(args: argparse.Namespace, parser_defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in CONFIG_FLAGS
            if getattr(args, k, None) is not None and getattr(args, k) != parser_defaults.get(k)}


def train_via_publish(args: argparse.Namespace, parser_defaults: dict[str, Any]) -> int:
    """Run ``storecast train``; ``parser_defaults`` (the train parser's, from ``pipelines.cli.main``) tell the
    flags given with ``--parent`` from those left as they are."""
    from pipelines.data.calendar import read_calendar
    from pipelines.data.sales_store import BadSales, SalesStore, SalesUnavailable
    from pipelines.retrain.settings import GateSettings
    from pipelines.training.fitting import PROPHET_DEFAULTS, FitConfig
    from pipelines.versions.publish import PublishError, download_parent, publish, trainable
    from pipelines.versions.registry import Registry, RegistryUnavailable, prepare, tracking_uri

    t0 = time.perf_counter()
    cfg = FitConfig.preset(args.model, fitter=args.fitter, holdout_days=args.holdout_days, min_days=args.min_days,
                           seed=args.seed, gate_margin=args.gate_margin,
                           prophet={**PROPHET_DEFAULTS, "interval_width": args.interval_width},
                           **({"transform": args.transform} if args.transform else {}))
    if args.backend == "ray":  # Ray is an optional extra: say how to get it before reading any data
        from pipelines.training.ray_backend import INSTALL_HINT, installed

        if not installed():
            print(INSTALL_HINT, file=sys.stderr)
            return 2
    elif args.ray_address:
        print("--ray-address needs --backend ray", file=sys.stderr)
        return 2
    try:
        sales = SalesStore(args.data).load()  # a path, or a URL (e.g. MLflow's artifact proxy, a RayJob)
    except SalesUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        if not args.parent:
            trainable(sales)  # before the registry is touched: one line, nothing registered
    except PublishError as exc:
        print(f"train failed: {exc}", file=sys.stderr)
        return 1
    calendar_source = f"file {Path(args.calendar).name}" if args.calendar else ""
    if args.calendar and args.calendar_ref:
        print("train failed: give --calendar or --calendar-ref, not both", file=sys.stderr)
        return 2
    try:
        calendar = read_calendar(args.calendar) if args.calendar else None
        if args.calendar_ref:
            store = SalesStore(args.data)
            refs = store.calendar_refs() if args.calendar_ref == "all" else [args.calendar_ref]
            calendar = store.read_calendars(refs) if refs else None
            calendar_source = "sales store " + ",".join(refs)
            if calendar is None:
                print("no calendar in the sales store yet: training without one", file=sys.stderr)
                calendar_source = ""
    except SalesUnavailable as exc:
        print(f"train failed: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a refused ref or an unreadable calendar file: one line
        print(f"train failed: {exc}", file=sys.stderr)
        return 2
    registry = Registry(args.tracking_uri, args.model_name)

    def warm_registry() -> None:  # overlaps MLflow's import and store set-up with the fits
        with contextlib.suppress(Exception):  # register() below meets the same problem and reports it
            prepare(args.tracking_uri, args.model_name)

    from serving.contract import store_sort_key

    stores = args.stores
    if stores is None and args.limit:
        stores = sorted(sales.last, key=store_sort_key)[: args.limit]
    tmp = None
    try:
        champion = None
        parent_ref = args.parent if not args.parent or args.parent.startswith("@") or args.parent.isdigit() \
            else "@" + args.parent
        if args.parent:
            parent, tmp = download_parent(registry, parent_ref)
            if parent is None:
                print(f"--parent {args.parent}: no such alias of {args.model_name}", file=sys.stderr)
                return 2
        else:
            parent = None
            if args.alias == "champion":  # the version this one would replace: none of its stores dropped unlisted
                mv = registry.alias("champion")
                champion = registry.table(str(mv.version)) if mv is not None else None
        follow = parent_ref[1:] if args.parent and parent_ref.startswith("@") else None
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; stdout is for --json
            pub = publish(sales, registry, stores=stores, parent=parent, config=cfg,
                          overrides=_overrides(args, parser_defaults) if parent else None,
                          gate=GateSettings.from_args(args).policy(),
                          alias=args.alias, force=args.force, drop=args.drop_stores, champion=champion,
                          workers=args.workers, progress=not args.no_progress, calendar=calendar,
                          backend=args.backend, ray_address=args.ray_address, while_fitting=warm_registry,
                          parent_alias=follow, keep_unknown=args.keep_unknown_stores,
                          calendar_source=calendar_source,
                          reason="storecast train" + (f" --parent {args.parent}" if args.parent else ""))
    except (BadSales, PublishError, RegistryUnavailable, ValueError) as exc:
        print(f"train failed: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BadSales) else 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    if pub.status == "up_to_date":
        out = {"status": "up_to_date", "version": pub.version, "stores": 0, "alias": None}
        print(json.dumps(out) if args.json else f"every store of version {pub.version} is up to date "
              "(--force refits them)")
        return 0
    result = pub.result
    seconds = {**result.seconds, "register": pub.seconds["total"] - pub.seconds["fit"],
               "total": time.perf_counter() - t0}
    gate = pub.gate
    out = {
        "version": pub.version, "run_id": pub.run_id, "model_uri": pub.model_uri, "stores": len(result.table),
        "failed": pub.failed, "gate_failed": result.gate_failed,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.summary.items()},
        "tracking_uri": tracking_uri(args.tracking_uri), "alias": pub.alias, "parent_version": pub.parent_version,
        "refitted": len(pub.refitted), "gate": {"passed": gate.passed, "reasons": gate.reasons},
        "retries": pub.retries, "pending_calendar_stores": pub.pending, "lineage": pub.lineage,
    }
    if args.json:
        print(json.dumps(out))
    else:
        s = result.summary
        print(f"registered {pub.model_uri} ({len(result.table)} stores fitted, alias {pub.alias or '-'}) "
              f"in {out['seconds']['total']} s")
        print(f"holdout WAPE {s.get('holdout_wape', float('nan')):.4f} vs seasonal-naive "
              f"{s.get('baseline_wape', float('nan')):.4f}; interval coverage "
              f"{s.get('holdout_coverage', float('nan')):.3f}")
        print(gate_line(s, result.gate_failed, result.config.gate_margin, gate))
        for f in pub.failed:
            print(f"skipped store {f['store_id']}: {f['reason']}")
        if pub.retries:
            print(f"derived again from version {pub.parent_version} ({pub.retries} retries): another writer moved "
                  "the alias first")
        if pub.pending:
            print(f"kept the calendar rows of {len(pub.pending)} store(s) not in this version, for when they are "
                  f"trained: {', '.join(pub.pending[:10])}")
    if args.alias and not gate.passed:
        print(f"the version failed the gate, alias {args.alias} not moved: {'; '.join(gate.reasons)}", file=sys.stderr)
        return 1
    return 0
