"""Closed by default, cheap to refuse: the predictor and the transformer as real processes on loopback.

- a bad setting at start-up (listening beyond loopback without an auth file, ``--doors`` naming no door, an
  unreadable or invalid auth file, a bad ``--trusted-proxies``) is one line on stderr and exit status 1;
- the open stack (no auth file, the session's ``served`` stack) never lets anyone load, unload or index the
  model repository, REST or gRPC, and refuses what a page of another site could make a browser send;
- a protected predictor (auth file, started without ``--host``: loopback) gives the repository to ``admin``
  only, caps credentials and bodies before reading them, trusts ``x-forwarded-for`` from the proxies named
  only, writes refusals' lines sampled and counted, and escapes what it logs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

from serving.access.audit import SAMPLE_SECONDS
from serving.access.auth_file import hash_key
from tests.support import MODEL, REPO, Served, free_port, metric, served, stop

PLANNER, ADMIN = "sc_closed-planner", "sc_closed-admin"
AUTH = f"""
tiers:
  anonymous: {{requests_per_second: 0.05, burst: 2, concurrent: 2, permissions: [forecast]}}
  planner: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain, rollout]}}
  ops: {{requests_per_second: null, concurrent: null, permissions: [forecast, admin]}}
identities:
  - {{name: planner, tier: planner, key_sha256: "{hash_key(PLANNER)}"}}
  - {{name: ops, tier: ops, key_sha256: "{hash_key(ADMIN)}"}}
"""
TIMEOUT = 30
REPOSITORY = ("/v2/repository/models/storecast/unload", "/v2/repository/models/storecast/load", "/v2/repository/index")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served(tmp_path_factory)


def audit_lines(log: str) -> list[dict]:
    """The audit lines of a server's log (``DATE TIME PID storecast.audit INFO {...}``)."""
    fields = [line.split(" ", 5) for line in log.splitlines()]
    return [json.loads(f[5]) for f in fields if len(f) == 6 and f[3:5] == ["storecast.audit", "INFO"]]


def launch(module: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` expected to stop at start-up (bounded in time)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORECAST_")}
    return subprocess.run([sys.executable, "-m", module, "--http_port", str(free_port()), "--grpc_port",
                           str(free_port()), *args], cwd=REPO, env={**environ, **(env or {})}, capture_output=True,
                          text=True, timeout=180)


# ---- start-up: one line, a non-zero exit ------------------------------------------------------------
BAD = {
    "wide without an auth file": (["--host", "0.0.0.0"], {}, "--auth-file is required to listen on 0.0.0.0"),
    "wide by the variable": ([], {"STORECAST_HOST": "0.0.0.0"}, "--auth-file is required to listen on 0.0.0.0"),
    "no door": (["--doors", " , "], {}, "no door, so every caller could do everything"),
    "a door that is not there": (["--doors", "serving.access.door:door_if_configured"], {}, "has no"),
    "an unknown module": (["--doors", "nosuch.module:door"], {}, "cannot import 'nosuch.module'"),
    "a missing auth file": (["--auth-file", "/nonexistent/auth.yaml"], {}, "cannot read the auth file"),
    "an invalid auth file": (["--auth-file", "{bad}"], {}, "not valid YAML"),
    "a bad proxy": (["--trusted-proxies", "10.0.0.0/8,gateway"], {}, "'gateway' is not an address or CIDR"),
    "OIDC without a file": (["--oidc-issuer", "http://127.0.0.1:1"], {}, "--oidc-issuer needs --auth-file"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_setting_is_one_line_and_a_nonzero_exit(tmp_path: Path, case: str) -> None:
    args, env, words = BAD[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [\n  x: 1\n")
    args = [str(bad) if a == "{bad}" else a for a in args]
    modules = ["predictor", "transformer"] if case in ("wide without an auth file", "no door") else ["predictor"]
    for module in modules:
        extra = ["--predictor_host", "127.0.0.1:1"] if module == "transformer" else ["--model_uri", str(tmp_path)]
        done = launch(module, [*extra, *args], env)
        assert done.returncode == 1, (module, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"python -m {module}: error: ") and words in last, done.stderr[-2000:]


# ---- the open stack: no repository, no cross-site requests -----------------------------------------
@pytest.mark.parametrize("kind", ["predictor", "transformer"])
def test_an_open_server_never_loads_or_unloads(srv: Served, kind: str) -> None:
    service = srv.server(kind)
    for route in REPOSITORY:
        r = httpx.post(f"{service.url}{route}", timeout=TIMEOUT)
        assert r.status_code == 403, (route, r.text)
        assert "admin permission" in r.json()["error"] and "--auth-file" in r.json()["error"]
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        for call in (lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL),
                                                        timeout=TIMEOUT),
                     lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL),
                                                      timeout=TIMEOUT)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin" in info.value.details()
    assert srv.healthy()


def v1_body(srv: Served, kind: str) -> bytes:
    instance = ({"store_id": srv.stores[0], "ds": srv.day(1)} if kind == "predictor"
                else {"storeId": srv.stores[0], "beginDate": srv.day(1), "endDate": srv.day(2)})
    return json.dumps({"instances": [instance]}).encode()


@pytest.mark.parametrize("kind", ["predictor", "transformer"])
def test_the_open_stack_refuses_what_a_browser_is_made_to_send(srv: Served, kind: str) -> None:
    service = srv.server(kind)
    url, own = f"{service.url}/v1/models/{MODEL}:predict", f"127.0.0.1:{service.http_port}"
    body = v1_body(srv, kind)
    refused = {
        "another site's page": ({"origin": "http://evil.example", "content-type": "text/plain"}, "Origin"),
        "a sandboxed page": ({"origin": "null", "content-type": "application/json"}, "Origin"),
        "another port of this host": ({"origin": "http://127.0.0.1:1", "content-type": "application/json"}, "Origin"),
        "DNS rebinding": ({"host": f"rebound.example:{service.http_port}", "content-type": "application/json"},
                          "Host"),
        "a no-cors text/plain POST": ({"sec-fetch-mode": "no-cors", "sec-fetch-site": "same-origin",
                                       "content-type": "text/plain"}, "text/plain"),
        "a form": ({"origin": f"http://{own}", "content-type": "application/x-www-form-urlencoded"}, "form"),
    }
    for case, (headers, word) in refused.items():
        r = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 403 and word in r.json()["error"], (case, r.status_code, r.text)
        unload = httpx.post(f"{service.url}{REPOSITORY[0]}", headers=headers, timeout=TIMEOUT)
        assert unload.status_code == 403, (case, unload.text)
    served_fine = [{"content-type": "application/json"}, {"content-type": "text/plain"}, {},  # curl, scripts
                   {"origin": f"http://{own}", "content-type": "application/json"},  # its own origin
                   {"host": f"localhost:{service.http_port}"}]
    for headers in served_fine:
        r = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 200, (headers, r.text)
    assert srv.healthy()


def test_uvicorn_trusts_no_forwarded_address_by_default(srv: Served) -> None:
    service = srv.predictor
    marker = "198.51.100.77"
    r = httpx.post(f"{service.url}/v1/models/{MODEL}:predict", content=v1_body(srv, "predictor"),
                   headers={"x-forwarded-for": marker, "content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 200
    text = service.log.read_text(errors="replace")
    lines = audit_lines(text)
    assert lines and all(line["peer"] == "127.0.0.1" and "forwarded" not in line for line in lines)
    assert marker not in text


# ---- a protected predictor ------------------------------------------------------------------------------
class Protected:
    """``python -m predictor`` with the auth file above, started without ``--host``; its log in a file."""

    def __init__(self, root: Path, uri: str) -> None:
        (root / "auth.yaml").write_text(AUTH)
        self.http_port, self.grpc_port, self.log = free_port(), free_port(), root / "protected.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STORECAST_")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "predictor", "--http_port", str(self.http_port), "--grpc_port",
                 str(self.grpc_port), "--auth-file", str(root / "auth.yaml"), "--trusted-proxies", "127.0.0.1",
                 "--max-body-bytes", str(1 << 20), "--enable_latency_logging", "false"],
                cwd=REPO, env={**environ, "MLFLOW_TRACKING_URI": uri}, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 120
        while not self.ready():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/models/{MODEL}/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def audit(self) -> list[dict]:
        return audit_lines(self.output())

    def post(self, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def protected(srv: Served, tmp_path_factory: pytest.TempPathFactory):
    p = Protected(tmp_path_factory.mktemp("protected"), srv.stack.tracking_uri)
    yield p
    stop(p.proc)


def forecast(srv: Served, p: Protected, headers: dict | None = None) -> httpx.Response:
    return p.post(f"/v1/models/{MODEL}:predict", headers={"content-type": "application/json", **(headers or {})},
                  content=v1_body(srv, "predictor"))


def test_it_listens_on_loopback_unless_told(protected: Protected) -> None:
    listening = {c.laddr.ip for c in psutil.Process(protected.proc.pid).connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    addresses = [ipaddress.ip_address(ip) for ip in listening]  # gRPC's may be ::ffff:127.0.0.1
    assert addresses and all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in addresses), listening


def test_the_repository_is_admins_only_on_rest_and_grpc(srv: Served, protected: Protected) -> None:
    for route in REPOSITORY:
        for headers, status in (({}, 403), ({"x-api-key": PLANNER}, 403), ({"x-api-key": "sc_wrong"}, 401)):
            r = protected.post(route, headers)
            assert r.status_code == status, (route, headers, r.text)
    with grpc.insecure_channel(f"127.0.0.1:{protected.grpc_port}") as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=TIMEOUT,
                                       metadata=(("x-api-key", PLANNER),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "may not admin" in info.value.details()
    assert forecast(srv, protected, {"x-api-key": PLANNER}).status_code == 200
    assert protected.post(REPOSITORY[0], {"x-api-key": ADMIN}).status_code == 200  # admin unloads
    assert forecast(srv, protected, {"x-api-key": PLANNER}).status_code in (404, 503)
    assert protected.post(REPOSITORY[1], {"x-api-key": ADMIN}).status_code == 200  # and loads it back
    assert forecast(srv, protected, {"x-api-key": PLANNER}).status_code == 200


def test_credentials_are_capped_before_they_are_read(protected: Protected) -> None:
    jwt_shaped = "eyJ" + "A" * (1 << 20) + ".eyJzdWIiOiJ4In0.c2ln"  # 1 MB: the head is over 64 KiB, read no further
    top, closed = raw_post(protected.http_port, f"/v2/models/{MODEL}/infer", {"authorization": f"Bearer {jwt_shaped}"},
                           declared=0, sent=0)
    assert top.startswith("HTTP/1.1 431") and closed, top
    for headers, word in (({"authorization": "Bearer " + jwt_shaped[:60000]}, "longer than"),
                          ({"x-api-key": "k" * 600}, "longer than 512"),
                          ({"authorization": "Bearer " + "eyJ" + "A" * 9000 + ".e.s"}, "longer than"),
                          ({"authorization": "Basic dXNlcjpwYXNz"}, "Bearer")):
        r = protected.post(f"/v2/models/{MODEL}/infer", headers, json={"inputs": []})
        assert r.status_code == 401 and word in r.json()["error"], (headers.keys(), r.text)
    assert protected.ready()


def raw_post(port: int, path: str, headers: dict[str, str], declared: int, sent: int) -> tuple[str, bool]:
    """A POST declaring ``declared`` body bytes and sending ``sent`` of them: (status line and headers, whether
    the server closed the connection after its answer)."""
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {declared}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before taking it all
            s.sendall(head.encode() + b"x" * sent)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
            top, _, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", top.lower())
            if length and len(rest) >= int(length.group(1)) and b"connection: close" not in top.lower():
                return top.decode(), False
    return data.partition(b"\r\n\r\n")[0].decode(), True


def test_a_large_body_is_refused_before_it_is_read(protected: Protected) -> None:
    path = f"/v2/models/{MODEL}/infer"
    for headers, status in (({"x-api-key": "sc_wrong"}, 401), ({"x-api-key": PLANNER}, 413)):
        top, closed = raw_post(protected.http_port, path, headers, declared=24 << 20, sent=4096)
        assert top.startswith(f"HTTP/1.1 {status}"), top
        assert closed and "connection: close" in top.lower(), top  # the other 24 MB are never read
    top, closed = raw_post(protected.http_port, path, {"x-api-key": "sc_wrong"}, declared=100, sent=100)
    assert top.startswith("HTTP/1.1 401") and not closed  # a small body is dropped, the connection kept
    assert protected.ready()


def test_forwarded_addresses_only_from_the_proxies_named(srv: Served, protected: Protected) -> None:
    # from 127.0.0.1, a trusted proxy here: the right-most address it forwarded is the client's (its own budget of
    # 2 per 40 s); the forged left entries change nothing
    for client in ("203.0.113.1", "203.0.113.2"):
        for _ in range(2):  # the anonymous burst is 2 per address
            r = forecast(srv, protected, {"x-forwarded-for": f"6.6.6.6, {client}"})
            assert r.status_code == 200, r.text
        assert forecast(srv, protected, {"x-forwarded-for": f"6.6.6.{len(client)}, {client}"}).status_code == 429
    lines = [x for x in protected.audit() if x.get("forwarded", "").startswith("203.0.113.")]
    assert lines and all(x["peer"] == "127.0.0.1" for x in lines)
    assert {x["forwarded"] for x in lines} == {"203.0.113.1", "203.0.113.2"}  # never the forged left entry


def test_refusals_are_counted_one_by_one_and_logged_sampled(protected: Protected) -> None:
    before = metric(httpx.get(f"{protected.url}/metrics", timeout=TIMEOUT).text, "storecast_access_refusals_total",
                    reason="unknown_key", protocol="rest") or 0
    lines_before = len([x for x in protected.audit() if x.get("refusal") == "unknown_key"])
    t0 = time.monotonic()
    for i in range(40):
        assert protected.post(f"/v1/models/{MODEL}:predict", {"x-api-key": f"sc_guess-{i}"}).status_code == 401
    windows = 1 + int((time.monotonic() - t0) // 10)  # at most one line per reason every 10 s
    after = metric(httpx.get(f"{protected.url}/metrics", timeout=TIMEOUT).text, "storecast_access_refusals_total",
                   reason="unknown_key", protocol="rest")
    assert after == before + 40
    written = [x for x in protected.audit() if x.get("refusal") == "unknown_key"][lines_before:]
    assert len(written) <= windows, written
    time.sleep(SAMPLE_SECONDS + 0.5)  # past the window: the next refusal is written, with the count held back
    assert protected.post(f"/v1/models/{MODEL}:predict", {"x-api-key": "sc_guess-last"}).status_code == 401
    last = [x for x in protected.audit() if x.get("refusal") == "unknown_key"][-1]
    assert last["held_back"] >= 40 - len(written) and last["reason"] == "unknown API key", last
    access_401 = [line for line in protected.output().splitlines() if " storecast.access " in line and " 401 " in line]
    assert len(access_401) < 40 and all("held_back=" in line for line in access_401)
    assert "sc_guess" not in protected.output()


def test_what_is_logged_never_forges_a_line(srv: Served, protected: Protected) -> None:
    forged = '2030-01-01 00:00:00.000 1 storecast.audit INFO {"audit":"forged"}'
    from urllib.parse import quote

    for path in (f"/v1/models/{MODEL}:predict%0a{quote(forged)}", f"/v2/x%0d%0a{quote(forged)}%e2%80%a8"):
        for headers in ({"x-api-key": PLANNER}, {}):
            r = protected.post(path, headers)
            assert r.status_code in (400, 401, 403, 404, 405, 429), r.text
    text = protected.output()
    assert not any(line.startswith(("2030", '{"audit"')) for line in text.splitlines())
    audit = [x for x in protected.audit() if "forged" in x.get("route", "")]
    assert audit and all(x["audit"] == "request" and "\n" not in x["route"] for x in audit)  # "\n" escaped
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \d+ ")
    for line in text.splitlines():
        if "forged" in line:
            assert stamp.match(line) and not line.startswith("2030"), line
    assert protected.ready()
