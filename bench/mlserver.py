"""The same predictor under MLServer and under KServe, in one run: single-store throughput, with and
without MLServer's adaptive batching, the fleet request, cold start and memory.

    python bench/mlserver.py [--workdir build/bench] [--seconds 8] [--rounds 2]

One version (all stores of the shared benchmark version, as a downloaded folder: no registry in the way)
served in turn by the KServe predictor (``python -m predictor``, the baseline), by ``storecast mlserver``
without batching, and by ``storecast mlserver`` with adaptive batching (16 requests, 2 ms and 10 ms).
Single-store: 16 keep-alive V2 REST clients, a random store, 7 days (``bench/predictor_http.py``'s load).
The fleet request: every store x 42 days in the windows form, V2 REST JSON, one at a time. Cold start:
process start to ``/v2/models/storecast/ready``; memory: the process tree's RSS after the fleet requests.
The load average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from predictor_common import PREDICTOR, REPO, Server, add_common_arguments, free_port, prepare_version
from predictor_http import measure, request_bytes

STORECAST = str(Path(sys.executable).parent / "storecast")
KINDS = {"kserve": [], "mlserver": [], "mlserver-batch-2ms": ["--max-batch-size", "16", "--max-batch-time", "0.002"],
         "mlserver-batch-10ms": ["--max-batch-size", "16", "--max-batch-time", "0.01"]}


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def start(kind: str, folder: Path, log: Path, state: Path) -> Server:
    """The KServe predictor, or ``storecast mlserver`` with the kind's batching flags, on fresh loopback ports."""
    http_port, grpc_port = free_port(), free_port()
    env = dict(os.environ)
    if kind == "kserve":
        command = [*PREDICTOR, "--host", "127.0.0.1", "--http_port", str(http_port), "--grpc_port", str(grpc_port),
                   "--model_uri", str(folder)]
    else:
        command = [STORECAST, "mlserver", "--model-uri", str(folder), "--http-port", str(http_port), "--grpc-port",
                   str(grpc_port), "--metrics-port", str(free_port()), "--state", str(state / kind), *KINDS[kind]]
    with open(log, "wb") as fh:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return Server(proc, http_port, grpc_port, started, log)


def fleet_body(ids: list[str], begin: np.ndarray, days: int) -> bytes:
    return json.dumps({"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [len(ids)], "data": ids},
        {"name": "begin_day", "datatype": "INT32", "shape": [len(ids)], "data": begin.tolist()},
        {"name": "days", "datatype": "INT32", "shape": [len(ids)], "data": [days] * len(ids)}]}).encode()


def fleet(server: Server, body: bytes, n: int) -> tuple[float, bytes]:
    """Median seconds of ``n`` fleet requests, one at a time, and the last answer's outputs."""
    times, outputs = [], b""
    for _ in range(n):
        request = urllib.request.Request(f"{server.url}/v2/models/storecast/infer", data=body,
                                         headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as r:
            answer = json.loads(r.read())
        times.append(time.perf_counter() - t0)
        outputs = json.dumps([(o["name"], o["datatype"], o["shape"], o["data"]) for o in answer["outputs"]]).encode()
    return statistics.median(times), outputs


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fleet-requests", type=int, default=5)
    args = parser.parse_args()
    version = prepare_version(args)

    from mlserver_runtime import environment
    from predictor.source import ModelSource

    environment.ensure(environment.default_env())  # made once, outside the measurements
    os.environ["MLFLOW_TRACKING_URI"] = version.tracking_uri
    source = ModelSource.parse(version.model_uri)
    table = source.fetch(source.resolve())
    folder = version.workdir / "mlserver-version"
    table.save(folder / "params.npz")
    ids = table.store_id.tolist()
    first = {sid: str(np.datetime64(int(day) + 1, "D")) for sid, day in zip(ids, table.last_day.tolist(), strict=True)}
    requests = [request_bytes(sid, first[sid]) for sid in ids]
    body = fleet_body(ids, table.last_day.astype(np.int64) + 1, 42)
    state = Path(tempfile.mkdtemp(prefix="storecast-bench-mlserver-"))
    print(f"data: {version.data}; {len(ids)} stores; {args.clients} clients, {args.seconds:.0f} s per server and "
          f"round; fleet request {len(ids)} x 42 days ({len(body) / 2**20:.1f} MiB JSON); {os.cpu_count()} cores",
          flush=True)

    results: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    answers: dict[str, bytes] = {}
    for r in range(args.rounds):
        for kind in KINDS:
            server = start(kind, folder, version.workdir / f"mlserver-bench-{kind}.log", state)
            try:
                cold = server.wait_ready(timeout=600)
                rss_ready = server.rss_mb()
                res = measure(server, requests, args)
                res["fleet_s"], answers[kind] = fleet(server, body, args.fleet_requests)
                res.update(cold_s=cold, rss_ready=rss_ready, rss=server.rss_mb(), load=os.getloadavg()[0])
            finally:
                server.stop()
            results[kind].append(res)
            print(f"round {r + 1}: {kind:20s} {res['rps']:7.0f} req/s  p50 {res['p50_ms']:6.2f} ms  p99 "
                  f"{res['p99_ms']:7.2f} ms  CPU {res['cpu_us']:5.0f} us/req  fleet {res['fleet_s']:.3f} s  cold "
                  f"start {res['cold_s']:.1f} s  RSS {res['rss_ready']:.0f}/{res['rss']:.0f} MB  failed "
                  f"{res['failed']}  load {load()}", flush=True)
    same = len({answers[k] for k in KINDS}) == 1
    print(f"\nthe fleet answers of all {len(KINDS)} servers hold the same outputs, value for value: {same}")
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    base = med["kserve"]
    print(f"medians of {args.rounds} rounds, load average now {load()}:")
    print("| server | single-store req/s | p50 ms | p99 ms | CPU us/req | fleet request s | cold start s "
          "| RSS ready/after MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, m in med.items():
        print(f"| {kind} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us']:.0f} | "
              f"{m['fleet_s']:.3f} | {m['cold_s']:.1f} | {m['rss_ready']:.0f}/{m['rss']:.0f} |")
    for kind, m in med.items():
        if kind == "kserve":
            continue
        print(f"RESULT | {kind} runtime, V2 REST, {args.clients} clients, one store x 7 days (load {m['load']:.1f}) | "
              f"{m['rps']:.0f} req/s | KServe predictor {base['rps']:.0f} req/s | {m['rps'] / base['rps']:.2f} |")
    m = med["mlserver"]
    print(f"RESULT | MLServer runtime, fleet request {len(ids)} x 42 days | {m['fleet_s']:.3f} s | KServe predictor "
          f"{base['fleet_s']:.3f} s | {m['fleet_s'] / base['fleet_s']:.2f} |")
    print(f"RESULT | MLServer runtime, cold start / RSS | {m['cold_s']:.1f} s / {m['rss']:.0f} MB | KServe predictor "
          f"{base['cold_s']:.1f} s / {base['rss']:.0f} MB | {m['cold_s'] / base['cold_s']:.2f} / "
          f"{m['rss'] / base['rss']:.2f} |")
    if not same:
        sys.exit("the servers' fleet answers differ")


if __name__ == "__main__":
    main()
