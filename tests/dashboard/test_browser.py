"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against the real local stack.

One module-wide stack: a real ``mlflow server``, four synthetic stores trained with the CLI on sales up
to two weeks ago (champion), predictor (alias following, 1 s) and transformer protected by an auth file
as a deployment is (a planner key; no anonymous callers), the retrain service on the latest sales with the
same auth file (store 4 left out, so its refresh fails for a real reason), and the dashboard server. Each
test gets a fresh browser context (empty storage) and fails on any console error or page error it did not
expect. Screenshots go to build/dashboard/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import LocalStack, Service, free_port, wait_ready
from serving.access.auth_file import hash_key
from tests.support import BROWSER_ARGS, CHROMIUM, REPO, FakeUpstream, run_cli, start_dashboard, stop_service

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (scripts/system_deps.sh installs it)", allow_module_level=True)

MODEL = "dashtest"
KEY = "planner-" + secrets.token_hex(8)
HISTORY = 28
SHOTS = REPO / "build" / "dashboard"


# ---------------------------------------------------------------------------------------------
# The stack


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("dash-browser")
    end = datetime.now(UTC).date() - timedelta(days=1)
    cut = end - timedelta(days=14)
    sales = synthesize(4, seed=11, start=str(end - timedelta(days=450)), end=str(end))
    return SimpleNamespace(
        root=root, end=str(end),
        latest=write_sales(sales, root / "latest.csv.gz"),
        old=write_sales(sales[sales["Date"] <= str(cut)], root / "old.csv.gz"),
        retrain=write_sales(sales[sales["Store"].astype(str) != "4"], root / "retrain.csv.gz"))


@pytest.fixture(scope="module")
def stack(mlflow_server: str, data: SimpleNamespace) -> Iterator[SimpleNamespace]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    port = free_port()
    (data.root / "logs").mkdir()
    log = data.root / "logs" / "retrain.log"
    auth = data.root / "auth.yaml"  # the planner's key; callers without one are refused
    auth.write_text("tiers:\n  planner: {requests_per_second: null, concurrent: null, "
                    "permissions: [forecast, refresh]}\n"
                    f"identities:\n  - {{name: planner, tier: planner, key_sha256: \"{hash_key(KEY)}\"}}\n")
    # started first: its imports overlap the training
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "--data", str(data.retrain), "--port",
                             str(port), "--host", "127.0.0.1", "--model-name", MODEL, "--auth-file", str(auth)],
                            env=env, cwd=data.root, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    retrain, serving, dash = Service("retrain", proc, port, log=log), None, None
    try:
        run_cli("train", "--data", str(data.old), "--tracking-uri", mlflow_server, "--model-name", MODEL, "--alias",
                "champion", "--workers", "1", "--no-progress", cwd=data.root)
        serving = LocalStack(f"models:/{MODEL}@champion", mlflow_server, log_dir=data.root / "logs",
                             predictor_args=["--refresh-seconds", "1"], auth_file=auth).start()
        wait_ready(f"{retrain.url}/healthz", retrain, 120)
        dash = start_dashboard("--api-url", serving.transformer.url, "--retrain-url", retrain.url, "--tracking-uri",
                               mlflow_server, "--registry-model", MODEL, "--sales", str(data.latest),
                               "--registry-refresh-seconds", "1", log=data.root / "logs" / "dashboard.log")
        yield SimpleNamespace(serving=serving, retrain=retrain, dash=dash, registry=mlflow_server)
    finally:
        if dash is not None:
            stop_service(dash)
        stop_service(retrain)
        if serving is not None:
            serving.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


class Planner:
    """One browser tab on the dashboard, with what its console said."""

    def __init__(self, browser: object, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.url = url
        self.console: list[str] = []
        self.responses: list[tuple[str, int, str]] = []
        self.page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        self.page.on("response", self._response)

    def _response(self, r: object) -> None:
        if "/api/" in r.url:
            try:
                self.responses.append((r.url, r.status, r.text()))
            except Exception:  # a body that was not kept (redirects)
                self.responses.append((r.url, r.status, ""))

    def open(self) -> Planner:
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready]")
        return self

    def sign_in(self, key: str = KEY) -> Planner:
        self.page.get_by_test_id("login-key").fill(key)
        self.page.get_by_test_id("login-submit").click()
        return self

    def add(self, text: str) -> Planner:
        self.page.get_by_test_id("store-search").fill(text)
        self.page.get_by_test_id("store-search").press("Enter")
        return self

    def chart(self, store: str):
        return self.page.locator(f"[data-testid=forecast-chart][data-store='{store}']")

    def wait_points(self, store: str, points: int, timeout: float = 30_000) -> None:
        self.page.wait_for_selector(f"[data-testid=forecast-chart][data-store='{store}'][data-points='{points}']",
                                    timeout=timeout)

    def chart_data(self, store: str) -> dict:
        return self.chart(store).evaluate("""el => ({x: el.uplot.data[0], actual: el.uplot.data[1],
            then: el.uplot.data[2], forecast: el.uplot.data[3], lower: el.uplot.data[4], upper: el.uplot.data[5],
            bands: el.uplot.bands.map(b => b.series), labels: el.uplot.series.map(s => s.label),
            version: el.dataset.version})""")

    def banner(self) -> tuple[str, str]:
        banner = self.page.get_by_test_id("error-banner")
        banner.wait_for(state="visible", timeout=30_000)
        return banner.inner_text(), banner.get_attribute("data-status")

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def errors(self, *allowed_status: int) -> list[str]:
        """Console errors, less the browser's own line for each expected HTTP error status."""
        ok = [f"status of {s}" for s in allowed_status]
        return [m for m in self.console if not any(o in m for o in ok)]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def planner(browser: object, stack: SimpleNamespace) -> Iterator[Planner]:
    p = Planner(browser, f"{stack.dash.url}/")
    yield p
    p.close()


# ---------------------------------------------------------------------------------------------
# What the API says, asked directly


def window(days: int) -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return str(today - timedelta(days=HISTORY)), str(today + timedelta(days=days - 1))


def api_rows(stack: SimpleNamespace, stores: list[str], days: int) -> dict[str, list[dict]]:
    begin, end = window(days)
    r = httpx.post(f"{stack.serving.transformer.url}/v1/models/storecast:predict", headers={"x-api-key": KEY},
                   json={"instances": [{"storeId": s, "beginDate": begin, "endDate": end} for s in stores]}, timeout=30)
    assert r.status_code == 200, r.text
    return {p["request"]["store_id"]: p["forecast"] for p in r.json()["predictions"]}


def champion(stack: SimpleNamespace) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(stack.registry, stack.registry).get_model_version_by_alias(MODEL, "champion").version)


def store_metrics(stack: SimpleNamespace, version: str) -> dict[str, dict]:
    from pipelines.versions.registry import download

    with tempfile.TemporaryDirectory() as tmp:
        path = download(f"models:/{MODEL}/{version}", tmp, "store_metrics.csv", stack.registry)
        return {row["store_id"]: row for row in csv.DictReader(path.open())}


def today_index(rows: list[dict]) -> int:
    return HISTORY  # the first HISTORY rows are the past window


# ---------------------------------------------------------------------------------------------
# Tests


def test_sign_in_three_stores_chart_points_band_table_fleet(planner: Planner, stack: SimpleNamespace) -> None:
    planner.open().sign_in().add("1, 2, 3")
    for s in ("1", "2", "3"):
        planner.wait_points(s, 7)
    page = planner.page
    assert page.get_by_test_id("store-list").locator("li").evaluate_all("els => els.map(e => e.dataset.store)") \
        == ["1", "2", "3"]
    expected = api_rows(stack, ["1", "2", "3"], 7)
    for s in ("1", "2", "3"):
        rows, d = expected[s], planner.chart_data(s)
        assert len(d["x"]) == HISTORY + 7 == len(rows)
        future = rows[HISTORY:]
        closed = [i for i, r in enumerate(future) if not r["open"]]
        assert closed and all(future[i]["value"] == future[i]["lower"] == future[i]["upper"] == 0 for i in closed)
        # the API's numbers, a closed day drawn at 0 as it is answered (and shaded)
        assert d["forecast"][HISTORY:] == [r["value"] for r in future]
        assert d["lower"][HISTORY:] == [r["lower"] for r in future]
        assert d["upper"][HISTORY:] == [r["upper"] for r in future]
        assert all(v is None for v in d["forecast"][:HISTORY])  # the past is drawn as "forecast then"
        assert d["then"][:HISTORY] == [r["value"] for r in rows[:HISTORY]]
        assert sum(v is not None for v in d["actual"]) >= 20  # four weeks of actual sales
        assert d["bands"] == [[5, 4]] and d["labels"][4:] == ["lower", "upper"]
        assert planner.chart(s).get_attribute("data-band-points") == str(len(future))
        assert band_is_painted(planner, s, future)
        table = page.locator(f"[data-testid=forecast-table][data-store='{s}'] tbody tr")
        assert table.count() == HISTORY + 7
        for i in closed:  # date, day, actual, forecast, lower, upper, notes
            cells = table.nth(HISTORY + i).locator("td").all_text_contents()  # the table may be folded
            assert cells[3:6] == ["0", "0", "0"] and "closed" in cells[6], cells
    # the fleet view ranks by the forecast demand of the next days
    demand = {s: sum(r["value"] for r in expected[s][HISTORY:] if r["open"]) for s in expected}
    ranked = page.locator("[data-testid=fleet-demand] li").evaluate_all("els => els.map(e => e.dataset.store)")
    assert ranked == sorted(demand, key=lambda s: -demand[s])
    assert page.locator("[data-testid=fleet-change] li").count() == 3
    # model version, data end, holdout accuracy
    version = champion(stack)
    label = page.get_by_test_id("version-label")
    assert f"model version {version}" in label.inner_text()
    metrics = store_metrics(stack, version)
    accuracy = page.locator("[data-testid=store-accuracy][data-store='2']").inner_text()
    assert f"holdout WAPE {100 * float(metrics['2']['wape']):.1f}%" in accuracy
    assert f"data to {metrics['2']['last_date']}" in accuracy
    # the list is kept per browser
    assert json.loads(page.evaluate("localStorage.getItem('storecast.stores')")) == ["1", "2", "3"]
    page.reload()
    planner.wait_points("3", 7)
    planner.shot("three-stores")
    assert planner.errors() == []


def band_is_painted(planner: Planner, store: str, future: list[dict]) -> bool:
    """The canvas is band-coloured between the lower bound and the forecast, midway between two open days."""
    pairs = [i for i in range(len(future) - 1) if future[i]["open"] and future[i + 1]["open"]
             and not future[i].get("promo") and not future[i + 1].get("promo")]
    assert pairs, "no two neighbouring open days to look between"
    i = HISTORY + pairs[0]
    rgb = planner.chart(store).evaluate("""(el, i) => {
        const u = el.uplot, d = u.data;
        const x = (u.valToPos(d[0][i], 'x', true) + u.valToPos(d[0][i + 1], 'x', true)) / 2;
        const lo = (d[4][i] + d[4][i + 1]) / 2, mid = (d[3][i] + d[3][i + 1]) / 2;
        const y = (u.valToPos(lo, 'y', true) + u.valToPos(mid, 'y', true)) / 2;
        return Array.from(u.ctx.getImageData(Math.round(x), Math.round(y), 1, 1).data);
    }""", i)
    r, _, b, _ = rgb
    return b > r + 12 and b < 250  # the band's light blue, not white and not the line


def test_switching_the_window(planner: Planner, stack: SimpleNamespace) -> None:
    planner.open().sign_in().add("2")
    planner.wait_points("2", 7)
    for days in (14, 42):
        planner.page.get_by_test_id("window-select").select_option(str(days))
        planner.wait_points("2", days)
        rows = api_rows(stack, ["2"], days)["2"]
        assert planner.chart_data("2")["forecast"][HISTORY:] == [r["value"] for r in rows[HISTORY:]]
        assert planner.page.locator("[data-testid=forecast-table][data-store='2'] tbody tr").count() \
            == HISTORY + days
    assert planner.page.evaluate("localStorage.getItem('storecast.window')") == "42"
    planner.shot("window-42")
    assert planner.errors() == []


def test_csv_rows_equal_the_api_answer(planner: Planner, stack: SimpleNamespace) -> None:
    planner.open().sign_in().add("1 3")
    planner.page.get_by_test_id("window-select").select_option("14")
    planner.wait_points("1", 14)
    planner.wait_points("3", 14)
    with planner.page.expect_download() as info:
        planner.page.get_by_test_id("download-csv").click()
    text = Path(info.value.path()).read_text()
    got = list(csv.DictReader(io.StringIO(text)))
    expected = api_rows(stack, ["1", "3"], 14)
    want = [(s, r) for s in ("1", "3") for r in expected[s]]
    assert len(got) == len(want) == 2 * (HISTORY + 14)
    for row, (store, r) in zip(got, want, strict=True):
        assert (row["store_id"], row["date"]) == (store, r["timestamp"][:10])
        numbers = (float(row["forecast"]), float(row["lower"]), float(row["upper"]))
        assert numbers == (r["value"], r["lower"], r["upper"])
        assert row["open"] == str(r["open"]).lower()
        if not r["open"]:  # closed: 0, as the API answers it
            assert numbers == (0.0, 0.0, 0.0)
        assert row["kind"] == ("past" if row["date"] < str(datetime.now(UTC).date()) else "forecast")
    assert any(row["actual"] for row in got if row["kind"] == "past")
    assert any(row["open"] == "false" and row["kind"] == "forecast" for row in got)
    assert planner.errors() == []


def test_a_refresh_lands_and_then_is_up_to_date(planner: Planner, stack: SimpleNamespace) -> None:
    planner.open().sign_in().add("1")
    planner.wait_points("1", 7)
    before, old_version = planner.chart_data("1"), champion(stack)
    status = planner.page.locator("[data-testid=job-status][data-store='1']")
    status.evaluate("""el => { window.__states = [];
        new MutationObserver(() => { const s = el.dataset.state;
            if (window.__states[window.__states.length - 1] !== s) window.__states.push(s); })
        .observe(el, {attributes: true, attributeFilter: ['data-state']}); }""")
    planner.page.locator("[data-testid=refresh-button][data-store='1']").click()
    planner.page.wait_for_selector("[data-testid=job-status][data-store='1'][data-state=served], "
                                   "[data-testid=job-status][data-store='1'][data-state=failed]", timeout=120_000)
    assert status.get_attribute("data-state") == "served", status.inner_text()
    states = planner.page.evaluate("window.__states")
    assert states[0] == "queued" and states[-2:] == ["registered", "served"], states
    new_version = champion(stack)
    assert int(new_version) > int(old_version)
    assert f"version {new_version}" in status.inner_text()
    after, rows = planner.chart_data("1"), api_rows(stack, ["1"], 7)["1"]
    assert after["forecast"][HISTORY:] == [r["value"] for r in rows[HISTORY:]]
    assert after["forecast"] != before["forecast"]
    assert f"model version {new_version}" in planner.page.get_by_test_id("version-label").inner_text()
    print(f"\nrefresh click -> new forecast drawn: {status.get_attribute('data-seconds')} s (4 stores)")
    planner.shot("refresh-served")
    planner.page.locator("[data-testid=refresh-button][data-store='1']").click()
    planner.page.wait_for_selector("[data-testid=job-status][data-store='1'][data-state=up_to_date]", timeout=60_000)
    assert "up to date" in status.inner_text()
    assert planner.errors() == []


def test_a_failed_refresh_shows_the_reason(planner: Planner, stack: SimpleNamespace) -> None:
    planner.open().sign_in().add("4")
    planner.wait_points("4", 7)
    planner.page.locator("[data-testid=refresh-button][data-store='4']").click()
    status = planner.page.locator("[data-testid=job-status][data-store='4']")
    planner.page.wait_for_selector("[data-testid=job-status][data-store='4'][data-state=failed]", timeout=120_000)
    answers = [json.loads(body) for url, _, body in planner.responses if ("/api/jobs/" in url or "/api/retrain" in url)
               and body]
    reason = answers[-1].get("error")
    assert reason and "4" in reason, answers[-1]
    assert status.inner_text() == f"refresh failed: {reason}"
    planner.shot("refresh-failed")
    assert planner.errors(*{s for _, s, _ in planner.responses if s >= 400}) == []


def test_a_wrong_key_is_refused(planner: Planner) -> None:
    planner.open().sign_in("not-" + KEY)
    text, status = planner.banner()
    assert status == "401" and "key was not accepted" in text
    assert planner.page.get_by_test_id("login-key").is_visible()
    assert not planner.page.locator("#main").is_visible()
    planner.shot("wrong-key")
    assert planner.errors(401) == []


def test_an_unknown_store_is_named(planner: Planner) -> None:
    planner.open().sign_in().add("1, 4242")
    text, status = planner.banner()
    assert status == "400" and "4242" in text
    planner.wait_points("1", 7)  # the known store is still shown
    assert planner.page.locator("[data-testid=store-list] li[data-store='4242']").get_attribute("class") == "bad"
    planner.shot("unknown-store")
    assert planner.errors(400) == []


def test_the_api_down_is_explained(browser: object, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    dash = start_dashboard("--api-url", closed, "--tracking-uri", "", log=tmp_path / "dashboard.log")
    p = Planner(browser, f"{dash.url}/")
    try:
        p.open().sign_in()
        text, status = p.banner()
        assert status == "502" and "forecast service is not available right now" in text
        p.shot("api-down")
        assert p.errors(502) == []
    finally:
        p.close()
        stop_service(dash)


def test_rate_limited_shows_the_wait(browser: object, tmp_path: Path) -> None:
    """A fake upstream: the key passes the door, every forecast after that is refused with 429."""
    calls = {"n": 0}

    def respond(method: str, path: str, headers: dict[str, str], body: bytes):
        calls["n"] += 1
        if calls["n"] == 1:  # the sign-in probe
            return 200, {"predictions": [{"request": {}, "forecast": []}]}, {}
        return 429, {"error": "rate limit exceeded for identity planner-1"}, {"retry-after": "7"}

    fake = FakeUpstream(respond)
    dash = start_dashboard("--api-url", fake.url, "--tracking-uri", "", log=tmp_path / "dashboard.log")
    p = Planner(browser, f"{dash.url}/")
    try:
        p.open().sign_in().add("1")
        text, status = p.banner()
        assert status == "429" and "wait 7 s" in text
        assert fake.requests[-1]["headers"]["x-api-key"] == KEY
        p.shot("rate-limited")
        assert p.errors(429) == []
    finally:
        p.close()
        stop_service(dash)
        fake.close()


def test_page_weight_and_time_to_first_chart(browser: object, stack: SimpleNamespace, data: SimpleNamespace,
                                            tmp_path: Path) -> None:
    """A planner coming back (stores saved, key in the tab) to a dashboard process that never saw the key.

    Measured, not asserted (beyond a size budget): written to build/dashboard/metrics.json."""
    dash = start_dashboard("--api-url", stack.serving.transformer.url, "--retrain-url", stack.retrain.url,
                           "--tracking-uri", stack.registry, "--registry-model", MODEL, "--sales", str(data.latest),
                           log=tmp_path / "dashboard.log")
    planner = Planner(browser, f"{dash.url}/")
    try:
        planner.context.add_init_script(f"sessionStorage.setItem('storecast.key', {json.dumps(KEY)});"
                                        "localStorage.setItem('storecast.stores', '[\"1\",\"2\",\"3\"]');")
        planner.open()
        for s in ("1", "2", "3"):
            planner.wait_points(s, 7)
        m = planner.page.evaluate("""() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const res = performance.getEntriesByType('resource');
            const first = performance.getEntriesByName('first-chart')[0];
            const statics = res.filter(r => !r.name.includes('/api/'));
            return {transfer_bytes: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
                    static_bytes: nav.transferSize + statics.reduce((a, r) => a + r.transferSize, 0),
                    decoded_bytes: nav.decodedBodySize + res.reduce((a, r) => a + r.decodedBodySize, 0),
                    requests: 1 + res.length, first_chart_ms: first ? first.startTime : null};
        }""")
        assert m["first_chart_ms"] is not None
        assert m["static_bytes"] < 120_000, m  # the budget: the page and its chart library, compressed
        assert "model version" in planner.page.get_by_test_id("version-label").inner_text()
        assert planner.page.get_by_test_id("error-banner").is_hidden()
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / "metrics.json").write_text(json.dumps(m, indent=2))
        print(f"\npage: {m['requests']} requests, {m['transfer_bytes'] / 1024:.1f} KB transferred "
              f"({m['static_bytes'] / 1024:.1f} KB static), first chart after {m['first_chart_ms']:.0f} ms")
        assert planner.errors() == []
    finally:
        planner.close()
        stop_service(dash)


def what_if_rows(stack: SimpleNamespace, store: str, days: int, promo: list[str], closed: list[str]) -> list[dict]:
    """The business API's what-if answer for the shown future days of ``store``."""
    today = datetime.now(UTC).date()
    inst = {"storeId": store, "beginDate": str(today), "endDate": str(today + timedelta(days=days - 1)),
            "promoDays": promo, "closedDays": closed}
    r = httpx.post(f"{stack.serving.transformer.url}/v1/models/storecast:predict", headers={"x-api-key": KEY},
                   json={"instances": [inst]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["forecast"]


def test_a_what_if_promotion_and_closure_change_the_shown_numbers(planner: Planner, stack: SimpleNamespace) -> None:
    planner.open().sign_in().add("2")
    planner.wait_points("2", 7)
    page = planner.page
    base = api_rows(stack, ["2"], 7)["2"][HISTORY:]
    open_days = [r["timestamp"][:10] for r in base if r["open"] and not r.get("promo")]
    promo_day, closed_day = open_days[0], open_days[1]
    result = page.locator("[data-testid=whatif-result][data-store='2']")
    assert result.is_hidden()
    tried: dict[str, list[str]] = {"promo": [], "closed": []}
    for kind, day in (("promo", promo_day), ("closed", closed_day)):
        page.locator("[data-testid=whatif-kind][data-store='2']").select_option(kind)
        page.locator("[data-testid=whatif-day][data-store='2']").select_option(day)
        page.locator("[data-testid=whatif-apply][data-store='2']").click()
        tried[kind].append(day)
        page.wait_for_selector(f"[data-testid=whatif-result][data-store='2'][data-changed*='{day}']", timeout=30_000)
        want = what_if_rows(stack, "2", 7, tried["promo"], tried["closed"])
        d = planner.chart_data("2")
        shown = planner.chart("2").evaluate("el => el.uplot.data[6]")
        assert d["labels"][6:] == ["what-if"]
        assert shown[HISTORY:] == [r["value"] for r in want]  # the API's what-if, drawn beside ...
        assert d["forecast"][HISTORY:] == [r["value"] for r in base]  # ... the unchanged baseline
        diff = sum(r["value"] for r in want) - sum(r["value"] for r in base)
        assert float(result.get_attribute("data-diff")) == pytest.approx(diff)
        changed = [b["timestamp"][:10] for b, w in zip(base, want, strict=True) if w["value"] != b["value"]]
        assert result.get_attribute("data-changed") == ",".join(changed) and day in changed
    by_day = {r["timestamp"][:10]: r for r in want}
    assert by_day[closed_day]["value"] == 0 and by_day[closed_day]["calendar"] == "what-if"
    assert by_day[promo_day]["promo"] is True
    text = result.inner_text()
    assert "promotion on" in text and promo_day in text and "closed on" in text and closed_day in text
    cells = page.locator(f"[data-testid=forecast-table][data-store='2'] tr[data-date='{closed_day}'] td")
    assert cells.all_text_contents()[-1] == "0"  # the table's what-if column
    planner.shot("what-if")
    page.locator("[data-testid=whatif-clear][data-store='2']").click()
    assert result.is_hidden() and planner.chart_data("2")["labels"][4:] == ["lower", "upper"]
    assert planner.errors() == []


def no_side_scroll(page: object) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")


def test_a_phone_width_screen(planner: Planner) -> None:
    """375 px wide: no horizontal scroll (sign-in, three cards, the fleet view, an open table, a what-if), every
    control inside the screen; the charts follow the width both ways. The two buttons say what they do."""
    page = planner.page
    page.set_viewport_size({"width": 375, "height": 740})
    planner.open()
    assert no_side_scroll(page)
    planner.sign_in().add("1, 2, 3")
    for s in ("1", "2", "3"):
        planner.wait_points(s, 7)
    assert page.get_by_test_id("fleet-view").is_visible()
    assert no_side_scroll(page), page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    controls = [page.get_by_test_id(t) for t in ("store-search", "window-select", "reload-data", "download-csv")]
    controls += [page.locator(f"[data-testid={t}][data-store='1']")
                 for t in ("refresh-button", "whatif-kind", "whatif-day", "whatif-apply", "forecast-chart")]
    for c in controls:
        box = c.bounding_box()
        assert c.is_visible() and box and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
    assert all(w <= 375 for w in page.locator("[data-testid=forecast-chart]").evaluate_all(
        "els => els.map(e => e.uplot.width)"))
    page.locator("[data-testid=forecast-table][data-store='1']").locator("xpath=..").locator("summary").click()
    page.locator("[data-testid=whatif-apply][data-store='1']").click()
    page.locator("[data-testid=whatif-result][data-store='1']").wait_for(state="visible")
    assert no_side_scroll(page)
    planner.shot("phone")
    # the two buttons: reloading the page's data (the bar) and refitting one store (its card)
    reload, retrain = page.get_by_test_id("reload-data"), page.locator("[data-testid=refresh-button][data-store='1']")
    assert reload.inner_text() == "Reload data" and "nothing is retrained" in reload.get_attribute("title")
    assert retrain.inner_text() == "Retrain this store" and "retrain service" in retrain.get_attribute("title")
    assert page.locator(".controls #reload").count() == 1 and page.locator(".card .controls").count() == 0
    # wider, then narrow again: the charts follow
    page.set_viewport_size({"width": 1200, "height": 900})
    page.wait_for_function("() => document.querySelector('[data-testid=forecast-chart]').uplot.width > 800")
    page.set_viewport_size({"width": 375, "height": 740})
    page.wait_for_function("() => document.querySelector('[data-testid=forecast-chart]').uplot.width <= 375")
    assert no_side_scroll(page)
    assert planner.errors() == []


def test_a_predictor_down_is_explained(planner: Planner, stack: SimpleNamespace) -> None:
    """Runs last: it stops the predictor; the transformer answers 503 naming the shard."""
    planner.open().sign_in().add("2")
    planner.wait_points("2", 7)
    predictor = stack.serving.predictors[0]
    predictor.proc.kill()
    predictor.proc.wait(timeout=10)
    planner.page.locator("#reload").click()
    text, status = planner.banner()
    assert status == "503" and "not available right now (HTTP 503)" in text and "shard" in text
    planner.shot("predictor-down")
    assert planner.errors(503) == []
