"""Refusal cost: the server CPU a refused request costs, against a served small forecast in the same run.

    python bench/refusal_cost.py [--workdir build/bench] [--stores 50] [--requests 2000] [--quick]

A real transformer process (``--auth-file`` without an anonymous tier, OIDC on against a local issuer whose
JWKS is served on loopback, ``--max-body-bytes`` 16 MiB) in front of a real predictor (gRPC). For each kind of
request the transformer's CPU time (user + system, psutil) is read before and after N requests and divided
by N (the predictor's CPU is not counted; the client runs in this process):

- baseline: a served forecast (V1, one store, the default window) with a valid key;
- a bad key (``x-api-key``, 401);
- an oversized token: a 1 MB JWT-shaped ``authorization: Bearer`` (431: the head is over 64 KiB, the rest is
  never read), and a 60 KB one (under that limit: 401 from its length alone, before any decoding);
- a forged JWT: well-formed RS256 with a known key id, signed by another key (401 after the signature check);
- an oversized body: 24 MB declared and sent without a key (401 before a byte of it is read), and the same
  with a valid key (413 from its ``Content-Length``).

These last three each on a new connection (the server closes it), the others on a kept-alive one.

Goal: at most 1 ms of server CPU per refusal.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import psutil
from predictor_common import PREDICTOR, TRANSFORMER, add_common_arguments, prepare_version, start

from serving.access.auth_file import hash_key
from tests.support import AUDIENCE, SUBJECT, Issuer, new_key

PATH = "/v1/models/storecast:predict"
KEY = "sc_bench-refusal-planner"
GOAL_MS = 1.0
BODY_MB = 24
AUTH = f"""
tiers:
  planner: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
identities:
  - {{name: planner, tier: planner, key_sha256: "{hash_key(KEY)}"}}
  - {{name: broker, tier: service, oidc_subject: {SUBJECT}}}
"""


class Chain:
    """The predictor and the protected transformer whose CPU is measured."""

    def __init__(self, version, issuer: Issuer, folder: Path) -> None:
        auth = folder / "refusal-auth.yaml"
        auth.write_text(AUTH)
        # the default window (today) is years after the data: far enough, not so far that a small version's
        # intervals overflow (predictor_common's 100,000 days)
        env = {"MLFLOW_TRACKING_URI": version.tracking_uri, "STORECAST_MAX_DAYS_AHEAD": "8000"}
        self.pred = start(PREDICTOR, version.workdir / "refusal-predictor.log", env)
        self.front = None
        try:
            self.pred.wait_ready(600)
            self.front = start(TRANSFORMER, version.workdir / "refusal-transformer.log", env,
                               ["--predictor_host", f"127.0.0.1:{self.pred.grpc_port}", "--auth-file", str(auth),
                                "--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE, "--oidc-jwks-url",
                                f"{issuer.url}/jwks", "--max-body-bytes", str(16 << 20), "--max-inflight", "0"])
            self.front.wait_ready(120)
        except BaseException:
            self.stop()
            raise
        self.ps = psutil.Process(self.front.proc.pid)
        self.url = self.front.url

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        for server in (self.front, self.pred):
            if server is not None:
                server.stop()


def keep_alive(client: httpx.Client, headers: dict[str, str], body: bytes) -> Callable[[], int]:
    """One request on a kept-alive connection; its status."""
    def send() -> int:
        return client.post(PATH, content=body, headers=headers).status_code
    return send


def raw(port: int, headers: dict[str, str], size: int) -> Callable[[], int]:
    """One request declaring and sending ``size`` body bytes on a new connection, as an attacker's loop would
    (what the server no longer reads is not sent); its status (0: none read)."""
    head = (f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {size}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    chunk = b"x" * (1 << 20)

    def send() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            try:
                s.sendall(head)
                for _ in range(size // len(chunk)):
                    s.sendall(chunk)
            except OSError:  # the server answered and closed: the rest is never sent
                pass
            data = b""
            try:
                while b"\r\n" not in data:
                    got = s.recv(4096)
                    if not got:
                        break
                    data += got
            except OSError:
                pass
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return send


def measure(chain: Chain, send: Callable[[], int], n: int, warmup: int = 5) -> tuple[float, dict[int, int]]:
    """(server CPU ms per request, statuses seen) over ``n`` requests after ``warmup``."""
    for _ in range(warmup):
        send()
    statuses: dict[int, int] = {}
    c0 = chain.cpu()
    for _ in range(n):
        status = send()
        statuses[status] = statuses.get(status, 0) + 1
    return (chain.cpu() - c0) / n * 1000, statuses


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.set_defaults(stores=50)
    p.add_argument("--requests", type=int, default=2000, help="requests per cheap case (a quarter for 1 MB tokens "
                   "and 24 MB bodies)")
    p.add_argument("--quick", action="store_true", help="a tenth of the requests")
    args = p.parse_args()
    n = max(20, args.requests // (10 if args.quick else 1))
    version = prepare_version(args)
    issuer = Issuer()
    with tempfile.TemporaryDirectory() as tmp:
        chain = Chain(version, issuer, Path(tmp))
        try:
            run(chain, issuer, n)
        finally:
            chain.stop()
            issuer.close()


def run(chain: Chain, issuer: Issuer, n: int) -> None:
    store = {"instances": [{"storeId": "1"}]}
    forecast = httpx.Client(base_url=chain.url, timeout=30)
    good = httpx.post(f"{chain.url}{PATH}", json=store, headers={"x-api-key": KEY}, timeout=30)
    assert good.status_code == 200, good.text
    forged = jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "sub": SUBJECT, "iat": int(time.time()),
                         "exp": int(time.time()) + 3600}, new_key(), algorithm="RS256", headers={"kid": "k1"})
    body = httpx.Request("POST", "/", json=store).content
    json_type = {"content-type": "application/json"}
    big = max(20, n // 4)  # each on a new connection
    print(f"the real transformer (pid {chain.front.proc.pid}) -> predictor (gRPC); {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f}; {n} requests per case on a kept-alive connection, {big} for 1 MB "
          f"tokens and {BODY_MB} MB bodies (a new connection each)", flush=True)
    cases = [
        ("served forecast (baseline)", keep_alive(forecast, {**json_type, "x-api-key": KEY}, body), n),
        ("bad key", keep_alive(forecast, {**json_type, "x-api-key": "sc_not-a-key"}, body), n),
        ("oversized token (1 MB JWT-shaped)",
         raw(chain.front.http_port, {"authorization": "Bearer eyJ" + "A" * (1 << 20) + ".eyJ9.c2ln"}, 0), big),
        ("oversized token (60 KB JWT-shaped, under the head limit)",
         keep_alive(forecast, {**json_type, "authorization": "Bearer eyJ" + "A" * 60000 + ".eyJ9.c2ln"}, body), n),
        ("forged JWT (bad signature, OIDC on)", keep_alive(forecast, {**json_type, "authorization": f"Bearer {forged}"},
                                                           body), n),
        (f"oversized body ({BODY_MB} MB, no key)", raw(chain.front.http_port, {}, BODY_MB << 20), big),
        (f"oversized body ({BODY_MB} MB, valid key)", raw(chain.front.http_port, {"x-api-key": KEY}, BODY_MB << 20),
         big),
    ]
    rows = []
    for name, send, count in cases:
        cpu_ms, statuses = measure(chain, send, count)
        rows.append((name, cpu_ms, statuses))
        print(f"  {name:<56} {cpu_ms:8.3f} ms CPU per request  statuses {statuses}", flush=True)
    forecast.close()
    base = rows[0][1]
    print(f"\n| request | status | server CPU per request | vs served forecast ({base:.3f} ms) | "
          f"goal <= {GOAL_MS:g} ms |\n|---|---|---:|---:|---|")
    for name, cpu_ms, statuses in rows:
        verdict = "baseline" if name == rows[0][0] else ("OK" if cpu_ms <= GOAL_MS else "MISSED")
        codes = ",".join(map(str, sorted(statuses)))
        print(f"| {name} | {codes} | {cpu_ms:.3f} ms | {cpu_ms / base:.2f}x | {verdict} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for name, cpu_ms, _ in rows[1:]:
        verdict = "OK" if cpu_ms <= GOAL_MS else "MISSED"
        print(f"RESULT | refusal cost: {name}, server CPU per refused request | {cpu_ms:.3f} ms | served forecast "
              f"{base:.3f} ms | {cpu_ms / base:.2f}x (goal <= {GOAL_MS:g} ms: {verdict}) |")


if __name__ == "__main__":
    sys.exit(main())
