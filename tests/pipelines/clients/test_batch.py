"""The batch client (``storecast forecast --stores``) against the real local stack.

The transformer runs with ``--max-inflight 1`` (it sheds with 503 + Retry-After past one request).
In front of it, a loopback gate of the test's own (the real rate limiter is not built yet) forwards
every request to the transformer and: counts requests in flight, answers 429 + Retry-After past a
request budget per window, drops connections or answers 503 for chosen stores, and records when each
request arrived and when each 429/503 was sent, so the test can check that no request came back
before its Retry-After.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pipelines.clients import batch, retrying
from pipelines.stack import LocalStack
from tests.support import BIN, FakeUpstream

STORES = [str(i) for i in range(1, 9)]
BEGIN, END = "2015-08-01", "2015-08-07"


@pytest.fixture(scope="module")
def stack(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Eight synthetic stores in a sqlite registry; a transformer that serves one request at a time."""
    import subprocess

    root = tmp_path_factory.mktemp("batch")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    subprocess.run([str(BIN / "storecast"), "train", "--data", str(synth_csv), "--tracking-uri", uri, "--limit",
                    str(len(STORES)), "--alias", "champion", "--workers", "1", "--no-progress"], cwd=root, check=True,
                   capture_output=True, timeout=300)
    with LocalStack("models:/storecast@champion", uri, log_dir=root / "logs",
                    transformer_args=["--max-inflight", "1"]) as s:
        yield s


def direct(stack: LocalStack, stores: list[str]) -> dict[str, list[dict]]:
    """The business API's answer for these stores in one request, by store."""
    r = httpx.post(f"{stack.transformer.url}/v1/models/storecast:predict", timeout=30, json={
        "instances": [{"storeId": s, "beginDate": BEGIN, "endDate": END} for s in stores]})
    assert r.status_code == 200, r.text
    return {p["request"]["store_id"]: p["forecast"] for p in r.json()["predictions"]}


class Gate:
    """A loopback HTTP server forwarding to ``upstream``, counting and shaping what it lets through.

    ``budget`` requests per ``window`` seconds are forwarded, the rest get 429 with the seconds left
    in the window as Retry-After. ``rule(stores, attempt) -> None | "drop" | (status, retry_after)``
    answers a request itself (attempt counts the requests with the same stores, from 1).
    """

    def __init__(self, upstream: str, budget: int = 10**9, window: float = 1.0, hold: float = 0.0,
                 rule: Callable[[tuple[str, ...], int], object] | None = None) -> None:
        self.upstream, self.budget, self.window, self.hold, self.rule = upstream, budget, window, hold, rule
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.arrivals: list[tuple[float, tuple[str, ...], dict[str, str]]] = []  # (time, stores, headers)
        self.refusals: list[tuple[float, tuple[str, ...], int, float]] = []  # (sent at, stores, status, after)
        self.attempts: dict[tuple[str, ...], int] = {}
        self.window_start, self.used = time.monotonic(), 0
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                gate.handle(self, body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        now = time.monotonic()
        stores = tuple(i["storeId"] for i in json.loads(body)["instances"])
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.arrivals.append((now, stores, {k.lower(): v for k, v in h.headers.items()}))
            attempt = self.attempts[stores] = self.attempts.get(stores, 0) + 1
            if now - self.window_start >= self.window:
                self.window_start, self.used = now, 0
            limited = self.used >= self.budget
            after = max(1, math.ceil(self.window - (now - self.window_start)))
            if not limited:
                self.used += 1
        try:
            verdict = self.rule(stores, attempt) if self.rule else None
            if verdict == "drop":
                h.close_connection = True  # no answer at all: the client sees the connection close
                return
            if verdict is not None:
                status, after = verdict
                self.answer(h, status, b'{"error": "gate says no"}', {"retry-after": str(after)}, stores)
            elif limited:
                self.answer(h, 429, b'{"error": "rate limited"}', {"retry-after": str(after)}, stores)
            else:
                time.sleep(self.hold)
                r = httpx.post(f"{self.upstream}{h.path}", content=body, timeout=30,
                               headers={"content-type": "application/json"})
                extra = {k: r.headers[k] for k in ("retry-after",) if k in r.headers}
                self.answer(h, r.status_code, r.content, extra, stores)
        finally:
            with self.lock:
                self.inflight -= 1

    def answer(self, h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str],
               stores: tuple[str, ...]) -> None:
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
        if status in (429, 503) and "retry-after" in headers:
            with self.lock:
                self.refusals.append((time.monotonic(), stores, status, float(headers["retry-after"])))

    def early_retries(self) -> list[str]:
        """Requests that arrived before the Retry-After of the refusal before them (same stores)."""
        bad = []
        for sent, stores, status, after in self.refusals:
            later = [t for t, s, _ in self.arrivals if s == stores and t > sent]
            if later and min(later) < sent + after:
                bad.append(f"{stores}: {status} with Retry-After {after} s, back after {min(later) - sent:.3f} s")
        return bad

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def forecast(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess

    return subprocess.run([str(BIN / "storecast"), "forecast", "--begin", BEGIN, "--end", END, "--no-progress",
                           *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def read(path: Path) -> dict[str, list]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pydict()
    types = {"store": pa.string(), "date": pa.date32(), "holiday": pa.string(), "calendar": pa.string(),
             "model_version": pa.string()}
    options = pcsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    return pcsv.read_csv(path, convert_options=options).to_pydict()


def assert_rows_equal_api(cols: dict[str, list], expected: dict[str, list[dict]], stores: list[str]) -> None:
    assert cols["store"] == [s for s in stores for _ in range(7)]
    days = [dt.date(2015, 8, d) for d in range(1, 8)]
    assert cols["date"] == days * len(stores)
    rows = [row for s in stores for row in expected[s]]
    for name in ("value", "lower", "upper", "open"):
        assert cols[name] == [row[name] for row in rows], name  # exactly, not approximately
    for name in ("promo", "holiday", "calendar"):  # the calendar fields, when the business rows have them
        assert cols[name] == [row.get(name) for row in rows], name


def test_every_store_arrives_within_the_bound_and_no_retry_is_early(stack: LocalStack, tmp_path: Path) -> None:
    gate = Gate(stack.transformer.url, budget=3, window=1.0, hold=0.05)
    try:
        out = tmp_path / "fleet.parquet"
        (tmp_path / "key").write_text("k-123\n")  # a mounted Secret: the key never in the command line
        proc = forecast("--stores", "1-8", "--batch-size", "1", "--concurrency", "3", "--url", gate.url,
                        "--out", str(out), "--api-key-file", str(tmp_path / "key"), "--backoff", "0.1")
    finally:
        gate.close()
    assert proc.returncode == 0, proc.stderr
    assert_rows_equal_api(read(out), direct(stack, STORES), STORES)
    assert 2 <= gate.max_inflight <= 3, gate.max_inflight
    statuses = [status for _, _, status, _ in gate.refusals]
    assert 429 in statuses, gate.refusals  # 8 requests against a budget of 3 a second
    assert not gate.early_retries(), gate.early_retries()
    assert {h.get("x-api-key") for _, _, h in gate.arrivals} == {"k-123"}
    retries = len(gate.arrivals) - len(STORES)
    assert f"{len(gate.arrivals)} requests" in proc.stderr and f"{retries} retries" in proc.stderr, proc.stderr
    assert not (tmp_path / "fleet.parquet.failed.txt").exists()


def test_the_transformers_own_503_is_retried_after_its_retry_after(stack: LocalStack, tmp_path: Path) -> None:
    """Four requests at once against --max-inflight 1: the transformer sheds, the client comes back."""
    gate = Gate(stack.transformer.url, hold=0.0)
    try:
        out = tmp_path / "fleet.csv"
        proc = forecast("--stores", ",".join(STORES), "--batch-size", "2", "--concurrency", "4", "--url", gate.url,
                        "--out", str(out), env={"STORECAST_API_KEY": "from-env"})
    finally:
        gate.close()
    assert proc.returncode == 0, proc.stderr
    assert_rows_equal_api(read(out), direct(stack, STORES), STORES)  # CSV floats read back exactly
    assert gate.max_inflight <= 4
    assert all(status == 503 for _, _, status, _ in gate.refusals)
    assert not gate.early_retries(), gate.early_retries()
    assert {h.get("x-api-key") for _, _, h in gate.arrivals} == {"from-env"}


def test_dropped_connections_give_up_and_bad_stores(stack: LocalStack, tmp_path: Path) -> None:
    """A dropped connection is retried; a batch refused every time is given up after --max-attempts;
    an unknown store is split out of its batch, so its neighbours arrive."""

    def rule(stores: tuple[str, ...], attempt: int) -> object:
        if "2" in stores and attempt == 1:
            return "drop"
        if "5" in stores:
            return (503, 0)
        return None

    gate = Gate(stack.transformer.url, rule=rule)
    ids = tmp_path / "stores.csv"
    ids.write_text("Store,Region\n1,a\n2,a\n3,b\n999,b\n5,c\n6,c\n7,c\n8,c\n")
    out = tmp_path / "some.parquet"
    try:
        proc = forecast("--stores", str(ids), "--batch-size", "4", "--concurrency", "2", "--max-attempts", "3",
                        "--backoff", "0.05", "--url", gate.url, "--out", str(out))
    finally:
        gate.close()
    assert proc.returncode == 1, proc.stderr
    assert_rows_equal_api(read(out), direct(stack, ["1", "2", "3"]), ["1", "2", "3"])
    failed = (tmp_path / "some.parquet.failed.txt").read_text().split()
    assert sorted(failed) == ["5", "6", "7", "8", "999"]
    assert "failed store 999: HTTP 400" in proc.stderr and "999" in proc.stderr.split("failed store 999:")[1]
    assert "failed store 5: gave up after 3 attempts, last: HTTP 503" in proc.stderr
    assert sum(1 for _, s, _ in gate.arrivals if s == ("5", "6", "7", "8")) == 3  # the bound, not more
    dropped = [s for _, s, _ in gate.arrivals if "2" in s]
    assert dropped.count(("1", "2", "3", "999")) == 2  # dropped once, then answered (400: split)


def test_all_stores_with_the_business_url_alone(stack: LocalStack, tmp_path: Path) -> None:
    """``--stores all`` with only ``--url``: the transformer lists its shards' stores; every store's rows are
    the API's and carry the version that answered."""
    out = tmp_path / "all.csv"
    proc = forecast("--stores", "all", "--url", stack.transformer.url, "--out", str(out), "--batch-size", "3",
                    "--concurrency", "1")
    assert proc.returncode == 0, proc.stderr
    cols = read(out)
    listed = httpx.post(f"{stack.predictors[0].url}/v1/models/storecast:predict", json={"list_stores": True}).json()
    assert sorted(listed["stores"], key=int) == STORES
    assert_rows_equal_api(cols, direct(stack, STORES), STORES)
    assert set(cols["model_version"]) == {listed["model_version"]}


def test_all_stores_refused_says_so_in_one_line(tmp_path: Path) -> None:
    fake = FakeUpstream(lambda method, path, headers, body: (403, {"error": "identity x may not forecast"}, {}))
    try:
        proc = forecast("--stores", "all", "--url", fake.url, "--out", str(tmp_path / "x.csv"))
    finally:
        fake.close()
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "refused the store listing: HTTP 403" in line and "STORECAST_API_KEY" in line


@pytest.mark.parametrize(("spec", "stores"), [
    ("1-3", ["1", "2", "3"]), ("4,1-2,x7", ["4", "1", "2", "x7"]), ("all", None)])
def test_store_specs(spec: str, stores: list[str] | None) -> None:
    assert batch.parse_stores(spec) == stores


def test_store_files(tmp_path: Path) -> None:
    plain = tmp_path / "ids.txt"
    plain.write_text("# stores\n4\n\n7\n4\n")
    assert batch.parse_stores(str(plain)) == ["4", "7"]
    table = tmp_path / "t.csv"
    table.write_text('Date,"Store",Sales\n2015-01-01,3,10\n2015-01-02,3,11\n2015-01-01,9,1\n')
    assert batch.parse_stores(str(table)) == ["3", "9"]
    with pytest.raises(batch.BatchError, match="ends before"):
        batch.parse_stores("9-3")


def test_retry_after_and_backoff_never_earlier() -> None:
    import email.utils
    import random

    assert retrying.retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert retrying.retry_after(httpx.Headers({})) is None
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retrying.retry_after(httpx.Headers({"retry-after": when})) <= 30
    policy, rng = retrying.Policy(backoff=0.5, max_backoff=4.0), random.Random(1)
    delays = [retrying.backoff_delay(a, policy, 2.0, rng) for a in range(1, 10) for _ in range(50)]
    assert min(delays) >= 2.0 and max(delays) <= 6.0
    first = [retrying.backoff_delay(1, policy, None, rng) for _ in range(200)]
    assert max(first) <= 0.5 and len(set(first)) > 100  # full jitter: spread over [0, cap]


def test_a_401_stops_the_run_without_splitting(tmp_path: Path) -> None:
    """Wrong credentials are the same for every request: no retry, no split, no further requests."""
    gate = Gate("http://127.0.0.1:9", rule=lambda stores, attempt: (401, 0))  # never forwards
    try:
        proc = forecast("--stores", "1-40", "--batch-size", "4", "--concurrency", "2", "--url", gate.url,
                        "--out", str(tmp_path / "x.parquet"))
    finally:
        gate.close()
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr, proc.stderr
    assert len(gate.arrivals) <= 2  # at most the requests already in flight when the first 401 came back
    assert len((tmp_path / "x.parquet.failed.txt").read_text().split()) == 40
    assert "0 splits" in proc.stderr
