"""End to end: business requests through transformer -> predictor, vs the trivial chain, in one run.

    python bench/e2e_http.py [--workdir build/bench] [--seconds 10] [--protocol grpc-v2]

One store per request, the default 7-day window, 16 concurrent keep-alive clients. The baseline is
a trivial transformer (KServe's stock transformer path, ``bench/trivial_transformer.py``) in front
of a trivial predictor (constant answer, ``bench/predictor_trivial.py``), on the same protocol.
Goals: >= 0.7 of the trivial chain and >= 400 req/s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import loadgen
from predictor_common import PREDICTOR, TRIVIAL, add_common_arguments, prepare_version, start

TRANSFORMER = [sys.executable, "-m", "transformer"]
TRIVIAL_TRANSFORMER = [sys.executable, str(Path(__file__).with_name("trivial_transformer.py"))]
PATH = "/v1/models/storecast:predict"


def chain(kind: str, version, args: argparse.Namespace, requests: list[bytes]) -> dict[str, float]:
    env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
    pred = start(PREDICTOR if kind == "storecast" else TRIVIAL, version.workdir / f"e2e-{kind}-predictor.log", env)
    front = None
    try:
        pred.wait_ready(600)
        port = pred.grpc_port if args.protocol == "grpc-v2" else pred.http_port
        front = start(TRANSFORMER if kind == "storecast" else TRIVIAL_TRANSFORMER,
                      version.workdir / f"e2e-{kind}-transformer.log", env,
                      ["--predictor_host", f"127.0.0.1:{port}", "--predictor_protocol", args.protocol])
        front.wait_ready(120)
        return loadgen.closed(front.http_port, requests, args.clients, args.warmup, args.seconds).row()
    finally:
        for s in (front, pred):
            if s is not None:
                s.stop()


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--protocol", default="grpc-v2", choices=["grpc-v2", "v2"])
    args = p.parse_args()
    version = prepare_version(args)
    stores = [str(s) for s in range(1, (version.stores if version.stores > 0 else 1115) + 1)]
    rng = random.Random(0)
    requests = [loadgen.post(PATH, {"instances": [{"storeId": rng.choice(stores)}]}) for _ in range(2000)]
    results: dict[str, list[dict[str, float]]] = {"trivial": [], "storecast": []}
    for r in range(args.rounds):
        for kind in results:
            res = chain(kind, version, args, requests)
            results[kind].append(res)
            print(f"round {r + 1}: {kind:9s} chain {res['rps']:7.1f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                  f"p99 {res['p99_ms']:7.2f} ms  failed {res['failed']}", flush=True)
    rps = {k: statistics.median(x["rps"] for x in v) for k, v in results.items()}
    ratio = rps["storecast"] / rps["trivial"]
    print(f"\nbusiness request through transformer -> predictor ({args.protocol}): {rps['storecast']:.0f} req/s vs "
          f"trivial chain {rps['trivial']:.0f} req/s: {ratio:.2f} (goal >= 0.7 and >= 400 req/s) "
          f"{'OK' if ratio >= 0.7 and rps['storecast'] >= 400 else 'MISSED'}")
    print(f"RESULT | end to end, business V1 -> transformer -> predictor ({args.protocol}), 16 clients | "
          f"{rps['storecast']:.0f} req/s | trivial chain {rps['trivial']:.0f} req/s | {ratio:.2f} |")


if __name__ == "__main__":
    main()
