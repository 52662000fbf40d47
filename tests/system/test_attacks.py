"""Tested as an attacker would (issue 23, deliverable 10): a protected deployment as the README documents one,
all on loopback, real processes, and a table of attempts at its doors.

The deployment (started once for the module): an auth file made with ``storecast auth add-key`` (a planner,
a batch service, an operator with ``admin``, the transformer's own service identity) plus the Broker's
OIDC subject in a tier of its own; a predictor with ``--auth-file``; a transformer with ``--auth-file``, its
key for the predictor in ``STORECAST_PREDICTOR_API_KEY_FILE`` and OIDC from an issuer whose JWKS can be made
to trickle (``TricklingIssuer``); the retrain service (``--dry-run``, ``--auth-file``); the dashboard in
front of the transformer and the retrain service; and, for the forged ``X-Forwarded-For`` only, a second
predictor whose auth file lets anonymous callers in with a burst of 5.

Each attempt is a row of ``ATTEMPTS``: what is sent, the answer due (an HTTP status, a gRPC code, or a
verdict for the attempts made of many requests) and the answer got. Every call has a timeout: a hang is
an answer of its own ("hang") and fails the row. After the table the servers are still healthy. The table,
as run, is written to ``build/attacks/attempts.md`` (the closing note cites it). It is longer than 400
lines because it is one table: each row is a line or two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import Service, wait_ready
from tests.support import (
    AUDIENCE,
    MODEL,
    REPO,
    SUBJECT,
    Predictor,
    Transformer,
    TricklingIssuer,
    audit_lines,
    grpc_code,
    jwk,
    new_key,
    proto_string,
    random_table,
    raw_request,
    run_cli,
    start_dashboard,
    start_service,
    stop,
    v2_body,
)

TIMEOUT = 20  # seconds for any one call: no answer by then is a hang
PREDICT, INFER = f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"
SECRET = "PASSWORD=swordfish"
REF = "calendar-20200101T000000000000Z-{}.csv.gz"
CALENDAR, REQUESTED = "com.storecast.calendar.updated", "com.storecast.retrain.requested"
JWT_1MB = "eyJ" + "A" * (1 << 20) + ".eyJzdWIiOiJ4In0.c2ln"
FORGED = '2030-01-01 00:00:00.000 1 storecast.audit INFO {"audit":"forged"}'
IDENTITIES = (("alice", "planner"), ("batch", "service"), ("ops", "admin"), ("storecast-transformer", "service"))
BROKER_TIER = "  broker-forecast:\n    requests_per_second: 200\n    burst: 400\n    concurrent: 32\n" \
              "    permissions: [forecast]\n"
ANONYMOUS_TIER = "  anonymous:\n    requests_per_second: 0.05\n    burst: 5\n    concurrent: 2\n" \
                 "    permissions: [forecast]\n"
RESULTS: list[tuple[str, str, str]] = []


@dataclass
class Deployment:
    """The protected deployment's processes, keys and what a request needs."""

    root: Path
    keys: dict[str, str]
    sales: Path
    issuer: TricklingIssuer
    servers: dict[str, Predictor | Service]
    business: dict  # a V1 business request (the transformer's)
    v1: dict  # a V1 request of the predictor
    v2: dict

    def port(self, name: str) -> int:
        return self.servers[name].http_port

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    def key(self, name: str) -> dict[str, str]:
        return {"x-api-key": self.keys[name]}

    def log(self, name: str) -> str:
        return Path(self.servers[name].log).read_text(errors="replace")


def add_keys(auth: Path) -> dict[str, str]:
    """``storecast auth add-key`` for each identity (the key is the first line it prints), then the Broker's
    forecast Trigger as the example file shows it: a tier with ``forecast`` only, an ``oidc_subject``."""
    keys = {name: run_cli("auth", "add-key", "--name", name, "--tier", tier, "--file", str(auth)).stdout.split()[0]
            for name, tier in IDENTITIES}
    text = auth.read_text().replace("\ntiers:\n", "\ntiers:\n" + BROKER_TIER, 1)
    auth.write_text(text + f"  - name: broker-forecast\n    tier: broker-forecast\n    oidc_subject: {SUBJECT}\n")
    return keys


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("attacks")
    auth, anonymous, key_file = root / "auth.yaml", root / "anonymous.yaml", root / "transformer.key"
    keys = add_keys(auth)
    key_file.write_text(keys["storecast-transformer"] + "\n")
    key_file.chmod(0o600)
    # the example file's way to let callers without a key in, with a small burst (the forged X-Forwarded-For)
    anonymous.write_text(auth.read_text().replace("\ntiers:\n", "\ntiers:\n" + ANONYMOUS_TIER, 1))
    table = random_table(4, seed=23)
    table.save(root / "version" / "params.npz")
    store, day = str(table.store_id[1]), str(np.datetime64(int(table.last_day.max()) + 1, "D"))
    sales = write_sales(synthesize(2, seed=8, start="2015-01-01", end="2015-04-30"), root / "sales.csv.gz")
    issuer = TricklingIssuer(interval=2.0)
    servers: dict[str, Predictor | Service] = {}
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("STORECAST_", "MLFLOW_"))}
    try:
        model = ["--model_uri", str(root / "version")]
        servers["predictor"] = Predictor(root / "predictor.log", [*model, "--auth-file", str(auth)])
        servers["anonymous"] = Predictor(root / "anonymous.log", [*model, "--auth-file", str(anonymous)])
        with pytest.MonkeyPatch.context() as mp:  # the transformer's key as a mounted Secret's file
            mp.setenv("STORECAST_PREDICTOR_API_KEY_FILE", str(key_file))
            servers["transformer"] = Transformer(root / "transformer.log", [
                "--predictor_hosts", f"127.0.0.1:{servers['predictor'].grpc_port}", "--auth-file", str(auth),
                "--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE, "--oidc-jwks-url", f"{issuer.url}/jwks"])
        servers["retrain"] = start_service(sales, f"sqlite:///{root / 'mlflow.db'}", MODEL, root, "--dry-run",
                                           "--no-drift", "--auth-file", str(auth), wait=False)
        for name in ("predictor", "anonymous", "transformer"):
            servers[name].wait_ready()
        wait_ready(f"{servers['retrain'].url}/healthz", servers["retrain"], 120)
        servers["dashboard"] = start_dashboard("--api-url", f"http://127.0.0.1:{servers['transformer'].http_port}",
                                               "--retrain-url", servers["retrain"].url, "--sales", str(sales),
                                               log=root / "dashboard.log", env=environ)
        yield Deployment(root, keys, sales, issuer, servers,
                         {"instances": [{"storeId": store, "beginDate": day, "endDate": day}]},
                         {"instances": [{"store_id": store, "ds": day}]}, v2_body([store], [day]))
    finally:
        for server in reversed(servers.values()):
            if isinstance(server, Predictor):
                server.stop()
            else:
                stop(server.proc)
        issuer.close()


# ---- how attempts are sent -------------------------------------------------------------------------------
def rest(d: Deployment, server: str, method: str, path: str, headers: object = None, **kw: object) -> int:
    return httpx.request(method, d.url(server) + path, headers=headers, timeout=TIMEOUT, **kw).status_code


def raw(d: Deployment, server: str, method: str, path: str, headers: list[tuple[str, str]] = (),
        body_bytes: int = 0) -> int:
    return raw_request(d.port(server), method, path, list(headers), body_bytes, timeout=TIMEOUT).status


def rpc(d: Deployment, server: str, method: str, metadata: tuple = (), message: bytes = b"") -> str:
    return grpc_code(d.servers[server].grpc_port, method, message, metadata, timeout=TIMEOUT)


def md(d: Deployment, name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", d.keys[name]),)


def cloudevent(kind: str, data: object, key: str | None = None, **extra: str) -> dict:
    headers = {"ce-specversion": "1.0", "ce-id": os.urandom(6).hex(), "ce-source": "attacker", "ce-type": kind,
               "content-type": "application/json", **({"x-api-key": key} if key else {}), **extra}
    return {"headers": headers, "content": json.dumps(data).encode()}


def b64(data: bytes | dict) -> str:
    raw_bytes = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw_bytes).rstrip(b"=").decode()


def claims(d: Deployment) -> dict:
    now = int(time.time())
    return {"iss": d.issuer.url, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + 600}


def forged_token(d: Deployment, kind: str) -> str:
    """A token an attacker could make: no signature, an HMAC keyed with the public key, another key's signature
    (a made-up kid, or the issuer's kid), or the issuer's own signature on claims that must not pass."""
    issuer = d.issuer
    if kind == "alg none":
        return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims(d))}."
    if kind == "HS256 keyed with the public key":
        pem = issuer.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        signing = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims(d))}"
        return f"{signing}.{b64(hmac.new(pem, signing.encode(), hashlib.sha256).digest())}"
    if kind.startswith("its own key"):  # the header names the attacker's keys: only the issuer's may count
        stranger = new_key()
        extra = {"jku": "http://127.0.0.1:9/jwks"} if "jku" in kind else {"jwk": jwk(stranger, "k1")}
        return jwt.encode(claims(d), stranger, algorithm="RS256", headers={"kid": "k1", **extra})
    made_up = {"unknown kid": {"kid": "k-made-up", "key": new_key()}, "another key, the issuer's kid":
               {"kid": "k1", "key": new_key()}}
    wrong = {"expired": {"exp": int(time.time()) - 600, "iat": int(time.time()) - 4000},
             "wrong audience": {"aud": "serving.knative.dev/service/storecast/other"},
             "wrong issuer": {"iss": "https://evil.example"}, "no exp": {"exp": None},
             "unknown subject": {"sub": "system:serviceaccount:storecast:intruder"}}
    return issuer.token(**made_up.get(kind, {}), **wrong.get(kind, {}))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# ---- the attempts made of many requests: each answers with a verdict -----------------------------------------
def full_rate(d: Deployment) -> str:
    """60 forecasts in a row through the protected transformer, each a call to the protected predictor."""
    before = sum(x.get("identity") == "storecast-transformer" for x in audit_lines(d.log("predictor")))
    with httpx.Client(timeout=TIMEOUT, headers=d.key("batch")) as client:
        statuses = [client.post(d.url("transformer") + PREDICT, json=d.business).status_code for _ in range(60)]
    seen = sum(x.get("identity") == "storecast-transformer" for x in audit_lines(d.log("predictor"))) - before
    verdict = f"{statuses.count(200)} x 200" + "".join(f", {statuses.count(s)} x {s}" for s in set(statuses) - {200})
    return verdict + ("" if seen >= 60 else f"; the predictor audited {seen} as storecast-transformer")


def forged_forwarding(d: Deployment) -> str:
    """20 anonymous requests, each claiming another client address, against a burst of 5 per address."""
    forged = [f"198.51.100.{i}" for i in range(1, 21)]
    statuses = [rest(d, "anonymous", "POST", PREDICT, {"x-forwarded-for": ip}, json=d.v1) for ip in forged]
    log = d.log("anonymous")
    peers = {x.get("peer") for x in audit_lines(log)} | {"forwarded" for x in audit_lines(log) if "forwarded" in x}
    verdict = ">= 15 of 20 x 429" if statuses.count(429) >= 15 else f"{statuses.count(429)} of 20 x 429"
    verdict += f"; audit peer {', '.join(sorted(peers))}"
    return verdict + ("; a forged address in the log" if any(ip in log for ip in forged) else "")


def forwarded_with_a_key(d: Deployment) -> str:
    status = rest(d, "predictor", "POST", PREDICT, {**d.key("alice"), "x-forwarded-for": "203.0.113.9"}, json=d.v1)
    mine = [x for x in audit_lines(d.log("predictor")) if x.get("identity") == "alice"]
    peers = {str(x.get("peer")) for x in mine} | {"forwarded" for x in mine if "forwarded" in x}
    return f"{status}; audit peer {', '.join(sorted(peers))}"


def calendar_ref(d: Deployment, kind: str) -> str:
    """A calendar event naming something hostile: 400 "not allowed" (or over the limit), never quoting the file,
    and said the same way as for the same kind of ref naming nothing (whether it exists is not told)."""
    folder, secret = Path(f"{d.sales}.calendars"), d.root / "passwd"
    folder.mkdir(exist_ok=True)
    secret.write_text(f"root:x:0:0:root:/root:/bin/sh\n{SECRET}\n")
    name = folder / REF.format(kind.split()[-1].lower())  # a well-formed ref naming something hostile
    if kind == "a FIFO" and not name.exists():
        os.mkfifo(name)
    elif kind == "a symlink to a secret" and not name.is_symlink():
        name.symlink_to(secret)
    elif kind == "a sparse GiB" and not name.exists():
        with name.open("wb") as f:
            f.truncate(1 << 30)
    ref, twin = {"..": ("../passwd", "../nothing"), "/dev/zero": ("/dev/zero", "/dev/nothing"),
                 "/proc/self/fd/0": ("/proc/self/fd/0", "/proc/self/fd/999"),
                 "an absolute path": (str(secret), str(d.root / "nothing"))}.get(kind, (name.name, REF.format("none")))
    r, other = (httpx.post(d.url("retrain"), **cloudevent(CALENDAR, {"calendar": x}, d.keys["batch"]),
                           timeout=TIMEOUT) for x in (ref, twin))
    said = "over the limit" if "over the limit" in r.text else "not allowed" if "not allowed" in r.text else "other"
    leaked = SECRET in r.text or "root:x" in r.text
    told = said == "not allowed" and r.text.split("not allowed", 1)[1] != other.text.split("not allowed", 1)[-1]
    return f"{r.status_code} {said}" + (" quoting the file" if leaked else "") + (" telling it exists" if told else "")


def forty_fifos(d: Deployment) -> str:
    calendar_ref(d, "a FIFO")
    event = cloudevent(CALENDAR, {"calendar": REF.format("fifo")}, d.keys["batch"])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(d.url("retrain"), **event, timeout=TIMEOUT).status_code,
                                range(40)))
    health = httpx.get(d.url("retrain") + "/healthz", timeout=TIMEOUT).json()
    return f"{answers.count(400)} of 40 x 400; healthz {health.get('status')}"


def slow_jwks(d: Deployment) -> str:
    """Valid tokens while tokens with unknown key ids make the transformer refetch from a trickling JWKS."""
    issuer, url = d.issuer, d.url("transformer") + PREDICT

    def send(token: str) -> int:
        return httpx.post(url, json=d.business, headers=bearer(token), timeout=TIMEOUT).status_code

    stranger, unknown = new_key(), []
    issuer.trickling.clear()
    issuer.trickle.set()
    pool = ThreadPoolExecutor(8)
    try:
        for i in range(20):  # at most one refetch every 5 s: ask until one is trickling
            unknown.append(pool.submit(send, issuer.token(kid=f"k-unknown-{i}", key=stranger)))
            if issuer.trickling.wait(1.0):
                break
        if not issuer.trickling.is_set():
            return "no refetch began"
        valid = [send(issuer.token(jti=f"valid-{i}")) for i in range(3)]  # new tokens: no cache
        waited = all(f.done() for f in unknown)  # the refetch's own request is answered once it gives up
        unknown += [pool.submit(send, issuer.token(kid="k-unknown-more", key=stranger)) for _ in range(5)]
        refused = [f.result(timeout=TIMEOUT) for f in unknown]
    finally:
        issuer.trickle.clear()
        pool.shutdown(wait=False)
    verdict = f"valid {valid.count(200)}/3 x 200 " + ("after the refetch gave up" if waited else "while it trickled")
    return verdict + ("; unknown kid all 401" if set(refused) == {401} else f"; unknown kid {refused}")


def dashboard_path(d: Deployment, path: str) -> str:
    """A dashboard path that names no job or static file, with a planner's key: 4xx, never the retrain service's
    job list or a file outside the page's folder."""
    answer = raw_request(d.port("dashboard"), "GET", path, [("x-api-key", d.keys["alice"])], timeout=TIMEOUT)
    shown = " with the job list" if b'"jobs"' in answer.body else " with a file" if b"root:" in answer.body else ""
    return ("4xx" if 400 <= answer.status < 500 else str(answer.status)) + shown


def healthz_unsigned(d: Deployment) -> str:
    r = httpx.get(d.url("retrain") + "/healthz", timeout=TIMEOUT)
    shown = [w for w in (str(d.sales), "sales", "data_source", "sqlite") if w in r.text]
    return f"{r.status_code} {r.text}" if shown else f"{r.status_code} status only"


def newline_in_paths(d: Deployment) -> str:
    """``%0a`` and ``%0d%0a`` in paths, with and without a key: every audit line stays one JSON object."""
    tail = quote(FORGED)
    for server, path, key in (("predictor", f"{PREDICT}%0a{tail}", "alice"), ("transformer", f"{PREDICT}%0a{tail}",
                              "alice"), ("retrain", f"/jobs/x%0d%0a{tail}", "batch")):
        for headers in (d.key(key), {}):
            rest(d, server, "GET" if server == "retrain" else "POST", path, headers, json=d.v1)
    wrong = []
    for server in ("predictor", "transformer", "retrain"):
        log = d.log(server)
        for line in log.splitlines():
            fields = line.split(" ", 5)
            if line.startswith(("2030", '{"audit"')):
                wrong.append(f"{server}: a forged line")
            elif len(fields) == 6 and fields[3] == "storecast.audit":
                try:
                    json.loads(fields[5])
                except ValueError:
                    wrong.append(f"{server}: an audit line that is not JSON")
        if not any("forged" in x.get("route", "") for x in audit_lines(log)):
            wrong.append(f"{server}: no audit line for the attempt")
    return "; ".join(sorted(set(wrong))) or "every audit line one JSON object"


# ---- the table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    name: str
    expected: tuple
    send: Callable[[Deployment], object]


A = Attempt
REPOSITORY = {"unload": "/v2/repository/models/storecast/unload", "load": "/v2/repository/models/storecast/load",
              "index": "/v2/repository/index"}
UNLOAD = proto_string(2, MODEL)  # RepositoryModelUnloadRequest.model_name
DASHBOARD_DATA = (("GET", "/api/sales?stores=1"), ("GET", "/api/model"), ("GET", "/api/metrics?stores=1"),
                  ("POST", "/api/forecast"), ("POST", "/api/retrain"), ("GET", "/api/jobs/abc"))
TOKENS = ("alg none", "HS256 keyed with the public key", "unknown kid", "another key, the issuer's kid", "expired",
          "wrong audience", "wrong issuer", "no exp", "its own key set (jku)", "its own key embedded (jwk)")
TEXT_PLAIN = {"origin": "http://evil.example", "content-type": "text/plain"}
TARGET = {"predictor": ("POST", INFER), "transformer": ("POST", PREDICT), "retrain": ("GET", "/jobs"),
          "dashboard": ("GET", "/api/sales?stores=1")}
TAILS = ("\x00", "\x00x", "\x0b")  # what a C string or a lax parser might cut off
KEYED = {"predictor": "alice", "transformer": "alice", "retrain": "batch", "dashboard": "alice"}
ATTEMPTS = [
    # 1. the predictor's model repository and its data
    *(A(f"predictor POST {path}, {who}", (status,), lambda d, p=path, k=key: rest(
        d, "predictor", "POST", p, d.key(k) if k else None))
      for path in REPOSITORY.values()
      for who, key, status in (("no key", None, 401), ("planner key", "alice", 403),
                               ("the transformer's key", "storecast-transformer", 403))),
    A("predictor gRPC RepositoryModelUnload, no key", ("UNAUTHENTICATED",),
      lambda d: rpc(d, "predictor", "RepositoryModelUnload", (), UNLOAD)),
    A("predictor gRPC RepositoryModelUnload, planner (forecast) key", ("PERMISSION_DENIED",),
      lambda d: rpc(d, "predictor", "RepositoryModelUnload", md(d, "alice"), UNLOAD)),
    A("predictor gRPC RepositoryModelUnload, the transformer's key", ("PERMISSION_DENIED",),
      lambda d: rpc(d, "predictor", "RepositoryModelUnload", md(d, "storecast-transformer"), UNLOAD)),
    A("predictor gRPC RepositoryModelLoad, planner key", ("PERMISSION_DENIED",),
      lambda d: rpc(d, "predictor", "RepositoryModelLoad", md(d, "alice"), UNLOAD)),
    A("predictor gRPC RepositoryIndex, no key (KServe's service has none)", ("UNAUTHENTICATED", "UNIMPLEMENTED"),
      lambda d: rpc(d, "predictor", "RepositoryIndex")),
    A("predictor POST //v2/repository/models/storecast/unload, planner key", (401, 403, 404),
      lambda d: rest(d, "predictor", "POST", "/" + REPOSITORY["unload"], d.key("alice"))),
    A("predictor POST /v2/repository/models/storecast/unload/, no key", (401,),
      lambda d: rest(d, "predictor", "POST", REPOSITORY["unload"] + "/")),
    *(A(f"{server} {method} {path}, no key (a route's '$' matches before a newline)", (401,),
        lambda d, s=server, m=method, p=path: rest(d, s, m, p, json=d.v1 if s == "predictor" else d.business))
      for server, method, path in (("predictor", "POST", f"{PREDICT}%0a"), ("transformer", "POST", f"{PREDICT}%0a"),
                                   ("transformer", "POST", f"/v1/models/{MODEL}:explain%0a"),
                                   ("predictor", "POST", f"{INFER}%0a"), ("predictor", "GET", f"/v1/models/{MODEL}%0a"),
                                   ("predictor", "POST", f"{REPOSITORY['unload']}%0a"))),
    A("predictor V2 infer, no key", (401,), lambda d: rest(d, "predictor", "POST", INFER, json=d.v2)),
    A("predictor V2 model metadata, no key", (401,), lambda d: rest(d, "predictor", "GET", f"/v2/models/{MODEL}")),
    A("predictor V1 predict, no key", (401,), lambda d: rest(d, "predictor", "POST", PREDICT, json=d.v1)),
    A("predictor gRPC ModelInfer, no key", ("UNAUTHENTICATED",),
      lambda d: rpc(d, "predictor", "ModelInfer", (), proto_string(1, MODEL))),
    A("predictor gRPC ModelMetadata, no key", ("UNAUTHENTICATED",),
      lambda d: rpc(d, "predictor", "ModelMetadata", (), proto_string(1, MODEL))),
    A("predictor forecast with a planner key after all that (never unloaded)", (200,),
      lambda d: rest(d, "predictor", "POST", INFER, d.key("alice"), json=d.v2)),
    # 2. the transformer -> predictor chain, both protected
    A("60 forecasts in a row through the transformer (batch key)", ("60 x 200",), full_rate),
    # 3. oversized and forged credentials, oversized bodies
    *(A(f"{server}: a 1 MB JWT-shaped bearer", (401, 431), lambda d, s=server: raw(
        d, s, *TARGET[s], [("authorization", f"Bearer {JWT_1MB}")])) for server in TARGET),
    *(A(f"{server}: a 9 KB x-api-key", (401,), lambda d, s=server: rest(
        d, s, *TARGET[s], {"x-api-key": "k" * 9216}, json=d.v1)) for server in TARGET),
    A("predictor gRPC: a 9 KB x-api-key (over gRPC's own 8 KiB soft limit)",
      ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED"),
      lambda d: rpc(d, "predictor", "ModelInfer", (("x-api-key", "k" * 9216),), proto_string(1, MODEL))),
    *(A(f"transformer (OIDC on): a forged token, {kind}", (401,), lambda d, k=kind: rest(
        d, "transformer", "POST", PREDICT, bearer(forged_token(d, k)), json=d.business)) for kind in TOKENS),
    A("transformer (OIDC on): a valid token of a subject with no identity", (403,),
      lambda d: rest(d, "transformer", "POST", PREDICT, bearer(forged_token(d, "unknown subject")), json=d.business)),
    A("transformer gRPC: a forged token, alg none", ("UNAUTHENTICATED",), lambda d: rpc(
        d, "transformer", "ModelInfer", (("authorization", f"Bearer {forged_token(d, 'alg none')}"),))),
    A("predictor (no OIDC): the issuer's valid token", (401,),
      lambda d: rest(d, "predictor", "POST", INFER, bearer(d.issuer.token()), json=d.v2)),
    A("retrain service (no OIDC): the issuer's valid token", (401,),
      lambda d: rest(d, "retrain", "GET", "/jobs", bearer(d.issuer.token()))),
    *(A(f"{server}: a 24 MB body without a key", (401, 413), lambda d, s=server, p=path: raw(
        d, s, "POST", p, [("content-type", "application/json")], 24 << 20))
      for server, path in (("predictor", INFER), ("transformer", PREDICT), ("retrain", "/"),
                           ("dashboard", "/api/forecast"))),
    # 4. forged X-Forwarded-For (no --trusted-proxies)
    A("anonymous-allowed predictor, burst 5: 20 requests, 20 forged X-Forwarded-For",
      (">= 15 of 20 x 429; audit peer 127.0.0.1",), forged_forwarding),
    A("protected predictor: a planner key with a forged X-Forwarded-For", ("200; audit peer 127.0.0.1",),
      forwarded_with_a_key),
    # 5. the calendar event names a path
    A("retrain: a calendar event with data.path", (400,), lambda d: httpx.post(d.url("retrain"), **cloudevent(
        CALENDAR, {"path": str(d.root / "passwd")}, d.keys["batch"]), timeout=TIMEOUT).status_code),
    *(A(f"retrain: a calendar ref to {kind}", ("400 not allowed",), lambda d, k=kind: calendar_ref(d, k))
      for kind in ("a FIFO", "/dev/zero", "/proc/self/fd/0", "..", "an absolute path", "a symlink to a secret")),
    A("retrain: a calendar ref to a sparse GiB", ("400 over the limit",), lambda d: calendar_ref(d, "a sparse GiB")),
    A("retrain: 40 FIFO calendar events at once, then /healthz", ("40 of 40 x 400; healthz ok",), forty_fifos),
    # 6. a slow JWKS
    A("transformer: valid OIDC tokens while unknown-kid tokens hit a trickling JWKS",
      ("valid 3/3 x 200 while it trickled; unknown kid all 401",), slow_jwks),
    # 7. no anonymous forecasting
    A("transformer V1 predict, no credentials", (401,), lambda d: rest(d, "transformer", "POST", PREDICT,
                                                                        json=d.business)),
    A("transformer V2 infer, no credentials", (401,), lambda d: rest(d, "transformer", "POST", INFER, json=d.v2)),
    A("transformer CloudEvent forecast.requested, no credentials", (401,), lambda d: httpx.post(
        d.url("transformer") + PREDICT, **cloudevent("com.storecast.forecast.requested", d.business),
        timeout=TIMEOUT).status_code),
    A("transformer structured CloudEvent, no credentials", (401,), lambda d: rest(
        d, "transformer", "POST", PREDICT, {"content-type": "application/cloudevents+json"}, content=json.dumps(
            {"specversion": "1.0", "id": "x", "source": "evil", "type": "com.storecast.forecast.requested",
             "datacontenttype": "application/json", "data": d.business}))),
    A("transformer gRPC ModelInfer, no credentials", ("UNAUTHENTICATED",),
      lambda d: rpc(d, "transformer", "ModelInfer", (), proto_string(1, MODEL))),
    *(A(f"dashboard {method} {path}, no key", (401,), lambda d, m=method, p=path: rest(
        d, "dashboard", m, p, json={"instances": [], "store_ids": ["1"]} if m == "POST" else None))
      for method, path in DASHBOARD_DATA),
    A("dashboard /api/sales, a wrong key", (401,), lambda d: rest(d, "dashboard", "GET", "/api/sales?stores=1",
                                                                  {"x-api-key": "sc_not-a-key"})),
    # 8. the smaller doors
    *(A(f"dashboard GET {path}, planner key", ("4xx",), lambda d, p=path: dashboard_path(d, p))
      for path in ("/api/jobs/.", "/api/jobs/..", "/api/jobs/%2e", "/api/jobs/%2e%2e", "/api/jobs/..%2fjobs",
                   "/api/jobs/%2E%2E%2Fjobs", "/../../../../etc/passwd", "/..%2f..%2f..%2f..%2fetc%2fpasswd",
                   "/static/..%2f..%2f..%2f..%2fetc%2fpasswd")),
    A("retrain GET /healthz, no key", ("200 status only",), healthz_unsigned),
    A("retrain GET /jobs, no key", (401,), lambda d: rest(d, "retrain", "GET", "/jobs")),
    *(A(f"retrain: a planner (refresh) asks for {what}", due, lambda d, k=kind, x=data: httpx.post(
        d.url("retrain"), **cloudevent(k, x, d.keys["alice"]), timeout=TIMEOUT).status_code)
      for what, kind, data, due in (("a retrain naming no store", REQUESTED, {}, (400, 403)),
                                    ("a ping", "dev.knative.sources.ping", None, (403,)),
                                    ("100 stores", REQUESTED, {"store_ids": [str(i) for i in range(100)]}, (403,)),
                                    ("a calendar push", CALENDAR, {"calendar": REF.format("x")}, (403,)))),
    A("predictor unload: a cross-site text/plain POST, no key", (403,),
      lambda d: rest(d, "predictor", "POST", REPOSITORY["unload"], TEXT_PLAIN, content=b"{}")),
    A("predictor unload: a cross-site text/plain POST, the admin's key", (403,),
      lambda d: rest(d, "predictor", "POST", REPOSITORY["unload"], {**TEXT_PLAIN, **d.key("ops")}, content=b"{}")),
    A("transformer predict: a cross-site text/plain POST, planner key", (403,), lambda d: rest(
        d, "transformer", "POST", PREDICT, {**TEXT_PLAIN, **d.key("alice")}, content=json.dumps(d.business))),
    A("retrain: a cross-site text/plain POST, service key", (403, 415), lambda d: rest(
        d, "retrain", "POST", "/", {**TEXT_PLAIN, **d.key("batch")}, content=json.dumps(
            {"specversion": "1.0", "id": "x", "source": "evil", "type": REQUESTED, "data": {"store_ids": ["1"]}}))),
    A("retrain: a text/plain POST without ce-* headers, service key", (415,), lambda d: rest(
        d, "retrain", "POST", "/", {"content-type": "text/plain", **d.key("batch")}, content=b"{}")),
    A("dashboard /api/retrain: a cross-site text/plain POST, planner key", (403, 415), lambda d: rest(
        d, "dashboard", "POST", "/api/retrain", {**TEXT_PLAIN, **d.key("alice")}, content=b'{"store_ids": ["1"]}')),
    A("%0a / %0d%0a in paths (predictor, transformer, retrain): the audit logs", ("every audit line one JSON object",),
      newline_in_paths),
    *(A(f"{server}: authorization: Basic with the valid key", (401,), lambda d, s=server: rest(
        d, s, *TARGET[s], {"authorization": "Basic " + base64.b64encode(f"{KEYED[s]}:{d.keys[KEYED[s]]}".encode())
                           .decode()})) for server in KEYED),
    *(A(f"{server}: X-API-KEY (upper case) with a wrong key", (401,), lambda d, s=server: raw(
        d, s, *TARGET[s], [("X-API-KEY", "sc_wrong")])) for server in KEYED),
    *(A(f"{server}: a wrong x-api-key beside a valid authorization: Bearer", (401,), lambda d, s=server: rest(
        d, s, *TARGET[s], {"x-api-key": "sc_wrong", **bearer(d.keys[KEYED[s]])})) for server in KEYED),
    *(A(f"{server}: the valid key with {tail!r} after it", (400, 401), lambda d, s=server, t=tail: raw(
        d, s, *TARGET[s], [("x-api-key", d.keys[KEYED[s]] + t)])) for server in KEYED for tail in TAILS),
    *(A(f"{server}: the valid key less its last character", (401,), lambda d, s=server: rest(
        d, s, *TARGET[s], {"x-api-key": d.keys[KEYED[s]][:-1]})) for server in KEYED),
    A("predictor: the valid key with trailing blanks (HTTP's optional whitespace: the same key)", (200,),
      lambda d: raw(d, "predictor", "GET", f"/v2/models/{MODEL}", [("x-api-key", d.keys["alice"] + " \t ")])),
    # two credentials are none: which one counts is never guessed
    *(A(f"{server}: duplicate x-api-key ({order})", (401,), lambda d, s=server, o=order: raw(
        d, s, *TARGET[s], [("x-api-key", d.keys[KEYED[s]] if k == "valid" else "sc_wrong") for k in o.split(", ")]))
      for server in KEYED for order in ("wrong, valid", "valid, wrong")),
    A("predictor gRPC: duplicate x-api-key metadata (wrong, valid)", ("UNAUTHENTICATED",), lambda d: rpc(
        d, "predictor", "ModelInfer", (("x-api-key", "sc_wrong"), *md(d, "alice")), proto_string(1, MODEL))),
]


def record(name: str, expected: tuple, got: object) -> None:
    """Add the row and write the table so far to build/attacks/attempts.md."""
    RESULTS.append((name, " or ".join(map(str, expected)), str(got)))
    out = REPO / "build" / "attacks" / "attempts.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"| {i} | {n} | {e} | {g} |" for i, (n, e, g) in enumerate(RESULTS, 1)]
    out.write_text("# Attempts against a protected deployment (tests/system/test_attacks.py)\n\n"
                   "| # | attempt | expected | got |\n|---:|---|---|---|\n" + "\n".join(r.replace("\x00", "\\x00")
                                                                                       for r in rows) + "\n")


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[re.sub(r"[^\w.:/%-]+", "-", a.name) for a in ATTEMPTS])
def test_attempt(d: Deployment, attempt: Attempt) -> None:
    try:
        got = attempt.send(d)
    except (httpx.TimeoutException, TimeoutError):
        got = f"hang: no answer within {TIMEOUT} s"
    except (httpx.TransportError, OSError) as exc:
        got = f"{type(exc).__name__}: {exc}"[:160]
    record(attempt.name, attempt.expected, got)
    assert got in attempt.expected, f"{attempt.name}: expected {' or '.join(map(str, attempt.expected))}, got {got!r}"


def test_the_servers_are_still_healthy_after_the_table(d: Deployment) -> None:
    checks = {
        "predictor ready": rest(d, "predictor", "GET", f"/v2/models/{MODEL}/ready"),
        "transformer ready": rest(d, "transformer", "GET", f"/v2/models/{MODEL}/ready"),
        "retrain /healthz": rest(d, "retrain", "GET", "/healthz"),
        "dashboard /healthz": rest(d, "dashboard", "GET", "/healthz"),
        "planner forecast, transformer": rest(d, "transformer", "POST", PREDICT, d.key("alice"), json=d.business),
        "planner forecast, predictor": rest(d, "predictor", "POST", INFER, d.key("alice"), json=d.v2),
        "planner forecast, dashboard": rest(d, "dashboard", "POST", "/api/forecast", d.key("alice"), json=d.business),
        "planner sales, dashboard": rest(d, "dashboard", "GET", "/api/sales?stores=1", d.key("alice")),
    }
    for name, status in checks.items():
        record(f"after the table: {name}", (200,), status)
    alive = {name: s.proc.poll() is None for name, s in d.servers.items()}
    assert checks == dict.fromkeys(checks, 200) and all(alive.values()), (checks, alive)
