"""A small HTTP/1.1 load generator for the benchmarks: asyncio, keep-alive, far cheaper than the servers.

- ``closed(port, requests, clients, seconds)``: each of ``clients`` connections sends the next request
  as soon as the last answer arrived (saturation throughput);
- ``open_loop(port, requests, rate, seconds)``: requests start at a fixed offered rate whatever the
  answers, on a pool of connections, each with a timeout (overload behaviour).
Both count 2xx as successes and report their latency; 429/503 count as shed; no answer within the
timeout counts as a timeout.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field


def post(path: str, body: object, headers: dict[str, str] | None = None) -> bytes:
    """A raw HTTP/1.1 POST with a JSON body, ready to write on a keep-alive connection."""
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(data)}\r\n\r\n").encode() + data


@dataclass
class Tally:
    """Outcomes of a run."""

    seconds: float
    latency: list[float] = field(default_factory=list)  # successes only
    ok: int = 0
    shed: int = 0
    failed: int = 0
    timeouts: int = 0

    def row(self) -> dict[str, float]:
        lat = sorted(self.latency) or [float("nan")]
        return {"rps": self.ok / self.seconds, "shed_rps": self.shed / self.seconds, "failed": self.failed,
                "timeouts": self.timeouts, "p50_ms": 1000 * lat[len(lat) // 2],
                "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]}

    def count(self, status: int, latency: float) -> None:
        if 200 <= status < 300:
            self.ok += 1
            self.latency.append(latency)
        elif status in (429, 503):
            self.shed += 1
        else:
            self.failed += 1


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return status


async def _closed(port: int, requests: list[bytes], clients: int, warmup: float, seconds: float) -> Tally:
    tally = Tally(seconds)
    t0 = time.perf_counter()
    start, stop = t0 + warmup, t0 + warmup + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rng = random.Random()
        try:
            while (now := time.perf_counter()) < stop:
                status = await _exchange(reader, writer, rng.choice(requests))
                if now >= start:
                    tally.count(status, time.perf_counter() - now)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


async def _open(port: int, requests: list[bytes], rate: float, warmup: float, seconds: float, timeout: float,
                pool: int) -> Tally:
    tally = Tally(seconds)
    loop = asyncio.get_running_loop()
    conns: asyncio.Queue = asyncio.Queue()
    for _ in range(pool):
        conns.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    rng = random.Random(0)
    t0 = time.perf_counter()
    start, stop = t0 + warmup, t0 + warmup + seconds
    tasks = set()

    async def one(request: bytes, sent: float) -> None:
        conn = None
        try:
            async with asyncio.timeout_at(loop.time() + timeout):  # no extra task, unlike wait_for
                conn = await conns.get()
                status = await _exchange(*conn, request)
        except (TimeoutError, ValueError, OSError, asyncio.IncompleteReadError):
            if conn is not None:  # a connection in an unknown state is replaced
                conn[1].close()
                conns.put_nowait(await asyncio.open_connection("127.0.0.1", port))
            if sent >= start:
                tally.timeouts += 1
            return
        conns.put_nowait(conn)
        if sent >= start:
            tally.count(status, time.perf_counter() - sent)

    n = 0
    while (now := time.perf_counter()) < stop:
        due = t0 + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(rng.choice(requests), t0 + n / rate))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    while not conns.empty():
        conns.get_nowait()[1].close()
    return tally


def _run(coro: object) -> Tally:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def closed(port: int, requests: list[bytes], clients: int = 16, warmup: float = 2.0, seconds: float = 10.0) -> Tally:
    return _run(_closed(port, requests, clients, warmup, seconds))


def open_loop(port: int, requests: list[bytes], rate: float, warmup: float = 2.0, seconds: float = 10.0,
              timeout: float = 5.0, pool: int = 256) -> Tally:
    return _run(_open(port, requests, rate, warmup, seconds, timeout, pool))
