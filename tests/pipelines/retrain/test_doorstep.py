"""The retrain service's doorstep, as an attacker meets it: real ``python -m pipelines.retrain`` processes.

- bodies over ``--max-body-bytes`` are refused with 413 naming the limit, by ``Content-Length`` before a
  byte is read (and before the door: anonymous callers included) and as a chunked body streams;
- an event type's permission is checked on its ``ce-type`` before the body is read (a body never sent
  does not hold the answer back);
- ``/healthz`` says only its status to a caller without ``refresh``, and never a URL's credentials;
- cross-site requests (a foreign ``Origin``, a ``text/plain`` or form body without ``ce-*`` headers, a
  foreign ``Host`` on the open loopback service) are refused; real CloudEvents clients still get through;
- a calendar event naming anything but a calendar object of the store (a FIFO, ``/dev/zero``, a symlink
  to a file with a secret line, ``..``, a huge file, ``/proc/self/fd/0``) is refused at once, never
  quoting a byte of it, and the service stays healthy (40 FIFO events at once included).

Every request has a timeout: a hang fails the test.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import free_port
from tests.support import planner_service_auth, start_service, stop

PLANNER, SERVICE = "sc_doorstep-planner", "sc_doorstep-service"
LIMIT = 65536
SECRET = "PASSWORD=swordfish"
REF = "calendar-20200101T000000000000Z-{}.csv.gz"
REQUESTED, PING, CALENDAR = "com.storecast.retrain.requested", "dev.knative.sources.ping", \
    "com.storecast.calendar.updated"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("doorstep")
    sales = write_sales(synthesize(2, seed=8, start="2015-01-01", end="2015-04-30"), root / "sales.csv.gz")
    auth = planner_service_auth(root / "auth.yaml", {"planner": ("planner", PLANNER), "svc": ("service", SERVICE)})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    svc = start_service(sales, uri, "storecast-doorstep", root, "--dry-run", "--no-drift", "--auth-file", str(auth),
                        "--max-body-bytes", str(LIMIT))
    try:
        yield {"url": svc.url, "port": svc.http_port, "root": root, "sales": sales, "uri": uri}
    finally:
        stop(svc.proc)


def event(kind: str, data: object, key: str | None = None, structured: bool = False, **extra: str) -> dict:
    headers, body = (to_structured if structured else to_binary)(CloudEvent({"type": kind, "source": "t", "id": "1"},
                                                                            data))
    return {"headers": {**headers, **({"x-api-key": key} if key else {}), **extra}, "content": body}


def post(url: str, kind: str, data: object, key: str | None = None, **kw: object) -> httpx.Response:
    return httpx.post(url, **event(kind, data, key, **kw), timeout=20)


def head_only(port: int, headers: dict[str, str], length: int) -> str:
    """Send a POST's head announcing ``length`` bytes and none of them; the status line of the answer."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"host": f"127.0.0.1:{port}", "content-length": str(length),
                                                  **headers}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"POST / HTTP/1.1\r\n{head}\r\n".encode())
        return s.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def test_bodies_over_the_limit_are_413_before_anything_else(world: dict) -> None:
    url = world["url"]
    big = b"{" + b" " * LIMIT + b"}"
    for who in ({}, {"x-api-key": PLANNER}):  # anonymous too: the size is refused before the door
        r = httpx.post(url, content=big, headers={"content-type": "application/cloudevents+json", **who}, timeout=20)
        assert r.status_code == 413, r.text
        assert f"over the limit of {LIMIT} bytes" in r.json()["error"] and "--max-body-bytes" in r.json()["error"]
    # a Content-Length alone is enough: the body is never waited for
    assert " 413 " in head_only(world["port"], {"content-type": "application/cloudevents+json"}, 50 * 1024 * 1024)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"store_ids": ["1"], "reason": "'
        for _ in range(40):
            yield b"x" * 4096
        yield b'"}'

    h, _ = to_binary(CloudEvent({"type": REQUESTED, "source": "t", "id": "chunked"}, {}))
    r = httpx.post(url, content=chunks(), headers={**h, "x-api-key": PLANNER}, timeout=20)
    assert r.status_code == 413 and f"{LIMIT} bytes" in r.json()["error"], r.text
    assert post(url, REQUESTED, {"store_ids": ["1"]}, PLANNER).status_code == 200  # still serving


def test_an_event_types_permission_comes_before_its_body(world: dict) -> None:
    port = world["port"]
    binary = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "t", "content-type": "application/json"}
    # the body is announced and never sent: the answer cannot have waited for it
    assert " 403 " in head_only(port, {**binary, "ce-type": PING, "x-api-key": PLANNER}, 60000)
    assert " 403 " in head_only(port, {**binary, "ce-type": CALENDAR, "x-api-key": PLANNER}, 60000)
    assert " 401 " in head_only(port, {**binary, "ce-type": REQUESTED}, 60000)
    assert " 400 " in head_only(port, {**binary, "ce-type": "com.example.other", "x-api-key": SERVICE}, 60000)
    r = post(world["url"], PING, None, PLANNER)
    assert r.status_code == 403 and "may not retrain" in r.json()["error"]
    assert post(world["url"], PING, None, SERVICE).status_code == 200


def test_healthz_says_only_its_status_to_a_caller_without_refresh(world: dict) -> None:
    url = f"{world['url']}/healthz"
    for headers in ({}, {"x-api-key": "sc_wrong"}, {"authorization": "Bearer nope"}):
        r = httpx.get(url, headers=headers, timeout=20)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    full = httpx.get(url, headers={"x-api-key": PLANNER}, timeout=20).json()
    assert full["status"] == "ok" and full["data_source"]["ok"] and "job_store" in full


def test_the_sales_urls_credentials_never_show(world: dict) -> None:
    """An open service (loopback) shows its details to anyone: the sales URL without its user, password or token."""
    url = (f"http://reader:hunter2-pass@127.0.0.1:{free_port()}/api/2.0/mlflow-artifacts/artifacts/s/train.csv.gz"
           "?X-Amz-Signature=sig-4242")
    svc = start_service(url, world["uri"], "storecast-doorstep", world["root"], "--dry-run", "--no-drift",
                        name="retrain-creds")
    try:
        health = httpx.get(f"{svc.url}/healthz", timeout=20)
        r = post(svc.url, CALENDAR, {"calendar": REF.format("x")})
    finally:
        stop(svc.proc)
    assert health.json()["status"] == "degraded" and not health.json()["data_source"]["ok"]
    assert health.json()["data_source"]["location"] == url.replace("reader:hunter2-pass@", "").split("?")[0]
    assert r.status_code == 503 and "unreachable" in r.json()["error"], r.text
    log = (world["root"] / "retrain-creds.log").read_text()
    for text in (health.text, r.text, log):
        assert "hunter2" not in text and "sig-4242" not in text and "reader" not in text, text


def test_cross_site_requests_are_refused_and_real_cloudevents_clients_are_not(world: dict) -> None:
    url, port = world["url"], world["port"]
    ev = {"specversion": "1.0", "id": "x", "source": "t", "type": REQUESTED, "data": {"store_ids": ["1"]}}
    # what a page of another site can send without a preflight: text/plain or a form, no ce-* headers
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None):
        r = httpx.post(url, content=json.dumps(ev), headers={"x-api-key": SERVICE, **({"content-type": ctype}
                                                                                      if ctype else {})}, timeout=20)
        assert r.status_code == 415 and "a CloudEvent is expected" in r.json()["error"], (ctype, r.text)
    r = post(url, REQUESTED, {"store_ids": ["1"]}, SERVICE, origin="https://evil.example")
    assert r.status_code == 403 and "cross-site request refused" in r.json()["error"]
    r = post(url, REQUESTED, {"store_ids": ["1"]}, SERVICE, origin="null")
    assert r.status_code == 403
    # the service's own origin, binary mode and structured mode: through
    assert post(url, REQUESTED, {"store_ids": ["1"]}, SERVICE, origin=f"http://127.0.0.1:{port}").status_code == 200
    assert post(url, REQUESTED, {"store_ids": ["1"]}, SERVICE, structured=True).status_code == 200


def test_an_open_service_answers_only_to_loopback_names(world: dict, tmp_path: Path) -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 is same-origin to a browser; the open service
    (no auth file, loopback only) refuses a Host that is not a loopback name."""
    svc = start_service(world["sales"], world["uri"], "storecast-doorstep", tmp_path, "--dry-run", "--no-drift",
                        name="retrain-open")
    try:
        rebound = post(svc.url, REQUESTED, {"store_ids": ["1"]}, host=f"evil.example:{svc.http_port}",
                       origin=f"http://evil.example:{svc.http_port}")
        plain = httpx.post(svc.url, content=b'{"specversion": "1.0", "id": "a", "source": "b", "type": "'
                           + PING.encode() + b'"}', headers={"content-type": "text/plain"}, timeout=20)
        fine = post(svc.url, REQUESTED, {"store_ids": ["1"]}, host=f"localhost:{svc.http_port}")
    finally:
        stop(svc.proc)
    assert rebound.status_code == 403 and "DNS rebinding" in rebound.json()["error"], rebound.text
    assert plain.status_code == 415
    assert fine.status_code == 200, fine.text


def _hostile(folder: Path, kind: str) -> str:
    """A calendar ref whose object is something hostile (or a name that is no ref at all)."""
    secret = folder.parent / "passwd"
    secret.write_text(f"root:x:0:0:root:/root:/bin/sh\n{SECRET}\n")
    path = folder / REF.format(kind)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero itself, in the store's folder
    elif kind == "symlink":
        path.symlink_to(secret)
    elif kind == "huge":
        with path.open("wb") as f:
            f.truncate(1 << 30)  # a sparse GiB: over the limit, never read
    elif kind == "hardlink":
        os.link(secret, path)
    else:
        return {"dotdot": "../passwd", "dev-zero": "/dev/zero", "proc": "/proc/self/fd/0",
                "absolute": str(secret)}[kind]
    return path.name


HOSTILE = {"fifo": "not allowed", "zero": "not allowed", "symlink": "not allowed", "hardlink": "not allowed",
           "huge": "over the limit", "dotdot": "not allowed", "dev-zero": "not allowed", "proc": "not allowed",
           "absolute": "not allowed"}


def test_a_calendar_event_reads_only_calendar_objects_of_the_store(world: dict) -> None:
    folder = Path(f"{world['sales']}.calendars")
    folder.mkdir(exist_ok=True)
    for kind, words in HOSTILE.items():
        r = post(world["url"], CALENDAR, {"calendar": _hostile(folder, kind)}, SERVICE)
        assert r.status_code == 400 and words in r.json()["error"], (kind, r.text)
        assert SECRET not in r.text and "root:x" not in r.text and str(world["root"]) not in r.text, (kind, r.text)
    missing = post(world["url"], CALENDAR, {"calendar": REF.format("missing")}, SERVICE).json()["error"]
    fifo = post(world["url"], CALENDAR, {"calendar": REF.format("fifo")}, SERVICE).json()["error"]
    assert missing.replace("missing", "X") == fifo.replace("fifo", "X")  # whether it exists is not said
    # forty FIFO events at once: each refused, none holds a thread
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post(world["url"], CALENDAR, {"calendar": REF.format("fifo")}, SERVICE),
                                range(40)))
    assert [a.status_code for a in answers] == [400] * 40
    assert httpx.get(f"{world['url']}/healthz", timeout=20).json() == {"status": "ok"}
    assert post(world["url"], REQUESTED, {"store_ids": ["2"]}, PLANNER).status_code == 200
