"""The batch client for every store: ``storecast forecast --stores all`` against the real stack.

    python bench/batch_fleet.py [--workdir build/bench] [--batch-size 100] [--concurrency 4]

One predictor and one transformer (gRPC between them) on loopback serving the shared version; the
client asks every store for the 42 known-ahead days (2015-08-01 .. 2015-09-11) and writes one
Parquet table. Reported: wall time, rows, requests, retries (the client's own summary line). The
baseline is the same stores asked one request per store, one at a time, as a naive loop would.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import time

import orjson
from predictor_common import add_common_arguments, prepare_version, stack

BEGIN, END = "2015-08-01", "2015-09-11"


def one_by_one(port: int, stores: list[str]) -> float:
    """Seconds to ask every store alone, one request after the other, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    for sid in stores:
        body = orjson.dumps({"instances": [{"storeId": sid, "beginDate": BEGIN, "endDate": END}]})
        conn.request("POST", "/v1/models/storecast:predict", body, {"content-type": "application/json"})
        res = conn.getresponse()
        res.read()
        if res.status != 200:
            raise RuntimeError(f"store {sid}: HTTP {res.status}")
    conn.close()
    return time.perf_counter() - t0


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    version = prepare_version(args)
    env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
    with stack(version, "batch") as (pred, front):
        out = version.workdir / "fleet.parquet"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "forecast", "--stores", "all", "--url", front.url,
             "--predictor-url", pred.url, "--begin", BEGIN, "--end", END, "--out", str(out), "--batch-size",
             str(args.batch_size), "--concurrency", str(args.concurrency), "--no-progress"],
            capture_output=True, text=True, env={**os.environ, **env})
        seconds = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"storecast forecast failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = [line for line in proc.stderr.splitlines() if "requests" in line and "retries" in line]
        import pandas as pd

        table = pd.read_parquet(out)
        stores = sorted(table["store"].astype(str).unique().tolist(), key=lambda s: (len(s), s))
        print(f"storecast forecast --stores all: {len(stores)} stores, {len(table)} rows in {seconds:.2f} s "
              f"(process start included); {summary[-1] if summary else proc.stderr[-300:]}", flush=True)
        alone = one_by_one(front.http_port, stores)
        print(f"the same stores one request each, one at a time: {alone:.2f} s", flush=True)
        print(f"RESULT | batch client, every store x 42 days ({len(table)} rows, --batch-size {args.batch_size}, "
              f"--concurrency {args.concurrency}) | {seconds:.2f} s | one store a request, serially {alone:.2f} s | "
              f"{alone / seconds:.1f}x |")


if __name__ == "__main__":
    main()
