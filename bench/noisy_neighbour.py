"""Noisy neighbour on the real transformer: can one caller hurt another?

    python bench/noisy_neighbour.py [--workdir build/bench] [--seconds 10] [--rounds 3] [--fleet-clients 4]

The real stack: the predictor and the transformer (the serving layer with its access door over an auth file,
the default ``--max-inflight``), business V1 requests for one store and a week, the open-loop generator of
bench/loadgen.py with each flow in its own process (a flood's answers must not delay the measuring client):

1. ``--rounds`` pairs of: B alone at half its own limit (tier: 100 req/s, burst 100; B offers 50 req/s), then
   the same while A (same tier) floods at 10x its limit (1,000 req/s). Goals: B's success >= 99.9 % in every
   round, B's p99 <= 1.5x B alone (median of the rounds' ratios);
2. the one-store p99 (4 closed-loop clients of an identity without limits) alone, then while
   ``--fleet-clients`` connections of another unlimited identity send the documented maximum (2,000 stores x
   366 days) back to back. Goal: <= 2x alone.

The load average is printed beside every figure: ratios taken while the machine is busy with something
else are not the server's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loadgen
from access import pct, phase, show
from bulk import v1_body
from predictor_common import PREDICTOR, add_common_arguments, prepare_version, start

from serving.access.auth_file import hash_key

PATH = "/v1/models/storecast:predict"
KEYS = {name: f"sc_noisy-{name}" for name in ("a", "b", "solo", "fleet")}
AUTH = f"""
tiers:
  planner: {{requests_per_second: 100, burst: 100, concurrent: 8, permissions: [forecast]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
identities:
  - {{name: a, tier: planner, key_sha256: "{hash_key(KEYS['a'])}"}}
  - {{name: b, tier: planner, key_sha256: "{hash_key(KEYS['b'])}"}}
  - {{name: solo, tier: service, key_sha256: "{hash_key(KEYS['solo'])}"}}
  - {{name: fleet, tier: service, key_sha256: "{hash_key(KEYS['fleet'])}"}}
"""
TRANSFORMER = [sys.executable, "-m", "transformer"]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}), {os.cpu_count()} cores"


class Stack:
    """The real predictor + transformer; the transformer guarded by the auth file above."""

    def __init__(self, workdir: Path, version, extra: list[str]) -> None:
        auth = workdir / "noisy-auth.yaml"
        auth.write_text(AUTH)
        env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
        # a version is checked to --max-days-ahead at load; the bench asks a year ahead at most
        self.pred = start(PREDICTOR, version.workdir / "noisy-predictor.log", env, ["--max-days-ahead", "1000"])
        self.pred.wait_ready(600)
        self.front = start(TRANSFORMER, version.workdir / "noisy-transformer.log", env,
                           ["--predictor_host", f"127.0.0.1:{self.pred.grpc_port}", "--auth-file", str(auth), *extra])
        self.front.wait_ready(120)
        self.port = self.front.http_port

    def stop(self) -> None:
        self.front.stop()
        self.pred.stop()


def fleet(port: int, body: bytes, key: str, clients: int, stop, counts) -> None:
    """``clients`` connections of ``key`` sending ``body`` back to back until ``stop`` is set (own process; a thread
    per connection, each answer read whole)."""
    import http.client
    import threading

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        headers = {"content-type": "application/json", "x-api-key": key}
        while not stop.is_set():
            try:
                conn.request("POST", PATH, body, headers)
                res = conn.getresponse()
                res.read()
                status = res.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            with counts.get_lock():
                counts[0 if status == 200 else 1] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_store(port: int, stores: list[str], seconds: float, clients: int = 4) -> dict[str, float]:
    requests = [loadgen.post(PATH, {"instances": [{"storeId": s, "beginDate": "2015-08-01", "endDate": "2015-08-07"}]},
                             {"x-api-key": KEYS["solo"]}) for s in stores[:500]]
    return loadgen.closed(port, requests, clients, 1.0, seconds).row()


def neighbours(stack: Stack, args: argparse.Namespace) -> tuple[float, float, float]:
    """(worst B success %, median p99 ratio, B alone p99 ms of the median round)."""
    s, rounds = args.seconds, []
    phase(stack.port, {"b": (KEYS["b"], 50)}, 2)  # warm-up
    for i in range(args.rounds):
        alone = phase(stack.port, {"b": (KEYS["b"], 50)}, s)["b"]
        both = phase(stack.port, {"a": (KEYS["a"], 1000), "b": (KEYS["b"], 50)}, s, background=("a",))
        print(f"round {i + 1} ({load()})", flush=True)
        for name, t in (("B alone", alone), ("A flood", both["a"]), ("B during flood", both["b"])):
            show(name, t)
        rounds.append((both["b"].row()["p99_ms"] / alone.row()["p99_ms"], pct(both["b"]), alone.row()["p99_ms"]))
    rounds.sort()
    ratio, _, alone_p99 = rounds[len(rounds) // 2]
    return min(r[1] for r in rounds), ratio, alone_p99


def fleet_load(stack: Stack, args: argparse.Namespace, stores: list[str]) -> tuple[dict, dict, list[int]]:
    alone = one_store(stack.port, stores, args.seconds)
    print(f"one store alone: {alone['rps']:.0f} req/s, p50 {alone['p50_ms']:.1f} ms, p99 {alone['p99_ms']:.1f} ms "
          f"({load()})", flush=True)
    big = v1_body([stores[i % len(stores)] for i in range(2000)], "2015-08-01", "2016-07-31")
    ctx = multiprocessing.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("i", 2)
    proc = ctx.Process(target=fleet, args=(stack.port, big, KEYS["fleet"], args.fleet_clients, stop, counts),
                       daemon=True)
    proc.start()
    time.sleep(3.0)
    busy = one_store(stack.port, stores, args.seconds)
    stop.set()
    proc.join(600)
    print(f"one store while {args.fleet_clients} clients send 2,000 x 366-day requests: {busy['rps']:.0f} req/s, "
          f"p50 {busy['p50_ms']:.1f} ms, p99 {busy['p99_ms']:.1f} ms ({counts[0]} fleet answers, {counts[1]} refused "
          f"or failed; {load()})", flush=True)
    return alone, busy, [counts[0], counts[1]]


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each phase")
    p.add_argument("--rounds", type=int, default=3, help="B alone / B during the flood pairs (median ratio)")
    p.add_argument("--fleet-clients", type=int, default=4, help="connections sending the largest request")
    p.add_argument("--skip-fleet", action="store_true", help="only the noisy neighbour")
    p.add_argument("--max-inflight", type=int, help="the transformer's --max-inflight (default: its own)")
    args = p.parse_args()
    version = prepare_version(args)
    n = version.stores if version.stores > 0 else 1115
    stores = [str(i) for i in range(1, n + 1)]
    print(f"the real transformer -> predictor (gRPC), one store, 7 days; {args.seconds:.0f} s per phase, "
          f"{args.rounds} rounds; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if args.max_inflight is None else ["--max-inflight", str(args.max_inflight)]
        stack = Stack(Path(tmp), version, extra)
        try:
            worst, ratio, alone_p99 = neighbours(stack, args)
            fleet_figures = None if args.skip_fleet else fleet_load(stack, args, stores)
        finally:
            stack.stop()
    ok = worst >= 99.9 and ratio <= 1.5
    print(f"RESULT | noisy neighbour: B's success while A floods at 10x its limit (worst of {args.rounds}) | "
          f"{worst:.2f} % | goal >= 99.9 % | {load()} |")
    print(f"RESULT | noisy neighbour: B's p99 while A floods (median of {args.rounds}) | {ratio:.2f}x | B alone "
          f"{alone_p99:.1f} ms, goal <= 1.5x {'OK' if ok else 'MISSED'} | {load()} |")
    if fleet_figures is not None:
        alone, busy, _ = fleet_figures
        r = busy["p99_ms"] / alone["p99_ms"]
        print(f"RESULT | one-store p99 under maximum fleet load ({args.fleet_clients} clients, 2,000 x 366 days) | "
              f"{busy['p99_ms']:.1f} ms | alone {alone['p99_ms']:.1f} ms | {r:.2f}x (goal <= 2x) "
              f"{'OK' if r <= 2 else 'MISSED'} | {load()} |")


if __name__ == "__main__":
    main()
