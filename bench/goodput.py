"""Goodput: the highest offered rate at which >= 99 % of requests succeed within the latency target, of storecast's
servers and of the trivial KServe model and chain, in the same run.

    python bench/goodput.py [--workdir build/bench] [--kinds v2,chain,grpc,fleet] [--seconds 5] [--allow-busy]

Kinds, each against its trivial twin (bench/predictor_trivial.py, bench/trivial_transformer.py):
- ``v2``: the predictor's V2 REST, one store x 7 days (target 50 ms);
- ``chain``: the business V1 API, transformer -> predictor over gRPC, one store x 7 days (target 50 ms;
  goal: >= 0.8 of the trivial chain's goodput);
- ``grpc``: the predictor's V2 gRPC ``ModelInfer``, one store x 7 days (target 50 ms);
- ``fleet``: the predictor's V2 REST, every store x 42 days (1,115 x 42 on Rossmann; target 2 s).

Load is open loop, as goodput must be measured: requests leave on a fixed schedule whatever the answers
(bench/loadgen.py for HTTP, grpc.aio here for gRPC), and latency runs from the scheduled time, so queueing in
the client counts. Each step offers one rate for ``--warmup`` + ``--seconds`` (longer at slow rates, until
it offered ``--min-requests``, at most ``--max-step-seconds``); rates grow by ``--factor`` from ``--start``
until a step misses, then ``--refine`` bisections between the last step met and the first missed. Goodput is
the last rate met before the first miss (loadtest/goodput.py). The client runs on the same cores as the
servers, the same way for both. A plot per server goes to ``results/goodput-<kind>-<server>.png``.
The machine must be quiet (bench/quiet.py): the load average stands beside every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import loadgen
import quiet
from predictor_common import PREDICTOR, REPO, TRANSFORMER, TRIVIAL, add_common_arguments, prepare_version, start

from loadtest import goodput as gp

TRIVIAL_TRANSFORMER = [sys.executable, str(Path(__file__).with_name("trivial_transformer.py"))]
V1 = "/v1/models/storecast:predict"
V2 = "/v2/models/storecast/infer"
INFER = "/inference.GRPCInferenceService/ModelInfer"
WEEK = [f"2015-08-0{d}" for d in range(1, 8)]  # the week after the Rossmann data
FLEET_DAYS = [f"2015-{m:02d}-{d:02d}" for m, last in ((8, 31), (9, 11)) for d in range(1, last + 1)]  # 42 days
GOAL = {"chain": 0.8}


@dataclass
class Kind:
    what: str
    target_ms: float
    start: float  # first offered rate, requests/s
    max_rate: float


KINDS = {
    "v2": Kind("predictor V2 REST, one store x 7 days", 50.0, 50.0, 5000.0),
    "chain": Kind("business V1 chain (transformer -> predictor, gRPC), one store x 7 days", 50.0, 50.0, 5000.0),
    "grpc": Kind("predictor V2 gRPC, one store x 7 days", 50.0, 50.0, 5000.0),
    "fleet": Kind("predictor V2 REST, every store x 42 days", 2000.0, 1.0, 50.0),
}


def v2_body(stores: list[str], days: list[str]) -> dict:
    ids = [s for s in stores for _ in days]
    return {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [len(ids)], "data": ids},
                       {"name": "ds", "datatype": "BYTES", "shape": [len(ids)], "data": days * len(stores)}]}


def grpc_message(store: str) -> bytes:
    """A serialized ``ModelInferRequest``: one store, 7 days (KServe's stubs; this script's argv is harmless)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    def tensor(name: str, values: list[str]) -> object:
        return pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[len(values)],
                                                     contents=pb.InferTensorContents(
                                                         bytes_contents=[v.encode() for v in values]))

    return pb.ModelInferRequest(model_name="storecast", inputs=[tensor("store_id", [store] * 7),
                                                                tensor("ds", WEEK)]).SerializeToString()


def requests_of(kind: str, stores: list[str]) -> list[bytes]:
    rng = random.Random(0)
    if kind == "grpc":
        return [grpc_message(rng.choice(stores)) for _ in range(500)]
    if kind == "fleet":
        return [loadgen.post(V2, v2_body(stores, FLEET_DAYS))]
    if kind == "chain":
        return [loadgen.post(V1, {"instances": [{"storeId": rng.choice(stores), "beginDate": WEEK[0],
                                                 "endDate": WEEK[-1]}]}) for _ in range(2000)]
    return [loadgen.post(V2, v2_body([rng.choice(stores)], WEEK)) for _ in range(2000)]


@contextlib.contextmanager
def serving(kind: str, server: str, version) -> Iterator[int]:
    """The port to load: storecast's (``server`` "storecast") or the trivial twin, started and ready. The
    requests ask for the weeks after the data: a year ahead is checked (not 100,000 days, where Rossmann
    versions have infinite bounds)."""
    env = {"MLFLOW_TRACKING_URI": version.tracking_uri, "STORECAST_MAX_DAYS_AHEAD": "400"}
    logs = version.workdir / f"goodput-{kind}-{server}"
    ours = server == "storecast"
    pred = start(PREDICTOR if ours else TRIVIAL, Path(f"{logs}-predictor.log"), env)
    front = None
    try:
        pred.wait_ready(600)
        if kind == "chain":  # as predictor_common.stack: gRPC between the two
            front = start(TRANSFORMER if ours else TRIVIAL_TRANSFORMER, Path(f"{logs}-transformer.log"), env,
                          ["--predictor_host", f"127.0.0.1:{pred.grpc_port}", "--predictor_protocol", "grpc-v2"])
            front.wait_ready(120)
            yield front.http_port
        else:
            yield pred.grpc_port if kind == "grpc" else pred.http_port
    finally:
        for s in (front, pred):
            if s is not None:
                s.stop()


async def _grpc_open(port: int, messages: list[bytes], rate: float, warmup: float, seconds: float,
                     timeout: float, channels: int = 4) -> loadgen.Tally:
    """Open-loop ``ModelInfer`` calls at ``rate`` on ``channels`` channels; as ``loadgen.open_loop`` counts."""
    import grpc

    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(channels)]
    calls = [c.unary_unary(INFER) for c in chans]  # bytes in and out: serialized once, beforehand
    await asyncio.gather(*(c.channel_ready() for c in chans))
    shed = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    tally, rng, tasks = loadgen.Tally(seconds), random.Random(0), set()
    t0 = time.perf_counter()
    begin, stop = t0 + warmup, t0 + warmup + seconds

    async def one(n: int, sent: float) -> None:
        try:
            await calls[n % channels](rng.choice(messages), timeout=timeout)
            status = 200
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                tally.timeouts += sent >= begin
                return
            status = 503 if exc.code() in shed else 500
        if sent >= begin:
            tally.count(status, time.perf_counter() - sent)

    n = 0
    while (now := time.perf_counter()) < stop:
        due = t0 + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for c in chans))
    return tally


def step(kind: str, port: int, requests: list[bytes], rate: float, args: argparse.Namespace) -> gp.Step:
    """One offered rate for ``--warmup`` + ``--seconds``: the share within the target and the percentiles."""
    target = KINDS[kind].target_ms
    timeout = max(2.0, 10 * target / 1000)  # an answer later than this missed the target long ago
    # a share of 99 % means something over at least --min-requests requests: slow rates run longer
    seconds = min(max(args.seconds, args.min_requests / rate), args.max_step_seconds)
    if kind == "grpc":
        tally = asyncio.run(_grpc_open(port, requests, rate, args.warmup, seconds, timeout))
    else:
        tally = loadgen.open_loop(port, requests, rate, args.warmup, seconds, timeout=timeout)
    sent = tally.ok + tally.shed + tally.failed + tally.timeouts
    time.sleep(args.pause)  # let what the server still holds drain before the next step
    return gp.make_step(rate, round(rate * seconds), sent, [1000 * x for x in tally.latency], target,
                        load=os.getloadavg()[0])


def measure_at(kind: str, port: int, requests: list[bytes], args: argparse.Namespace, rate: float) -> gp.Step:
    return step(kind, port, requests, rate, args)


def search(measure: Callable[[float], gp.Step], kind: Kind, args: argparse.Namespace) -> list[gp.Step]:
    """Rates up by ``--factor`` until a step misses (down from the start when the first does), then bisections."""
    steps: list[gp.Step] = []

    def run(rate: float) -> gp.Step:
        s = measure(float(f"{rate:.3g}"))
        steps.append(s)
        print(f"    {s.offered:8.3g} req/s offered: {s.share:7.2%} within {kind.target_ms:g} ms, p50 {s.p50_ms:7.1f} "
              f"p99 {s.p99_ms:8.1f} ms, load {s.load:.2f}", flush=True)
        return s

    rate = args.start or kind.start
    first = run(rate)
    for _ in range(4 if first.share < gp.SHARE else 0):  # too much already: go down
        rate /= args.factor * args.factor
        if run(rate).share >= gp.SHARE:
            break
    if first.share >= gp.SHARE:
        while (rate := rate * args.factor) <= kind.max_rate and run(rate).share >= gp.SHARE:
            pass
    for _ in range(args.refine):
        lo = gp.goodput(steps)
        above = [s.offered for s in steps if lo is not None and s.offered > lo]
        if lo is None or not above or min(above) / lo < 1.04:
            break
        run((lo + min(above)) / 2)
    return steps


def main() -> int:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.set_defaults(workdir=str(REPO / "build" / "bench"))  # the version the other benchmarks share
    p.add_argument("--kinds", default="v2,chain,grpc,fleet", help="comma-separated: " + ", ".join(KINDS))
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds of each step")
    p.add_argument("--min-requests", type=float, default=200, help="a step lasts until it offered this many")
    p.add_argument("--max-step-seconds", type=float, default=30.0, help="... or this long")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds at the step's rate before measuring")
    p.add_argument("--server-warmup", type=float, default=3.0, help="seconds at the first rate, not measured, "
                   "when a server is ready")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds after each step")
    p.add_argument("--start", type=float, help="first offered rate (default: per kind)")
    p.add_argument("--factor", type=float, default=1.5, help="rate growth from step to step")
    p.add_argument("--refine", type=int, default=2, help="bisection steps between the last met and first missed")
    p.add_argument("--out", default=str(REPO / "results"), help="folder of the plots")
    args = quiet.add_arguments(p).parse_args()
    guard = quiet.require_quiet(args)
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r}: one of {', '.join(KINDS)}")
    version = prepare_version(args)
    stores = [str(s) for s in range(1, (version.stores if version.stores > 0 else 1115) + 1)]
    rows = []
    for k in kinds:
        kind, requests, found = KINDS[k], requests_of(k, stores), {}
        for server in ("storecast", "trivial"):
            print(f"{kind.what}, {server}:", flush=True)
            with serving(k, server, version) as port:
                warm = argparse.Namespace(**{**vars(args), "seconds": args.server_warmup, "min_requests": 0})
                step(k, port, requests, kind.start, warm)  # caches, connections, first compilations: not measured
                steps = search(functools.partial(measure_at, k, port, requests, args), kind, args)
            best = gp.goodput(steps)
            title = f"{kind.what}, {server if server == 'storecast' else 'trivial KServe'}"
            png = gp.plot(steps, kind.target_ms, Path(args.out) / f"goodput-{k}-{server}.png", title,
                          note=guard.label())
            found[server] = (best or 0.0, os.getloadavg()[0])
            print(f"  goodput {best or 0:g} req/s ({guard.label()}); plot {png}", flush=True)
        rows.append((k, kind, found))
    guard.recheck()
    print(f"\ngoodput: the highest offered rate with >= {gp.SHARE:.0%} of requests answered within the target "
          f"(open loop); {guard.label(why=True)}")
    print(f"{'request':72s} {'target':>7s} {'storecast':>18s} {'trivial':>18s} {'ratio':>6s}")
    for k, kind, found in rows:
        (ours, l1), (base, l2) = found["storecast"], found["trivial"]
        ratio = ours / base if base else float("nan")
        goal = f"goal >= {GOAL[k]}" if k in GOAL else "no goal"
        verdict = "" if k not in GOAL else (" OK" if ratio >= GOAL[k] else " MISSED")
        print(f"{kind.what:72s} {kind.target_ms:5g}ms {ours:7.4g} (load {l1:4.2f}) {base:7.4g} (load {l2:4.2f}) "
              f"{ratio:6.2f} {goal}{verdict}{'' if not guard.busy else ', ' + quiet.BUSY}")
        print(f"RESULT | goodput, {kind.what}, >= 99 % within {kind.target_ms:g} ms | {ours:.4g} req/s "
              f"(load {l1:.2f}) | trivial {base:.4g} req/s (load {l2:.2f}) | {guard.ratio(ratio, goal)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
