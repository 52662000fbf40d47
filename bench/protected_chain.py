"""The protected chain at full rate: transformer -> predictor with auth files and the transformer's service key,
against the same chain open (no auth files), on the same machine, in the same run.

    python bench/protected_chain.py [--workdir build/bench] [--seconds 10] [--rounds 2] [--clients 16]

Both chains are the local stack (``pipelines.stack.LocalStack``) on the shared trained version
(``--workdir``, bench/predictor_common.py), gRPC between the servers. Protected: the stack's auth file
(no ``anonymous`` tier; the load generator's identity in a tier without a rate limit) checked by the
transformer, and a copy of it with the transformer's own identity checked by the predictor, so every
business request passes two doors (authentication, permission, an audit line each).
Business V1 requests for one store and a week, ``--clients`` keep-alive clients in a closed
loop (bench/loadgen.py), the chains in turn, ``--rounds`` times. Goal: the protected chain at >= 0.8 of
the open one, and no request refused.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

import loadgen
from predictor_common import REPO, add_common_arguments, prepare_version

from pipelines.stack import LocalStack
from serving.access.auth_file import hash_key

PATH = "/v1/models/storecast:predict"
CLIENT_KEY = "sc_bench-protected-chain-client"
AUTH = f"""\
version: 1
tiers:
  bench: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
identities:
  - {{name: bench-client, tier: bench, key_sha256: "{hash_key(CLIENT_KEY)}"}}
"""
GOAL = 0.8
WEEK = {"beginDate": "2015-08-01", "endDate": "2015-08-07"}  # the week after the data (bench/access.py's)


def run(kind: str, version, args: argparse.Namespace, requests: list[bytes], round_: int) -> dict[str, float]:
    logs = version.workdir / f"protected-chain-{kind}-{round_}"
    auth = None
    if kind == "protected":
        logs.mkdir(parents=True, exist_ok=True)
        auth = logs / "auth.yaml"
        auth.write_text(AUTH)
    quiet = ["--enable_latency_logging", "false"]
    with LocalStack(version.model_uri, version.tracking_uri, log_dir=logs, auth_file=auth, predictor_args=quiet,
                    transformer_args=quiet) as stack:
        return loadgen.closed(stack.transformer.http_port, requests, args.clients, args.warmup, args.seconds).row()


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.set_defaults(workdir=str(REPO / "build" / "bench"))  # the version the other benchmarks share
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args()
    version = prepare_version(args)
    stores = [str(s) for s in range(1, (version.stores if version.stores > 0 else 1115) + 1)]
    rng = random.Random(0)
    bodies = [{"instances": [{"storeId": rng.choice(stores), **WEEK}]} for _ in range(2000)]
    requests = {"open": [loadgen.post(PATH, b) for b in bodies],
                "protected": [loadgen.post(PATH, b, {"x-api-key": CLIENT_KEY}) for b in bodies]}
    results: dict[str, list[dict[str, float]]] = {"open": [], "protected": []}
    for r in range(args.rounds):
        for kind in results:
            res = run(kind, version, args, requests[kind], r)
            results[kind].append(res)
            print(f"round {r + 1}: {kind:9s} chain {res['rps']:7.1f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                  f"p99 {res['p99_ms']:7.2f} ms  refused/shed {res['shed_rps']:.1f}/s  failed {res['failed']}  "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rps = {k: statistics.median(x["rps"] for x in v) for k, v in results.items()}
    failed = any(x["failed"] or x["shed_rps"] for v in results.values() for x in v)
    ratio = rps["protected"] / rps["open"] if rps["open"] else float("nan")
    print(f"\nbusiness V1 through transformer -> predictor (gRPC), {args.clients} clients, {os.cpu_count()} cores, "
          f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}:\n"
          f"  {'open (no auth files)':38s} {rps['open']:7.0f} req/s\n"
          f"  {'protected (auth files + service key)':38s} {rps['protected']:7.0f} req/s\n"
          f"  ratio {ratio:.2f} (goal >= {GOAL} and nothing refused) "
          f"{'OK' if ratio >= GOAL and not failed else 'MISSED'}")
    print(f"RESULT | protected chain (auth files, transformer's service key), business V1, {args.clients} clients | "
          f"{rps['protected']:.0f} req/s | open chain {rps['open']:.0f} req/s | {ratio:.2f} (goal >= {GOAL}) |")


if __name__ == "__main__":
    sys.exit(main())
