"""The dashboard server as a real process: the proxy, its own data, the static page, settings, manifest.

The upstream here is a recording HTTP server on loopback (what the dashboard forwards, exactly); the
page in a real browser against the real stack is tests/dashboard/test_browser.py.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from dashboard.config import parse
from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import Service, free_port
from tests.support import REPO, FakeUpstream, run_cli, schema_errors, start_dashboard, stop_service

PLANNER = {"x-api-key": "k-planner"}
TESTIDS = ("login-key", "login-submit", "store-search", "store-list", "forecast-chart", "forecast-table",
           "window-select", "refresh-button", "job-status", "version-label", "error-banner", "download-csv")
UPLOT_VERSION = "1.6.32"


def respond(method: str, path: str, headers: dict[str, str], body: bytes):
    key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    if key == "cookie-setter":  # an upstream that hands out a session cookie
        return 200, {"predictions": []}, {"set-cookie": "session=of-cookie-setter; Path=/"}
    if path.rstrip("/") in ("/jobs", "/jobs/.", "/jobs/.."):  # what a path trick would reach: every job
        return 200, {"jobs": [{"job_id": "someone-elses"}]}, {}
    if key == "wrong":
        return 401, {"error": "missing or wrong API key"}, {"www-authenticate": "Bearer"}
    if key == "limited":
        return 429, {"error": "rate limit of tier planner exceeded"}, {"retry-after": "7", "ratelimit": "limit=5"}
    if path.startswith("/v1/models/storecast:predict"):
        return 200, {"predictions": [], "echo": json.loads(body or b"null")}, {}
    if method == "POST" and path == "/":
        return 202, {"job_id": "j1", "status": "queued"}, {}
    if path == "/jobs/j1":
        return 200, {"job_id": "j1", "status": "running"}, {}
    return 404, {"error": f"no route {path}"}, {}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(respond)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def sales_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sales(synthesize(3, seed=5, start="2015-01-01", end="2015-04-30"),
                       tmp_path_factory.mktemp("dash-sales") / "sales.csv")


@pytest.fixture(scope="module")
def dash(upstream: FakeUpstream, sales_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_dashboard("--api-url", upstream.url, "--retrain-url", upstream.url, "--sales", str(sales_file),
                          "--sales-check-seconds", "0", "--tracking-uri", "",
                          log=tmp_path_factory.mktemp("dash-log") / "dashboard.log")
    yield svc
    stop_service(svc)


def last(upstream: FakeUpstream) -> dict:
    return upstream.requests[-1]


def test_forecast_goes_up_with_the_callers_key_and_nothing_else(dash: Service, upstream: FakeUpstream) -> None:
    body = {"instances": [{"storeId": "4", "beginDate": "2015-08-01", "endDate": "2015-08-07"}]}
    r = httpx.post(f"{dash.url}/api/forecast", json=body, headers={"x-api-key": "k-planner", "cookie": "s=1",
                                                                     "x-storecast-admin": "1"})
    assert r.status_code == 200, r.text
    sent = last(upstream)
    assert sent["method"] == "POST" and sent["path"] == "/v1/models/storecast:predict"
    assert json.loads(sent["body"]) == body
    assert sent["headers"]["x-api-key"] == "k-planner"
    assert "cookie" not in sent["headers"] and "x-storecast-admin" not in sent["headers"]
    assert "authorization" not in sent["headers"]
    httpx.post(f"{dash.url}/api/forecast", json=body, headers={"authorization": "Bearer tok"})
    assert last(upstream)["headers"]["authorization"] == "Bearer tok"
    assert "x-api-key" not in last(upstream)["headers"]


def test_refresh_is_a_retrain_cloudevent(dash: Service, upstream: FakeUpstream) -> None:
    r = httpx.post(f"{dash.url}/api/retrain", json={"store_ids": ["4"]}, headers={"x-api-key": "k-planner"})
    assert r.status_code == 202 and r.json() == {"job_id": "j1", "status": "queued"}
    sent = last(upstream)
    h = sent["headers"]
    assert sent["method"] == "POST" and sent["path"] == "/"
    assert h["ce-type"] == "com.storecast.retrain.requested" and h["ce-specversion"] == "1.0"
    assert h["ce-source"] == "storecast.dashboard" and re.fullmatch(r"[0-9a-f]{32}", h["ce-id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*Z", h["ce-time"])
    assert h["x-api-key"] == "k-planner"
    assert json.loads(sent["body"])["store_ids"] == ["4"]
    ids = {h["ce-id"]}
    httpx.post(f"{dash.url}/api/retrain", json={"store_ids": ["4"]}, headers={"x-api-key": "k-planner"})
    assert last(upstream)["headers"]["ce-id"] not in ids  # every click is a new event


def test_job_status_is_the_retrain_services(dash: Service, upstream: FakeUpstream) -> None:
    r = httpx.get(f"{dash.url}/api/jobs/j1", headers={"x-api-key": "k-planner"})
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert last(upstream)["path"] == "/jobs/j1" and last(upstream)["headers"]["x-api-key"] == "k-planner"
    assert httpx.get(f"{dash.url}/api/jobs/nope", headers=PLANNER).status_code == 404  # the service's own answer
    r = httpx.get(f"{dash.url}/api/jobs/{'x' * 65}", headers=PLANNER)
    assert r.status_code == 400 and "job id" in r.json()["error"]


@pytest.mark.parametrize(("body", "words"), [
    (b"not json", "body: not JSON"),
    (b"[]", "store_ids"),
    (b'{"store_ids": []}', "store_ids: expected a non-empty list"),
    (b'{"store_ids": [""]}', "store_ids[0]"),
    (b'{"store_ids": [true]}', "store_ids[0]"),
    (json.dumps({"store_ids": [str(i) for i in range(21)]}).encode(), "over the limit of 20"),
])
def test_bad_refresh_requests_are_400_naming_the_field(dash: Service, upstream: FakeUpstream, body: bytes,
                                                        words: str) -> None:
    before = len(upstream.requests)
    r = httpx.post(f"{dash.url}/api/retrain", content=body, headers={"content-type": "application/json", **PLANNER})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert len(upstream.requests) == before  # nothing went up


def test_oversized_body_is_413(dash: Service, upstream: FakeUpstream) -> None:
    before = len(upstream.requests)
    r = httpx.post(f"{dash.url}/api/forecast", content=b"{" + b" " * (1 << 20) + b"}")
    assert r.status_code == 413 and "over the limit of 1048576 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: refused as it streams
        for _ in range(20):
            yield b" " * 65536

    r = httpx.post(f"{dash.url}/api/forecast", content=chunks(), headers={"content-type": "application/json",
                                                                          **PLANNER}, timeout=30)
    assert r.status_code == 413, r.text
    assert len(upstream.requests) == before


def test_upstream_refusals_come_back_with_their_headers(dash: Service) -> None:
    r = httpx.post(f"{dash.url}/api/forecast", json={"instances": []}, headers={"x-api-key": "limited"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and r.headers["ratelimit"] == "limit=5"
    r = httpx.post(f"{dash.url}/api/forecast", json={"instances": []}, headers={"x-api-key": "wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "missing or wrong API key"


def test_an_unreachable_upstream_is_502_naming_it(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    svc = start_dashboard("--api-url", closed, "--retrain-url", closed, "--tracking-uri", "",
                          log=tmp_path / "dashboard.log")
    try:
        r = httpx.post(f"{svc.url}/api/forecast", json={"instances": [{"storeId": "1"}]}, headers=PLANNER)
        assert r.status_code == 502 and "forecast service is not reachable" in r.json()["error"]
        r = httpx.post(f"{svc.url}/api/retrain", json={"store_ids": ["1"]}, headers=PLANNER)
        assert r.status_code == 502 and "retrain service is not reachable" in r.json()["error"]
        r = httpx.post(f"{svc.url}/api/session", headers={"x-api-key": "k"})
        assert r.status_code == 502
    finally:
        stop_service(svc)


def test_refresh_without_a_retrain_service_says_so(tmp_path: Path, upstream: FakeUpstream) -> None:
    svc = start_dashboard("--api-url", upstream.url, "--retrain-url", "", "--tracking-uri", "",
                          log=tmp_path / "dashboard.log")
    try:
        assert httpx.get(f"{svc.url}/api/config").json()["refresh"] is False
        r = httpx.post(f"{svc.url}/api/retrain", json={"store_ids": ["1"]})
        assert r.status_code == 503 and "not configured" in r.json()["error"]
    finally:
        stop_service(svc)


def test_own_data_only_for_a_key_the_api_accepts(dash: Service, upstream: FakeUpstream, sales_file: Path) -> None:
    url = f"{dash.url}/api/sales?stores=1,2,99&days=28"
    r = httpx.get(url, headers={"x-api-key": "wrong"})
    assert r.status_code == 401 and r.json() == {"error": "missing or wrong API key"}  # the API's own refusal
    r = httpx.get(url, headers={"x-api-key": "limited"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    before = len(upstream.requests)
    r = httpx.get(url, headers={"x-api-key": "fresh"})  # a key never seen: asked once, with one small forecast
    assert r.status_code == 200, r.text
    probe = upstream.requests[before:]
    assert [(p["path"], p["headers"]["x-api-key"]) for p in probe] == [("/v1/models/storecast:predict", "fresh")]
    assert len(json.loads(probe[0]["body"])["instances"]) == 1
    assert httpx.get(url, headers={"x-api-key": "fresh"}).status_code == 200
    assert len(upstream.requests) == before + 1  # then trusted for --key-ttl-seconds
    answer = r.json()
    assert answer["data_end"] == "2015-04-30" and answer["unknown"] == ["99"]
    df = synthesize(3, seed=5, start="2015-01-01", end="2015-04-30")
    for store in ("1", "2"):
        mine = df[df["Store"].astype(str) == store].tail(28)
        got = answer["stores"][store]
        assert got["dates"] == mine["Date"].dt.strftime("%Y-%m-%d").tolist()
        assert got["sales"] == mine["Sales"].astype(float).tolist()
        assert got["open"] == mine["Open"].astype(int).tolist()
    assert httpx.get(f"{dash.url}/api/sales?stores=1&days=x", headers={"x-api-key": "fresh"}).status_code == 400


def test_a_changed_sales_file_is_read_again(dash: Service, sales_file: Path) -> None:
    httpx.post(f"{dash.url}/api/session", headers={"x-api-key": "fresh"})
    url = f"{dash.url}/api/sales?stores=1&days=7"
    assert httpx.get(url, headers={"x-api-key": "fresh"}).json()["data_end"] == "2015-04-30"
    write_sales(synthesize(3, seed=5, start="2015-01-01", end="2015-05-03"), sales_file)
    assert httpx.get(url, headers={"x-api-key": "fresh"}).json()["data_end"] == "2015-05-03"


def test_appended_actuals_show_at_the_next_reload(dash: Service, sales_file: Path, tmp_path: Path) -> None:
    """Days appended with `storecast data append` (parts beside the base) reach /api/sales: the chart's actuals
    and the last seven days the page's "change against last week" is worked out from."""
    httpx.post(f"{dash.url}/api/session", headers={"x-api-key": "fresh"})
    url = f"{dash.url}/api/sales?stores=1,2,3&days=7"
    before = httpx.get(url, headers={"x-api-key": "fresh"}).json()
    end = np.datetime64(before["data_end"])
    new = pd.DataFrame({"Store": ["1", "2", "3"] * 2, "Date": [str(end + 1)] * 3 + [str(end + 2)] * 3,
                        "Sales": [4001.0, 4002.0, 4003.0, 4101.0, 4102.0, 4103.0], "Open": 1})
    correction = pd.DataFrame({"Store": ["1"], "Date": [str(end)], "Sales": [3999.0], "Open": [1]})
    base = sales_file.read_bytes()
    for i, rows in enumerate((new, correction)):
        write_sales(rows.assign(Date=pd.to_datetime(rows["Date"])), tmp_path / f"day{i}.csv")
        run_cli("data", "append", "--data", str(tmp_path / f"day{i}.csv"), "--sales", str(sales_file), cwd=tmp_path)
    assert len(list(Path(f"{sales_file}.parts").glob("part-*.csv.gz"))) == 2 and sales_file.read_bytes() == base
    after = httpx.get(url, headers={"x-api-key": "fresh"}).json()
    assert after["data_end"] == str(end + 2) and "error" not in after, after
    for k, store in enumerate(("1", "2", "3")):
        got, old = after["stores"][store], before["stores"][store]
        assert got["dates"][-2:] == [str(end + 1), str(end + 2)]
        assert got["sales"][-2:] == [4001.0 + k, 4101.0 + k]
        # the last week the page compares against: the five old days still there, then the two appended
        expected = [*old["sales"][2:], 4001.0 + k, 4101.0 + k]
        if store == "1":
            expected[-3] = 3999.0  # the correction, a later part, wins
        assert got["sales"] == expected and sum(got["sales"]) != sum(old["sales"])


def test_the_page_its_headers_and_the_vendored_chart_library(dash: Service) -> None:
    r = httpx.get(f"{dash.url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for testid in TESTIDS:
        assert f'data-testid="{testid}"' in r.text, testid
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-cache"
    js = httpx.get(f"{dash.url}/vendor/uPlot.iife.min.js", headers={"accept-encoding": "gzip"})
    assert js.headers["content-encoding"] == "gzip"
    assert js.text.startswith(f"/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */")
    assert len(gzip.compress(js.content)) < 30_000  # the reason it was chosen: ~22 KB on the wire
    licence = (REPO / "dashboard" / "static" / "vendor" / "uPlot.LICENSE").read_text()
    assert "MIT License" in licence and "Leon Sorokin" in licence
    assert UPLOT_VERSION in (REPO / "dashboard" / "static" / "vendor" / "README.md").read_text()
    assert httpx.get(f"{dash.url}/api/config").headers["cache-control"] == "no-store"


def test_listens_on_loopback_by_default(dash: Service) -> None:
    assert parse([]).host == "127.0.0.1"
    addresses = {c.laddr.ip for c in psutil.Process(dash.proc.pid).connections("inet") if c.status == "LISTEN"}
    assert addresses == {"127.0.0.1"}


def test_settings_come_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORECAST_DASHBOARD_API_URL", "http://api:1")
    monkeypatch.setenv("STORECAST_DASHBOARD_PORT", "9001")
    s = parse([])
    assert (s.api_url, s.port) == ("http://api:1", 9001)
    assert parse(["--api-url", "http://other:2"]).api_url == "http://other:2"


def test_manifest_is_a_knative_service_through_the_ingress() -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "base" / "dashboard.yaml").read_text()) if d]
    [ksvc] = docs
    assert (ksvc["apiVersion"], ksvc["kind"]) == ("serving.knative.dev/v1", "Service")
    assert schema_errors(ksvc) == []
    broken = json.loads(json.dumps(ksvc))
    broken["spec"]["template"]["spec"]["containers"][0]["port"] = 8080  # misspelt
    assert schema_errors(broken)
    assert "networking.knative.dev/visibility" not in ksvc["metadata"].get("labels", {})
    [container] = ksvc["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "dashboard" and args[args.index("--port") + 1] == "8080"
    assert "dashboard.yaml" in (REPO / "manifests" / "base" / "kustomization.yaml").read_text()
    assert not any("key" in str(e).lower() for e in container.get("env", []))  # it never holds a key


# ---- closed by default: keys, exact proxy paths, no shared cookies, no cross-site requests (issue 23) ----------
def test_every_data_route_needs_a_key(dash: Service, upstream: FakeUpstream) -> None:
    """Without a key: 401 before anything goes upstream, even though this upstream (an open stack's) would
    answer anyone. Only the page, health, the page's config and the sign-in form are open."""
    before = len(upstream.requests)
    for method, path, body in (("GET", "/api/sales?stores=1&days=7", None), ("GET", "/api/model", None),
                               ("GET", "/api/metrics?stores=1", None), ("GET", "/api/jobs/j1", None),
                               ("POST", "/api/forecast", {"instances": [{"storeId": "1"}]}),
                               ("POST", "/api/retrain", {"store_ids": ["1"]}), ("POST", "/api/session", None),
                               ("GET", "/api/sales?stores=1", None)):
        for headers in ({}, {"x-api-key": ""}, {"authorization": "Bearer"}):
            r = httpx.request(method, f"{dash.url}{path}", json=body, headers=headers, timeout=30)
            assert r.status_code == 401 and "sign in first" in r.json()["error"], (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert len(upstream.requests) == before
    for path in ("/", "/healthz", "/api/config", "/js/app.js"):
        assert httpx.get(f"{dash.url}{path}", timeout=30).status_code == 200, path


@pytest.mark.parametrize("path", ["/api/jobs/.", "/api/jobs/..", "/api/jobs/%2e", "/api/jobs/%2E%2e",
                                  "/api/jobs/.%2e", "/api/jobs//", "/api/jobs/", "/api/jobs/%2F",
                                  "/api/jobs/..%2Fjobs", "/api/jobs/j1%2F..%2F..%2Fjobs", "/api/jobs/j1/../..",
                                  "/api/jobs/%00", "/api/jobs/-x", "/api/jobs/j1%3Fa=1"])
def test_only_exact_job_ids_are_proxied(dash: Service, upstream: FakeUpstream, path: str) -> None:
    """Sent as written (http.client normalises nothing): no dot segment, slash or encoded trick reaches another
    upstream path, let alone the list of every job."""
    import http.client

    before = len(upstream.requests)
    conn = http.client.HTTPConnection("127.0.0.1", dash.http_port, timeout=30)
    try:
        conn.request("GET", path, headers={"x-api-key": "k-planner"})
        r = conn.getresponse()
        status, text = r.status, r.read().decode()
    finally:
        conn.close()
    assert status in (400, 404), (status, text)
    assert "someone-elses" not in text and len(upstream.requests) == before, upstream.requests[before:]


def test_a_cookie_one_user_earned_upstream_never_goes_with_another(dash: Service, upstream: FakeUpstream) -> None:
    body = {"instances": [{"storeId": "4"}]}
    r = httpx.post(f"{dash.url}/api/forecast", json=body, headers={"x-api-key": "cookie-setter"}, timeout=30)
    assert r.status_code == 200 and "set-cookie" not in r.headers  # not passed down either
    httpx.post(f"{dash.url}/api/forecast", json=body, headers={"x-api-key": "k-other-planner"}, timeout=30)
    httpx.post(f"{dash.url}/api/retrain", json={"store_ids": ["4"]}, headers={"x-api-key": "k-other"}, timeout=30)
    assert all("cookie" not in sent["headers"] for sent in upstream.requests[-2:]), upstream.requests[-2:]


def test_cross_site_posts_are_refused(dash: Service, upstream: FakeUpstream) -> None:
    """A page of another site can make a browser POST text/plain or a form with its Origin, and a rebound name
    sends its own Host: refused before anything goes upstream. The page's own requests pass."""
    before = len(upstream.requests)
    own = f"http://127.0.0.1:{dash.http_port}"
    cases = [("/api/forecast", {"origin": "https://evil.example", "content-type": "application/json"}, 403),
             ("/api/retrain", {"origin": "null", "content-type": "application/json"}, 403),
             ("/api/session", {"origin": "http://127.0.0.1:1"}, 403),
             ("/api/forecast", {"content-type": "text/plain"}, 415),
             ("/api/retrain", {"content-type": "application/x-www-form-urlencoded"}, 415),
             ("/api/retrain", {"content-type": "multipart/form-data; boundary=x"}, 415),
             ("/api/forecast", {"host": f"evil.example:{dash.http_port}", "origin": f"http://evil.example:"
                                f"{dash.http_port}", "content-type": "application/json"}, 403)]
    for path, headers, status in cases:
        r = httpx.post(f"{dash.url}{path}", content=b'{"store_ids": ["4"], "instances": []}',
                       headers={**PLANNER, **headers}, timeout=30)
        assert r.status_code == status and r.json()["error"], (path, headers, r.text)
    assert len(upstream.requests) == before
    r = httpx.post(f"{dash.url}/api/forecast", json={"instances": []}, headers={**PLANNER, "origin": own}, timeout=30)
    assert r.status_code == 200, r.text
