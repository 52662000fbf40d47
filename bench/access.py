"""Access: does one identity's flood leave the others alone, and what does a refusal cost?

    python bench/access.py [--workdir build/bench] [--seconds 10] [--rounds 3] [--minimal]

The real stack: the predictor and the transformer (the serving layer with its access door: the auth file,
the moving-window rate limits per identity, the concurrency bulkhead and one audit line per request, in
its log) on the shared trained version (``--workdir``, bench/predictor_common.py), business V1 requests
for one store and a week. ``--minimal`` instead puts ``serving.access.asgi.guard`` in front of a Starlette
route doing ``--cpu-ms`` of CPU and waiting for a pool of ``--pool`` slots of ``--backend-ms`` (the
library alone, no model). The open-loop generator of bench/loadgen.py, each flow in its own process:

1. B alone at half its own limit (tier limit 100 req/s, burst 100; B offers 50 req/s);
2. the same, while A (same tier) floods at 10x its limit (1,000 req/s): B's success rate (goal >= 99.9 %)
   and p99 against B alone (goal <= 1.5x); A is admitted at its limit and refused (429) beyond it;
3. the server's CPU per refused request (C floods with a quota that is spent at once), against the CPU of an
   admitted one, and the library's own cost of a refusal (``Access.admit`` in process);
4. anonymous against authenticated at the same offered rate, at the same time: an anonymous client (tier
   anonymous, 2 req/s burst 4 per address) and planner D, 20 req/s each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loadgen
from predictor_common import PREDICTOR, add_common_arguments, prepare_version, start

from serving.access.auth_file import hash_key

PATH = "/v1/models/storecast:predict"
KEYS = {name: f"sc_bench-{name}" for name in ("a", "b", "c", "d")}
AUTH = f"""
tiers:
  anonymous: {{requests_per_second: 2, burst: 4, concurrent: 4, permissions: [forecast]}}
  planner: {{requests_per_second: 100, burst: 100, concurrent: 4, permissions: [forecast]}}
  spent: {{requests_per_second: 0.0167, burst: 1, concurrent: 4, permissions: [forecast]}}
identities:
  - {{name: a, tier: planner, key_sha256: "{hash_key(KEYS['a'])}"}}
  - {{name: b, tier: planner, key_sha256: "{hash_key(KEYS['b'])}"}}
  - {{name: c, tier: spent, key_sha256: "{hash_key(KEYS['c'])}"}}
  - {{name: d, tier: planner, key_sha256: "{hash_key(KEYS['d'])}"}}
"""
BODY = {"instances": [{"storeId": "4", "beginDate": "2015-08-01", "endDate": "2015-08-07"}]}
TRANSFORMER = [sys.executable, "-m", "transformer"]


class Stack:
    """The real predictor + transformer; the transformer guarded by the auth file above."""

    def __init__(self, workdir: Path, version, extra: list[str]) -> None:
        auth = workdir / "access-auth.yaml"
        auth.write_text(AUTH)
        env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
        self.pred = start(PREDICTOR, version.workdir / "access-predictor.log", env)
        self.pred.wait_ready(600)
        self.front = start(TRANSFORMER, version.workdir / "access-transformer.log", env,
                           ["--predictor_host", f"127.0.0.1:{self.pred.grpc_port}", "--auth-file", str(auth), *extra])
        self.front.wait_ready(120)
        self.port, self.proc, self.audit_log = self.front.http_port, self.front.proc, self.front.log
        self.ps = psutil.Process(self.proc.pid)

    def requests(self) -> int:
        """Requests the transformer has answered so far (its access counters: refusal lines are sampled)."""
        return answered(f"http://127.0.0.1:{self.port}")

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.front.stop()
        self.pred.stop()


def answered(url: str) -> int:
    """Requests a server has answered, admitted or refused: ``storecast_access_requests_total`` of its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("storecast_access_requests_total{")))


def serve(port: int, auth_file: str, cpu_ms: float, backend_ms: float, pool: int, audit_log: str) -> None:
    """The server process: the access middleware in front of a route doing the transformer's work."""
    import logging

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from serving.access.asgi import guard
    from serving.access.audit import metrics_text, note_rows
    from serving.access.settings import AccessSettings, build_access

    handler = logging.FileHandler(audit_log)
    handler.setFormatter(logging.Formatter("%(message)s"))  # the line carries its own ts
    audit = logging.getLogger("storecast.audit")
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False
    access = build_access(AccessSettings(auth_file=auth_file))
    backend: list[asyncio.Semaphore] = []

    async def predict(request):
        await request.body()
        end = time.perf_counter() + cpu_ms / 1000
        while time.perf_counter() < end:  # the transformer's own CPU time
            pass
        if not backend:
            backend.append(asyncio.Semaphore(pool))
        async with backend[0]:  # the shared predictor pool
            await asyncio.sleep(backend_ms / 1000)
        note_rows(7)
        return JSONResponse({"predictions": [{"forecast": []}]})

    async def ready(request):
        return JSONResponse({"ready": True})

    async def metrics(request):
        return PlainTextResponse(metrics_text())

    app = Starlette(routes=[Route(PATH, predict, methods=["POST"]), Route("/v2/health/ready", ready),
                            Route("/metrics", metrics)])
    uvicorn.run(guard(app, access), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")


class Server:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        from pipelines.stack import free_port

        self.port = free_port()
        auth = workdir / "auth.yaml"
        auth.write_text(AUTH)
        self.audit_log = workdir / "audit.log"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(self.port), str(auth), str(args.cpu_ms),
                                      str(args.backend_ms), str(args.pool), str(self.audit_log)],
                                     cwd=Path(__file__).parent)
        self.ps = psutil.Process(self.proc.pid)
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the bench server did not start")

    def requests(self) -> int:
        """Requests the server has answered so far (its access counters: refusal lines are sampled)."""
        return answered(f"http://127.0.0.1:{self.port}")

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def request(key: str | None) -> list[bytes]:
    return [loadgen.post(PATH, BODY, {"x-api-key": key} if key else None)]


def _flow(port: int, key: str | None, rate: float, warmup: float, seconds: float) -> loadgen.Tally:
    return loadgen.open_loop(port, request(key), rate, warmup=warmup, seconds=seconds, timeout=5.0, pool=64)


def phase(port: int, flows: dict[str, tuple[str | None, float]], seconds: float,
          background: tuple[str, ...] = ()) -> dict[str, loadgen.Tally]:
    """Open-loop flows at once, each from its own process (a flood's answers must not delay the
    measuring client's clock): name -> (key, offered req/s). ``background`` flows start a second
    earlier and end a second later than the others, so they cover the whole measured window."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(flows), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_flow, port, key, rate, *((1.0, seconds + 2) if name in background
                                                               else (2.0, seconds)))
                   for name, (key, rate) in flows.items()}
        return {name: f.result() for name, f in futures.items()}


def refusal_in_process(audit: bool, n: int = 20000) -> float:
    """Microseconds per ``Access.admit`` that ends in a 429 (the library alone; the audit line to a file)."""
    import logging

    from serving.access.admission import Access, RateLimited
    from serving.access.auth_file import parse

    access = Access(parse(AUTH))
    headers = {"x-api-key": KEYS["c"]}
    log = logging.getLogger("storecast.audit")
    handler = logging.FileHandler(os.devnull if not audit else tempfile.mktemp(suffix=".log"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.disabled = not audit

    async def run() -> float:
        (await access.admit(headers, ("10.0.0.1", 1), route=PATH, protocol="rest")).finish(200)
        t0 = time.perf_counter()
        for _ in range(n):
            with contextlib.suppress(RateLimited):
                await access.admit(headers, ("10.0.0.1", 1), route=PATH, protocol="rest")
        return (time.perf_counter() - t0) / n * 1e6

    try:
        return asyncio.run(run())
    finally:
        log.removeHandler(handler)
        handler.close()
        if audit:
            os.unlink(handler.baseFilename)
        log.disabled = False


def pct(t: loadgen.Tally) -> float:
    total = t.ok + t.shed + t.failed + t.timeouts
    return 100.0 * t.ok / total if total else float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
        return
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--minimal", action="store_true", help="a Starlette route behind the library, no model")
    p.add_argument("--max-inflight", type=int, help="the transformer's --max-inflight (default: its own)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each phase")
    p.add_argument("--cpu-ms", type=float, default=0.3, help="the server's own CPU work per admitted request")
    p.add_argument("--backend-ms", type=float, default=2.0, help="time in the shared backend pool per request")
    p.add_argument("--pool", type=int, default=8, help="requests the backend pool serves at a time")
    p.add_argument("--rounds", type=int, default=3, help="B alone / B during the flood pairs (median ratio)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if args.max_inflight is None else ["--max-inflight", str(args.max_inflight)]
        server = Server(Path(tmp), args) if args.minimal else Stack(Path(tmp), prepare_version(args), extra)
        try:
            run(server, args)
        finally:
            server.stop()


def show(name: str, t: loadgen.Tally) -> None:
    r = t.row()
    print(f"  {name:<15} ok {r['rps']:7.1f}/s  refused {r['shed_rps']:7.1f}/s  timeouts {t.timeouts}  failed "
          f"{t.failed}  success {pct(t):6.2f} %  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms", flush=True)


def run(server: Server, args: argparse.Namespace) -> None:
    s = args.seconds
    what = (f"minimal server; an admitted request: {args.cpu_ms} ms CPU + {args.backend_ms} ms in a pool of "
            f"{args.pool}" if args.minimal else "the real transformer -> predictor (gRPC), one store, 7 days")
    print(f"{what}; server pid {server.proc.pid}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{s:.0f} s per phase, {args.rounds} rounds", flush=True)
    phase(server.port, {"b": (KEYS["b"], 50)}, 2)  # warm-up

    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1}", flush=True)
        c0, n0 = server.cpu(), server.requests()
        alone = phase(server.port, {"b": (KEYS["b"], 50)}, s)["b"]
        cpu_ok = (server.cpu() - c0) / max(1, server.requests() - n0)
        both = phase(server.port, {"a": (KEYS["a"], 1000), "b": (KEYS["b"], 50)}, s, background=("a",))
        for name, t in (("B alone", alone), ("A flood", both["a"]), ("B during flood", both["b"])):
            show(name, t)
        rounds.append({"alone": alone, "a": both["a"], "b": both["b"], "cpu_ok": cpu_ok,
                       "ratio": both["b"].row()["p99_ms"] / alone.row()["p99_ms"]})
    rounds.sort(key=lambda r: r["ratio"])
    mid = rounds[len(rounds) // 2]
    alone, a, b, cpu_ok = mid["alone"], mid["a"], mid["b"], mid["cpu_ok"]
    worst_success = min(pct(r["b"]) for r in rounds)

    c0, n0 = server.cpu(), server.requests()
    spent = phase(server.port, {"c": (KEYS["c"], 1000)}, s)["c"]
    cpu_refused = (server.cpu() - c0) / max(1, server.requests() - n0)  # all but (at most) one refused
    lib, lib_audit = refusal_in_process(audit=False), refusal_in_process(audit=True)
    print(f"C (quota spent) refused {spent.row()['shed_rps']:.0f}/s, ok {spent.ok}: server CPU "
          f"{cpu_refused * 1e6:.0f} us per refusal (admitted: {cpu_ok * 1e6:.0f} us); in process, Access.admit "
          f"refusing {lib:.1f} us, with its audit line {lib_audit:.1f} us", flush=True)

    mixed = phase(server.port, {"anonymous": (None, 20), "d": (KEYS["d"], 20)}, s)
    anon, d = mixed["anonymous"], mixed["d"]
    print(f"anonymous (2/s, burst 4) offered 20/s: admitted {anon.ok / s:.1f}/s; planner D (100/s) offered 20/s: "
          f"admitted {d.ok / s:.1f}/s; audit log {server.requests()} lines", flush=True)

    ratio = mid["ratio"]
    ok = worst_success >= 99.9 and ratio <= 1.5
    print(f"B during A's flood (median of {len(rounds)} rounds): success {pct(b):.2f} % (worst round "
          f"{worst_success:.2f} %, goal >= 99.9), p99 {ratio:.2f}x alone (goal <= 1.5) {'OK' if ok else 'MISSED'}")
    print(f"RESULT | access: B's success while A floods at 10x its limit (B at half its own; worst of "
          f"{len(rounds)}) | {worst_success:.2f} % | B alone {min(pct(r['alone']) for r in rounds):.2f} % | "
          f"goal >= 99.9 % |")
    print(f"RESULT | access: B's p99 while A floods (A admitted {a.row()['rps']:.0f} req/s of 1000, limit 100; median "
          f"of {len(rounds)}) | {b.row()['p99_ms']:.1f} ms | B alone {alone.row()['p99_ms']:.1f} ms | {ratio:.2f}x "
          f"(goal <= 1.5) |")
    print(f"RESULT | access: server CPU per refused request (429 before any work; Access.admit {lib:.0f} us, "
          f"+ audit line {lib_audit - lib:.0f} us) | {cpu_refused * 1e6:.0f} us | admitted request "
          f"{'(' + format(args.cpu_ms, 'g') + ' ms own CPU) ' if args.minimal else ''}{cpu_ok * 1e6:.0f} us | "
          f"{cpu_refused / cpu_ok:.2f} |")
    print(f"RESULT | access: admitted at 20 req/s offered, anonymous (2/s) vs planner (100/s), same run | "
          f"{anon.ok / s:.1f} req/s | planner {d.ok / s:.1f} req/s | {anon.ok / max(1, d.ok):.2f} |")


if __name__ == "__main__":
    main()
