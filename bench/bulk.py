"""Whole-fleet requests against their in-process floor, and one-store latency while they run.

    python bench/bulk.py [--workdir build/bench] [--reps 15] [--seconds 10]

One request for every store x 42 days (1,115 x 42 = 46,830 rows on Rossmann) through:

- the floor: parse that request and encode its V1 answer in this process (orjson, no evaluation);
- the transformer's V1 (business API) and V2 JSON, in front of one predictor over gRPC (windows);
- the predictor's V2 direct: JSON long format (the public form), and binary tensors (windows in,
  FP64 out, the binary tensor extension), as the transformer's REST client sends it.

Then the one-store p99 through the transformer alone, and while clients send fleet requests at the
documented maximum (2,000 stores x 366 days) without pause. Goals: transformer V1 and V2 <= 3x the
floor, predictor V2 binary <= 2x, one-store p99 while the fleet runs <= 2x its p99 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import statistics
import time
from typing import Any

import loadgen
import orjson
from predictor_common import add_common_arguments, prepare_version, stack

V1 = "/v1/models/storecast:predict"
V2 = "/v2/models/storecast/infer"
BEGIN, END, DAYS = "2015-08-01", "2015-09-11", 42  # the known-ahead calendar of the Rossmann data


def timed(port: int, path: str, body: bytes, headers: dict[str, str], reps: int) -> tuple[float, int]:
    """Median seconds of ``reps`` POSTs on one keep-alive connection (after one warm-up) and the answer size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    times, size = [], 0
    for i in range(reps + 1):
        t0 = time.perf_counter()
        conn.request("POST", path, body, headers)
        res = conn.getresponse()
        data = res.read()
        if res.status != 200:
            raise RuntimeError(f"{path}: HTTP {res.status}: {data[:300]!r}")
        if i:
            times.append(time.perf_counter() - t0)
        size = len(data)
    conn.close()
    return statistics.median(times), size


def fetch(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, body, headers)
    data = conn.getresponse().read()
    conn.close()
    return data


def floors(request: bytes, answer: bytes, reps: int) -> tuple[float, float]:
    """The least any server does in process, no evaluation: parse the request and encode the answer.

    First the answer as a document already built (orjson alone), then built from the forecast's arrays
    the plain way (each column a list, a dict per row, orjson): the floor the goals are judged against."""
    import numpy as np

    doc = orjson.loads(answer)
    rows = [r for p in doc["predictions"] for r in p["forecast"]]
    keys = list(rows[0])
    cols = {k: np.array([r[k] for r in rows], dtype=object if k in ("timestamp", "holiday", "calendar") else None)
            for k in keys}
    sizes = [len(p["forecast"]) for p in doc["predictions"]]
    echoes = [p["request"] for p in doc["predictions"]]
    encoded, built = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        orjson.loads(request)
        orjson.dumps(doc)
        encoded.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        orjson.loads(request)
        lists = [cols[k].tolist() for k in keys]
        flat = [dict(zip(keys, values, strict=True)) for values in zip(*lists, strict=True)]
        preds, start = [], 0
        for echo, size in zip(echoes, sizes, strict=True):
            preds.append({"request": echo, "forecast": flat[start: start + size]})
            start += size
        orjson.dumps({"predictions": preds, "model_version": doc.get("model_version")})
        built.append(time.perf_counter() - t0)
    return statistics.median(encoded), statistics.median(built)


def v1_body(stores: list[str], begin: str, end: str) -> bytes:
    return orjson.dumps({"instances": [{"storeId": s, "beginDate": begin, "endDate": end} for s in stores]})


def v2_business(stores: list[str], begin: str, end: str) -> bytes:
    n = len(stores)
    return orjson.dumps({"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [n], "data": stores},
        {"name": "begin_date", "datatype": "BYTES", "shape": [n], "data": [begin] * n},
        {"name": "end_date", "datatype": "BYTES", "shape": [n], "data": [end] * n}]})


def v2_long(stores: list[str], days: list[str]) -> bytes:
    ids = [s for s in stores for _ in days]
    ds = days * len(stores)
    return orjson.dumps({"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [len(ids)], "data": ids},
        {"name": "ds", "datatype": "BYTES", "shape": [len(ds)], "data": ds}]})


def v2_windows_binary(stores: list[str], begin_day: int, days: int) -> tuple[bytes, dict[str, str]]:
    """Windows in (store ids, INT32 begin day and length), FP64 outputs as binary sections."""
    import numpy as np

    from serving import rest_tensors, tensors

    n = len(stores)
    inputs = [("store_id", "BYTES", [n], tensors.to_bytes(stores, "BYTES")),
              ("begin_day", "INT32", [n], np.full(n, begin_day, dtype="<i4").tobytes()),
              ("days", "INT32", [n], np.full(n, days, dtype="<i4").tobytes())]
    return rest_tensors.binary_request(inputs, ("yhat", "yhat_lower", "yhat_upper"))


def one_store_p99(port: int, stores: list[str], seconds: float, clients: int = 4) -> dict[str, float]:
    requests = [loadgen.post(V1, {"instances": [{"storeId": s, "beginDate": BEGIN, "endDate": "2015-08-07"}]})
                for s in stores[:500]]
    return loadgen.closed(port, requests, clients, 1.0, seconds).row()


def fleet(port: int, body: bytes, clients: int, stop: Any, counts: Any) -> None:
    """``clients`` connections sending ``body`` back to back until ``stop`` is set (run in its own process,
    so reading its large answers never takes this process's GIL from the one-store clients)."""
    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST {V1} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        while not stop.is_set():
            writer.write(head + body)
            status = await _read(reader)
            counts[0 if status == 200 else 1] += 1
        writer.close()

    async def run() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))


    asyncio.run(run())


async def _read(reader: asyncio.StreamReader) -> int:
    """One answer's status; its body is read and dropped piece by piece."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    left = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), 0)
    while left:
        chunk = await reader.read(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("answer cut short")
        left -= len(chunk)
    return status


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fleet-clients", type=int, default=8)
    args = p.parse_args()
    version = prepare_version(args)
    n = version.stores if version.stores > 0 else 1115
    stores = [str(s) for s in range(1, n + 1)]
    days = [f"2015-{m:02d}-{d:02d}" for m, d in [(8, i) for i in range(1, 32)] + [(9, i) for i in range(1, 12)]]
    with stack(version, "bulk") as (pred, front):
        json_h = {"content-type": "application/json"}
        body = v1_body(stores, BEGIN, END)
        answer = fetch(front.http_port, V1, body, json_h)
        rows = sum(len(p["forecast"]) for p in orjson.loads(answer)["predictions"])
        strict, base = floors(body, answer, args.reps)
        print(f"fleet request: {n} stores x {DAYS} days = {rows} rows; V1 answer {len(answer) / 1e6:.1f} MB",
              flush=True)
        print(f"floor, in process: parse the request, build the answer from arrays and encode it: {base * 1000:.1f} ms "
              f"(parse and encode a document already built: {strict * 1000:.1f} ms)", flush=True)
        table = []
        paths = [("transformer V1 (business API)", front.http_port, V1, body, json_h, 3.0),
                 ("transformer V2 JSON", front.http_port, V2, v2_business(stores, BEGIN, END), json_h, 3.0),
                 ("predictor V2 JSON, long format, direct", pred.http_port, V2, v2_long(stores, days), json_h, None)]
        wbody, wh = v2_windows_binary(stores, 16648, DAYS)  # 2015-08-01
        paths.append(("predictor V2 binary tensors (windows in, FP64 out)", pred.http_port, V2, wbody, wh, 2.0))
        for label, port, path, req, headers, goal in paths:
            try:
                sec, size = timed(port, path, req, headers, args.reps)
            except RuntimeError as exc:
                print(f"{label}: FAILED {exc}", flush=True)
                continue
            ratio = sec / base
            verdict = "" if goal is None else f" (goal <= {goal:g}x) {'OK' if ratio <= goal else 'MISSED'}"
            print(f"{label}: {sec * 1000:.1f} ms, {size / 1e6:.1f} MB, {ratio:.1f}x floor{verdict}, "
                  f"{sec / strict:.1f}x the orjson-alone floor", flush=True)
            table.append((label, sec, ratio, goal))
        alone = one_store_p99(front.http_port, stores, args.seconds)
        print(f"one store alone: {alone['rps']:.0f} req/s, p50 {alone['p50_ms']:.1f} ms, p99 {alone['p99_ms']:.1f} ms",
              flush=True)
        big = v1_body([stores[i % n] for i in range(2000)], "2015-08-01", "2016-07-31")
        ctx = multiprocessing.get_context("spawn")
        stop, counts = ctx.Event(), ctx.Array("i", 2)
        proc = ctx.Process(target=fleet, args=(front.http_port, big, args.fleet_clients, stop, counts), daemon=True)
        proc.start()
        time.sleep(3.0)
        busy = one_store_p99(front.http_port, stores, args.seconds)
        stop.set()
        proc.join(600)
        print(f"one store while {args.fleet_clients} clients send 2,000 x 366-day requests: {busy['rps']:.0f} req/s, "
              f"p50 {busy['p50_ms']:.1f} ms, p99 {busy['p99_ms']:.1f} ms ({counts[0]} fleet answers, "
              f"{counts[1]} refused or failed)", flush=True)
        for label, sec, ratio, goal in table:
            print(f"RESULT | fleet request {rows} rows: {label} | {sec * 1000:.1f} ms | floor {base * 1000:.1f} ms "
                  f"(orjson alone {strict * 1000:.1f} ms) | {ratio:.1f}x ({sec / strict:.1f}x)"
                  f"{'' if goal is None else f', goal <= {goal:g}x'} |")
        print(f"RESULT | one-store p99 while fleet requests run | {busy['p99_ms']:.1f} ms | alone "
              f"{alone['p99_ms']:.1f} ms | {busy['p99_ms'] / alone['p99_ms']:.1f}x (goal <= 2x) |")


if __name__ == "__main__":
    main()
