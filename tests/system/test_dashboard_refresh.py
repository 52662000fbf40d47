"""The dashboard's "Refresh forecast" keeps a store's promotions and closures drawn (issue 21), in a real browser.

Store 2 has, in its next days, a promotion and a holiday closure the planners entered (the calendar the
first version was trained with). A planner signs in with her key, opens the store, presses "Refresh
forecast" and waits until the new version is served and redrawn: the promotion and the closure are still
drawn (the chart's day columns, the legend, the table's notes), and the API serves them for the new version.

Real processes: the session's ``mlflow server``, the champion-following predictor and the transformer
(auth file), the retrain service (auth file; its sales are two weeks newer than the champion's, so the
refresh refits), the dashboard. Chromium is Debian's, driven by Playwright (as tests/dashboard/test_browser.py).
The dashboard shows the days from today (UTC), so the data ends yesterday.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pandas as pd
import pytest

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import CALENDAR_COLUMNS, synthesize_with_calendar
from pipelines.stack import LocalStack
from tests.support import BROWSER_ARGS, CHROMIUM, run_cli, start_dashboard, start_service, stop, stop_service
from tests.system.world import write_auth

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (scripts/system_deps.sh installs it)", allow_module_level=True)

MODEL = "storecast-refresh-drawn"
STORE = "2"
WINDOW = 7  # the page's default: today and the next six days


def pick_days(calendar: pd.DataFrame, first: str, last: str) -> tuple[str, str]:
    """Two days of store 2 in [first, last] it is open (not Sundays): one to promote (one without a promotion when
    the window has one: a week of promotions has none), another (to close)."""
    rows = calendar[(calendar["Store"].astype(str) == STORE) & (calendar["Date"] >= pd.Timestamp(first))
                    & (calendar["Date"] <= pd.Timestamp(last)) & (calendar["Open"] == 1)
                    & (calendar["Date"].dt.dayofweek < 6)]
    unpromoted = rows.loc[rows["Promo"] == 0, "Date"]
    promo = unpromoted.iloc[0] if len(unpromoted) else rows["Date"].iloc[0]
    closed = rows.loc[rows["Date"] != promo, "Date"].iloc[0]
    return promo.strftime("%Y-%m-%d"), closed.strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def stack(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("refresh-drawn")
    today = datetime.now(UTC).date()
    end, cut = today - timedelta(days=1), today - timedelta(days=15)
    sales, ahead = synthesize_with_calendar(4, seed=11, start=str(end - timedelta(days=450)), end=str(end),
                                            calendar_days=42)
    known = sales[sales["Date"] > pd.Timestamp(cut)][list(CALENDAR_COLUMNS)]
    calendar = pd.concat([known, ahead], ignore_index=True)
    promo, closed = pick_days(calendar, str(today + timedelta(days=1)), str(today + timedelta(days=WINDOW - 1)))
    at = calendar["Store"].astype(str) == STORE
    calendar.loc[at & (calendar["Date"] == pd.Timestamp(promo)), "Promo"] = 1
    shut = at & (calendar["Date"] == pd.Timestamp(closed))
    calendar.loc[shut, "Open"] = 0
    calendar.loc[shut, "Promo"] = 0
    calendar.loc[shut, "StateHoliday"] = "a"
    keys = {"planner": f"sc_refresh-planner-{secrets.token_hex(8)}"}
    auth = write_auth(root / "auth.yaml", keys)
    latest = write_sales(sales, root / "latest.csv.gz")
    old = write_sales(sales[sales["Date"] <= pd.Timestamp(cut)], root / "old.csv.gz")
    run_cli("train", "--data", str(old), "--calendar", str(write_sales(calendar, root / "calendar.csv")),
            "--tracking-uri", mlflow_server, "--model-name", MODEL, "--alias", "champion", "--workers", "1",
            "--no-progress", cwd=root)
    serving = retrain = dash = None
    try:
        serving = LocalStack(f"models:/{MODEL}@champion", mlflow_server, log_dir=root / "logs",
                             predictor_args=["--refresh-seconds", "1"],
                             transformer_args=["--auth-file", str(auth), "--watch-seconds", "1"]).start(timeout=180)
        retrain = start_service(latest, mlflow_server, MODEL, root, "--auth-file", str(auth), "--reload-url",
                                serving.predictors[0].url)
        dash = start_dashboard("--api-url", serving.transformer.url, "--retrain-url", retrain.url, "--tracking-uri",
                               mlflow_server, "--registry-model", MODEL, "--sales", str(latest),
                               "--registry-refresh-seconds", "1", log=root / "logs" / "dashboard.log")
        yield SimpleNamespace(serving=serving, dash=dash, registry=mlflow_server, key=keys["planner"], promo=promo,
                              closed=closed, today=str(today))
    finally:
        if dash is not None:
            stop_service(dash)
        if retrain is not None:
            stop(retrain.proc)
        if serving is not None:
            serving.stop()


def champion(registry: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(registry, registry).get_model_version_by_alias(MODEL, "champion").version)


def served(stack: SimpleNamespace) -> tuple[str, dict[str, dict]]:
    """The API's own answer for store 2's window: (version, rows by day)."""
    end = str(pd.Timestamp(stack.today) + pd.Timedelta(days=WINDOW - 1))[:10]
    r = httpx.post(f"{stack.serving.transformer.url}/v1/models/storecast:predict", headers={"x-api-key": stack.key},
                   json={"instances": [{"storeId": STORE, "beginDate": stack.today, "endDate": end}]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json().get("model_version"), {f["timestamp"][:10]: f for f in r.json()["predictions"][0]["forecast"]}


DRAWN = """(el, days) => {
  const u = el.uplot, card = el.closest('.card');
  return {legend: card.querySelector('.legend-extra').textContent, version: el.dataset.version,
    days: days.map((d) => {
      const x = Math.round(u.valToPos(Date.parse(d + 'T00:00:00Z') / 1000 + 0.3 * 86400, 'x', true));
      const pixels = [3, 6, 9].map((dy) => Array.from(u.ctx.getImageData(x, Math.round(u.bbox.top + dy), 1, 1).data));
      const tr = card.querySelector(`table.numbers tbody tr[data-date="${d}"]`);
      return {day: d, pixels, row: tr ? tr.className : null, note: tr ? tr.querySelector('td.note').textContent : null};
    })};
}"""


def promo_column(pixels: list[list[int]]) -> bool:
    """The promotion's amber column (rgba 245,158,11 at 0.22) at the top of the plot, above every line."""
    return all(a > 0 and r > b + 100 for r, _, b, a in pixels)


def closed_column(pixels: list[list[int]]) -> bool:
    """The closed day's grey column (rgba 120,120,120 at 0.16)."""
    return all(a > 0 and abs(r - g) < 12 and abs(g - b) < 12 for r, g, b, a in pixels)


def assert_drawn(page, stack: SimpleNamespace, when: str) -> str:
    """The promotion and the closure of store 2 are drawn (chart columns, legend, table notes); the chart's version."""
    chart = page.locator(f"[data-testid=forecast-chart][data-store='{STORE}']")
    drawn = chart.evaluate(DRAWN, [stack.promo, stack.closed])
    promo, closed = drawn["days"]
    assert promo_column(promo["pixels"]) and "promotion" in (promo["note"] or ""), \
        f"{when}: the promotion on {stack.promo} is not drawn: {promo}"
    assert "closed" in (closed["row"] or "").split() and "closed" in (closed["note"] or ""), \
        f"{when}: the closure on {stack.closed} is not in the table: {closed}"
    assert closed_column(closed["pixels"]), f"{when}: the closure on {stack.closed} is not drawn: {closed}"
    assert "promotion" in drawn["legend"] and "closed" in drawn["legend"], f"{when}: legend {drawn['legend']!r}"
    return drawn["version"]


def test_refresh_keeps_promotions_and_closures_drawn(stack: SimpleNamespace) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        try:
            # 1. sign in with the planner key and open store 2: its promotion and closure are drawn
            page.goto(f"{stack.dash.url}/")
            page.wait_for_selector("body[data-ready]", timeout=60_000)
            page.get_by_test_id("login-key").fill(stack.key)
            page.get_by_test_id("login-submit").click()
            page.get_by_test_id("store-search").fill(STORE)
            page.get_by_test_id("store-search").press("Enter")
            page.wait_for_selector(f"[data-testid=forecast-chart][data-store='{STORE}'][data-points='{WINDOW}']",
                                   timeout=60_000)
            old = champion(stack.registry)
            assert assert_drawn(page, stack, "before the refresh") == old
            # 2. press "Refresh forecast" and wait for the new version to be served and redrawn
            page.locator(f"[data-testid=refresh-button][data-store='{STORE}']").click()
            status = f"[data-testid=job-status][data-store='{STORE}']"
            page.wait_for_selector(f"{status}[data-state=served], {status}[data-state=failed]", timeout=240_000)
            assert page.locator(status).get_attribute("data-state") == "served", page.locator(status).inner_text()
            new = champion(stack.registry)
            assert int(new) > int(old)
            # 3. the new version serves the calendar (the API) and the page still draws it
            version, rows = served(stack)
            assert version == new, (version, new)
            assert rows[stack.promo]["promo"] and not rows[stack.closed]["open"], (rows[stack.promo],
                                                                                  rows[stack.closed])
            assert assert_drawn(page, stack, f"after the refresh (version {new})") == new
            assert errors == [], errors
        finally:
            context.close()
            browser.close()
