"""HTTP throughput: V2 REST, 16 concurrent clients, a random store per request, 7 days.

    python bench/predictor_http.py [--workdir build/bench] [--seconds 10] [--workers 1]

Measured in one run, one server at a time, alternately: the predictor (all 1,115 stores of a
version), a trivial KServe model with a constant answer started with the same ModelServer flags
(``bench/predictor_trivial.py``), and a naive per-request Prophet predictor holding the first
``--naive-stores`` stock models (``bench/predictor_naive.py``; ``--naive-stores 0`` skips it). The
load client is a small asyncio HTTP/1.1 client with keep-alive connections, so that it needs far
less CPU than the servers. Goals: predictor >= 0.8 x trivial, and >= 50 x naive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np
from predictor_common import PREDICTOR, TRIVIAL, Server, add_common_arguments, prepare_version, start

NAIVE = [PREDICTOR[0], str(Path(__file__).with_name("predictor_naive.py"))]
PATH = "/v2/models/storecast/infer"


def request_bytes(store_id: str, first: str, days: int = 7) -> bytes:
    """One V2 request (with its HTTP/1.1 head): a store's ``days`` days from ``first``."""
    dates = (np.datetime64(first) + np.arange(days)).astype(str).tolist()
    body = json.dumps({"inputs": [
        {"name": "store_id", "shape": [days], "datatype": "BYTES", "data": [store_id] * days},
        {"name": "ds", "shape": [days], "datatype": "BYTES", "data": dates},
    ]}).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _client(port: int, requests: list[bytes], stop_at: float, measure_from: float,
                  stats: dict[str, list]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random()
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(rng.choice(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            if now >= measure_from:
                stats["latency"].append(time.perf_counter() - now)
                stats["ok" if status == 200 else "failed"].append(status)
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], clients: int, warmup: float, seconds: float) -> dict[str, float]:
    """``clients`` keep-alive connections sending random requests for ``warmup + seconds``."""
    stats: dict[str, list] = {"latency": [], "ok": [], "failed": []}
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup, t0 + warmup + seconds
    await asyncio.gather(*(_client(port, requests, stop_at, measure_from, stats) for _ in range(clients)))
    lat = sorted(stats["latency"]) or [float("nan")]
    return {"rps": len(stats["ok"]) / seconds, "failed": len(stats["failed"]),
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)]}


def measure(server: Server, requests: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    """Warm up, then load the server for ``args.seconds``; also its CPU seconds per request."""
    import psutil

    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    server.wait_ready(timeout=600)
    run(_load(server.http_port, requests, args.clients, 0.0, args.warmup))
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    res = run(_load(server.http_port, requests, args.clients, 0.0, args.seconds))
    cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0
    res["cpu_us"] = 1e6 * cpu / max(1.0, res["rps"] * args.seconds)
    return res


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of both servers")
    parser.add_argument("--naive-stores", type=int, default=100)
    args = parser.parse_args()
    version = prepare_version(args)
    env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
    flags = ["--workers", str(args.workers)]

    from predictor.source import ModelSource

    os.environ["MLFLOW_TRACKING_URI"] = version.tracking_uri
    source = ModelSource.parse(version.model_uri)
    table = source.fetch(source.resolve())
    ids = table.store_id.tolist()
    first = {sid: str(np.datetime64(int(day) + 1, "D")) for sid, day in zip(ids, table.last_day.tolist(), strict=True)}
    requests = [request_bytes(sid, first[sid]) for sid in ids]
    print(f"data: {version.data}; version {source.resolve()} with {len(ids)} stores; {args.clients} clients, "
          f"{args.workers} worker(s), {args.seconds:.0f} s per server and round", flush=True)

    kinds = {"trivial": (TRIVIAL, requests), "predictor": (PREDICTOR, requests)}
    if args.naive_stores > 0:
        import mlflow.artifacts

        models, params = (mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{source.name}/{source.resolve()}/artifacts/{name}",
            dst_path=str(version.workdir / "naive")) for name in ("prophet_models.zip", "params.npz"))
        naive_ids = sorted(ids, key=lambda s: (len(s), s))[: args.naive_stores]
        kinds["naive"] = ([*NAIVE, "--models", models, "--params", params, "--stores", str(args.naive_stores)],
                          [request_bytes(sid, first[sid]) for sid in naive_ids])
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for name, (command, reqs) in kinds.items():
            if name == "naive" and r > 0:
                continue  # slow and stable: one round is enough
            server = start(command, version.workdir / f"http-{name}.log", env, flags)
            try:
                res = measure(server, reqs, args)
            finally:
                server.stop()
            results[name].append(res)
            print(f"round {r + 1}: {name:9s} {res['rps']:8.1f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                  f"p99 {res['p99_ms']:7.2f} ms  server CPU {res['cpu_us']:7.0f} us/request  failed {res['failed']}",
                  flush=True)
    rps = {k: statistics.median(x["rps"] for x in v) for k, v in results.items()}
    cpu = {k: statistics.median(x["cpu_us"] for x in v) for k, v in results.items()}
    failed = sum(x["failed"] for v in results.values() for x in v)
    print()
    ratio = rps["predictor"] / rps["trivial"]
    print(f"predictor {rps['predictor']:.0f} req/s vs trivial KServe model {rps['trivial']:.0f} req/s (medians of "
          f"{args.rounds} rounds): {ratio:.2f} (goal >= 0.8) {'OK' if ratio >= 0.8 else 'MISSED'}; failed requests: "
          f"{failed}")
    print(f"server CPU per request: predictor {cpu['predictor']:.0f} us vs trivial {cpu['trivial']:.0f} us: "
          f"{cpu['trivial'] / cpu['predictor']:.2f} (the same ratio, less sensitive to other load on the machine)")
    print(f"RESULT | predictor HTTP, V2 REST, 16 clients, random store of {len(ids)}, 7 days | "
          f"{rps['predictor']:.0f} req/s | trivial KServe model {rps['trivial']:.0f} req/s | {ratio:.2f} |")
    if "naive" in rps:
        print(f"predictor vs naive per-request Prophet ({args.naive_stores} stores) {rps['naive']:.1f} req/s: "
              f"{rps['predictor'] / rps['naive']:.0f}x (goal >= 50x)")
        print(f"RESULT | predictor HTTP vs a naive per-request Prophet predictor | {rps['predictor']:.0f} req/s | "
              f"naive {rps['naive']:.1f} req/s | {rps['predictor'] / rps['naive']:.0f}x |")


if __name__ == "__main__":
    main()
