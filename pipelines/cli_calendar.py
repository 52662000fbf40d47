"""``storecast calendar push``: a new calendar served without a refit; and ``export --begin/--end``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def cmd_push(args: argparse.Namespace) -> int:
    from pipelines.calendar_push import main_push

    out = main_push(args.calendar, tracking_uri=args.tracking_uri, model_name=args.model_name, alias=args.alias,
                    version=args.version, move_alias=not args.no_alias)
    if args.json:
        print(json.dumps(out))
    else:
        moved = "" if args.no_alias else f", alias {args.alias} moved"
        print(f"registered {out['model_uri']} from version {out['parent_version']}: {out['days']} calendar days "
              f"for {out['stores_changed']} of {out['stores']} stores (calendar to {out['calendar_end']}){moved} "
              f"in {out['seconds']} s")
    return 0


def _day(text: str, flag: str) -> int:
    try:
        return int(np.datetime64(text, "D").astype(np.int64))
    except ValueError:
        raise SystemExit(f"storecast export: {flag}: not a date (YYYY-MM-DD): {text[:40]!r}") from None


def export_window_cmd(args: argparse.Namespace, model_json: str) -> int:
    """``storecast export --begin D [--end D] --out DIR``: stock model, future frame, served numbers."""
    from pipelines.export import export_window
    from pipelines.registry import PARAMS_FILE, download
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calendar", help="the retail calendar of a model version")
    cs = c.add_subparsers(dest="calendar_command", required=True)
    p = cs.add_parser("push", help="register the version again with a new calendar (no refit) and move the alias")
    p.add_argument("--calendar", required=True, help="test.csv layout: Store, Date, Open, Promo, StateHoliday, "
                                                     "SchoolHoliday (.csv, .csv.gz, .parquet)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--model-name", default="storecast", help="registered model name")
    p.add_argument("--alias", default="champion", help="the alias whose version gets the calendar, and is moved")
    p.add_argument("--version", help="derive from this version instead of the alias's")
    p.add_argument("--no-alias", action="store_true", help="register only; move no alias")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_push)
