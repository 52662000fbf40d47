"""Overload: does the stack shed load past capacity instead of queueing without bound?

    python bench/overload.py [--workdir build/bench] [--seconds 15]

On the local chain (transformer -> predictor, gRPC V2), business requests for one store:
1. saturation: closed-loop clients (8, 16, 32, 64) -> the best success throughput S;
2. 2x overload: an open-loop generator offers 2 S req/s (5 s client timeout) to the stack with load
   shedding (``--max-inflight``, default) and, as the baseline, with it off (``--max-inflight 0``).
Goal with shedding: success throughput >= 0.9 S, p99 of successful requests bounded, no timeouts.
"""

from __future__ import annotations

import argparse
import random
import sys

import loadgen
from predictor_common import PREDICTOR, add_common_arguments, prepare_version, start

TRANSFORMER = [sys.executable, "-m", "transformer"]
PATH = "/v1/models/storecast:predict"


class Chain:
    """Predictor + transformer processes for one configuration."""

    def __init__(self, version, name: str, inflight: int) -> None:
        env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
        self.pred = start(PREDICTOR, version.workdir / f"overload-{name}-predictor.log", env,
                          ["--max-inflight", str(inflight)])
        self.pred.wait_ready(600)
        self.front = start(TRANSFORMER, version.workdir / f"overload-{name}-transformer.log", env,
                           ["--predictor_host", f"127.0.0.1:{self.pred.grpc_port}", "--max-inflight", str(inflight)])
        self.front.wait_ready(120)

    def stop(self) -> None:
        self.front.stop()
        self.pred.stop()


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--inflight", type=int, default=64, help="--max-inflight of both servers with shedding")
    args = p.parse_args()
    version = prepare_version(args)
    stores = [str(s) for s in range(1, (version.stores if version.stores > 0 else 1115) + 1)]
    rng = random.Random(0)
    requests = [loadgen.post(PATH, {"instances": [{"storeId": rng.choice(stores)}]}) for _ in range(2000)]

    chain = Chain(version, "shedding", args.inflight)
    try:
        best = {"rps": 0.0}
        for clients in (8, 16, 32, 64):
            row = loadgen.closed(chain.front.http_port, requests, clients, 2, args.seconds).row()
            print(f"saturation: {clients:3d} clients {row['rps']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                  f"p99 {row['p99_ms']:7.1f} ms  shed {row['shed_rps']:.1f}/s", flush=True)
            if row["rps"] > best["rps"]:
                best = {**row, "clients": clients}
        rate = 2 * best["rps"]
        shed = loadgen.open_loop(chain.front.http_port, requests, rate, 2, args.seconds).row()
    finally:
        chain.stop()
    chain = Chain(version, "unbounded", 0)
    try:
        queue = loadgen.open_loop(chain.front.http_port, requests, rate, 2, args.seconds).row()
    finally:
        chain.stop()
    for name, row in (("with shedding", shed), ("unbounded queue", queue)):
        print(f"2x offered ({rate:.0f} req/s), {name:15s}: success {row['rps']:7.1f} req/s "
              f"({row['rps'] / best['rps']:.2f} of best)  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
              f"shed {row['shed_rps']:6.1f}/s  timeouts {row['timeouts']}  failed {row['failed']}", flush=True)
    ok = shed["rps"] >= 0.9 * best["rps"] and shed["timeouts"] == 0
    print(f"\nbest success throughput {best['rps']:.0f} req/s ({best['clients']} clients); at 2x offered load with "
          f"shedding {shed['rps']:.0f} req/s = {shed['rps'] / best['rps']:.2f} of best, p99 {shed['p99_ms']:.0f} ms, "
          f"{shed['timeouts']} timeouts (goal >= 0.9, bounded p99, no timeouts) {'OK' if ok else 'MISSED'}")
    print(f"RESULT | overload: success throughput at 2x offered load (saturation {best['rps']:.0f} req/s) | "
          f"{shed['rps']:.0f} req/s, p99 {shed['p99_ms']:.0f} ms, {shed['timeouts']} timeouts | "
          f"unbounded queue: {queue['rps']:.0f} req/s, p99 {queue['p99_ms']:.0f} ms, {queue['timeouts']} timeouts | "
          f"{shed['rps'] / best['rps']:.2f} |")


if __name__ == "__main__":
    main()
