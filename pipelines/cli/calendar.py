"""``storecast calendar push`` (a new calendar served without a refit), ``calendar upload`` (a calendar into the
sales store), and ``export --begin/--end``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from pipelines.cli.options import add_keep_unknown
from serving.contract import MODEL_NAME


def cmd_push(args: argparse.Namespace) -> int:
    from pipelines.versions.calendar_push import main_push

    out = main_push(args.calendar, tracking_uri=args.tracking_uri, model_name=args.model_name, alias=args.alias,
                    version=args.version, move_alias=not args.no_alias, keep_unknown=args.keep_unknown_stores)
    if args.json:
        print(json.dumps(out))
    else:
        moved = "" if args.no_alias else f", alias {args.alias} moved"
        again = f" (laid over version {out['parent_version']} after {out['retries']} retries: another writer moved " \
                "the alias)" if out["retries"] else ""
        print(f"registered {out['model_uri']} from version {out['parent_version']}: {out['days']} calendar days "
              f"for {out['stores_changed']} of {out['stores']} stores (calendar to {out['calendar_end']}){moved} "
              f"in {out['seconds']} s{again}")
        if out["pending"]:
            print(f"kept the rows of {len(out['pending'])} store(s) the version does not hold, for when they are "
                  f"trained: {', '.join(out['pending'][:10])}")
    return 0


def _day(text: str, flag: str) -> int:
    import numpy as np

    try:
        return int(np.datetime64(text, "D").astype(np.int64))
    except ValueError:
        raise SystemExit(f"storecast export: {flag}: not a date (YYYY-MM-DD): {text[:40]!r}") from None


def export_window_cmd(args: argparse.Namespace, model_json: str) -> int:
    """``storecast export --begin D [--end D] --out DIR``: stock model, future frame, served numbers."""
    import numpy as np

    from pipelines.training.export import export_window
    from pipelines.versions.registry import PARAMS_FILE, download
    from predictor.table import ParamTable

    if not args.begin:
        raise SystemExit("storecast export: --end needs --begin")
    begin = _day(args.begin, "--begin")
    end = _day(args.end, "--end") if args.end else begin + 41
    if end < begin:
        raise SystemExit("storecast export: --end is before --begin")
    local = Path(args.model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        if local.exists():
            params = next(local.rglob(PARAMS_FILE), None)
            if params is None:
                raise SystemExit(f"storecast export: {PARAMS_FILE} not found under {args.model_uri}")
        else:
            params = download(args.model_uri, tmp, PARAMS_FILE, uri=os.environ.get("MLFLOW_TRACKING_URI"))
        table = ParamTable.load(params)
    paths = export_window(table, model_json, args.store, np.arange(begin, end + 1), args.out)
    print(f"wrote store {args.store} of {args.model_uri} ({end - begin + 1} days) to {args.out}: "
          + ", ".join(Path(p).name for p in paths.values()), file=sys.stderr)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    """``calendar upload FILE --sales STORE``: the calendar stored in the sales store, its ref on stdout."""
    from pipelines import events
    from pipelines.cli.data import send_event
    from pipelines.data.calendar import read_calendar
    from pipelines.data.sales_store import SalesStore, SalesUnavailable

    try:
        frame = read_calendar(args.file)
        ref = SalesStore(args.sales).put_calendar(frame)
    except SalesUnavailable as exc:
        print(f"calendar upload: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # not a calendar, no rows, over the size limit: named, nothing stored
        print(f"calendar upload: {exc}", file=sys.stderr)
        return 2
    first, last = f"{frame['Date'].min():%Y-%m-%d}", f"{frame['Date'].max():%Y-%m-%d}"
    out = {"calendar": ref, "rows": len(frame), "stores": int(frame["Store"].nunique()), "first": first, "last": last}
    print(json.dumps(out) if args.json else ref)
    print(f"stored {out['rows']} calendar rows of {out['stores']} stores ({first} to {last}) as {ref}", file=sys.stderr)
    if not args.url:
        return 0
    return send_event(args.url, events.CALENDAR_UPDATED, {"calendar": ref}, args.api_key, "calendar upload")


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calendar", help="the retail calendar of a model version")
    cs = c.add_subparsers(dest="calendar_command", required=True)
    p = cs.add_parser("push", help="register the version again with a new calendar (no refit) and move the alias")
    p.add_argument("--calendar", required=True, help="test.csv layout: Store, Date, Open, Promo, StateHoliday, "
                                                     "SchoolHoliday (.csv, .csv.gz, .parquet)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--model-name", default=MODEL_NAME, help="registered model name")
    p.add_argument("--alias", default="champion", help="the alias whose version gets the calendar, and is moved")
    p.add_argument("--version", help="derive from this version instead of the alias's")
    p.add_argument("--no-alias", action="store_true", help="register only; move no alias")
    add_keep_unknown(p, "keep the rows of stores the version does not hold (pending, applied when they are first "
                        "trained) instead of refusing the calendar")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_push)
    from pipelines.cli.data import add_event_arguments

    u = cs.add_parser("upload", help="store a calendar file in the sales store; prints its ref (what "
                      "com.storecast.calendar.updated and `storecast train --calendar-ref` name)")
    u.add_argument("file", help="test.csv layout: Store, Date, Open, Promo, StateHoliday, SchoolHoliday "
                                "(.csv, .csv.gz, .parquet)")
    u.add_argument("--sales", required=True, help="the sales store (a path, or the artifact-proxy URL the retrain "
                   "service reads); the calendar goes to <base>.calendars/")
    u.add_argument("--url", help="retrain service (or Broker) URL: also send com.storecast.calendar.updated "
                   "{\"calendar\": REF} (its answer follows on stdout)")
    u.add_argument("--json", action="store_true", help="print one JSON line (calendar, rows, stores, first, last) "
                   "instead of the bare ref")
    add_event_arguments(u)
    u.set_defaults(func=cmd_upload)
