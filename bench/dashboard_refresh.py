"""The planner's refresh, timed in a real browser: click "Refresh forecast" -> the new forecast is drawn.

On the local stack with every Rossmann store (1,115 synthetic stores without the real data): the
champion is trained on sales up to two weeks before the end; the retrain service reads the latest
sales; the predictor follows the alias (``--refresh-seconds``); the dashboard serves the page. Headless
Chromium signs in, shows one store, clicks its refresh button; the page measures from the click until
it has drawn the forecast of the new version (its ``job-status`` says so). Also measured: what the
first visit transfers and the time to the first chart (three stores, the key already in the tab).

    python bench/dashboard_refresh.py [--refresh-seconds 2] [--stores N] [--store 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.data.sales_csv import read_sales, write_sales  # noqa: E402
from pipelines.data.synth import synthesize  # noqa: E402
from pipelines.stack import LocalStack, Service, free_port, wait_ready  # noqa: E402
from tests.support import BROWSER_ARGS, CHROMIUM, shared_rossmann  # noqa: E402

KEY = "bench-planner-key"


def browse(url: str, store: str, asof: str, trio: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        # first visit: a planner with a saved list of three stores, key already given in this tab
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        ctx.add_init_script(f"sessionStorage.setItem('storecast.key', {json.dumps(KEY)});"
                            f"localStorage.setItem('storecast.stores', {json.dumps(json.dumps(trio))});")
        page = ctx.new_page()
        page.goto(f"{url}/?asof={asof}")
        for s in trio:
            page.wait_for_selector(f"[data-testid=forecast-chart][data-store='{s}'][data-points]", timeout=60_000)
        first = page.evaluate("""() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const res = performance.getEntriesByType('resource');
            const statics = res.filter(r => !r.name.includes('/api/'));
            return {transfer: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
                    static: nav.transferSize + statics.reduce((a, r) => a + r.transferSize, 0),
                    requests: 1 + res.length,
                    first_chart_ms: performance.getEntriesByName('first-chart')[0].startTime};
        }""")
        ctx.close()
        # the refresh: sign in, one store, click
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        page = ctx.new_page()
        page.goto(f"{url}/?asof={asof}")
        page.get_by_test_id("login-key").fill(KEY)
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("store-search").fill(store)
        page.get_by_test_id("store-search").press("Enter")
        page.wait_for_selector(f"[data-testid=forecast-chart][data-store='{store}'][data-points]", timeout=60_000)
        t0 = time.perf_counter()
        page.locator(f"[data-testid=refresh-button][data-store='{store}']").click()
        status = page.locator(f"[data-testid=job-status][data-store='{store}']")
        seen = []
        while time.perf_counter() - t0 < 300:
            state = status.get_attribute("data-state")
            if not seen or seen[-1][0] != state:
                seen.append((state, round(time.perf_counter() - t0, 2)))
            if state in ("served", "failed", "up_to_date"):
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        result = {"first": first, "states": seen, "text": status.inner_text(), "wall": wall,
                  "page_seconds": float(status.get_attribute("data-seconds") or "nan")}
        browser.close()
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refresh-seconds", type=float, default=2.0)
    p.add_argument("--stores", type=int, default=0, help="0: every store of the data")
    p.add_argument("--store", default="4")
    args = p.parse_args()
    real = shared_rossmann()
    sales = read_sales(real) if real else synthesize(args.stores or 1115, seed=1).astype({"Store": str})
    if args.stores:
        sales = sales[sales["Store"].isin(sorted(sales["Store"].unique(), key=int)[: args.stores])]
    n_stores = sales["Store"].nunique()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        end = sales["Date"].max()
        cut = end - pd.Timedelta(days=14)
        write_sales(sales[sales["Date"] <= cut], root / "old.csv.gz")
        latest = write_sales(sales, root / "latest.csv.gz")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        storecast = str(Path(sys.executable).parent / "storecast")
        t = time.perf_counter()
        subprocess.run([storecast, "train", "--data", str(root / "old.csv.gz"), "--alias", "champion",
                        "--no-progress", "--json"], env=env, cwd=root, check=True, capture_output=True)
        print(f"trained {n_stores} stores in {time.perf_counter() - t:.0f} s", flush=True)
        port = free_port()
        log = root / "retrain.log"
        svc = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "--data", str(latest), "--port", str(port),
                                "--host", "127.0.0.1"], env=env, cwd=root, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
        os.environ["STORECAST_API_KEY"] = KEY  # the business API's key, for the stack's processes
        stack = LocalStack("models:/storecast@champion", uri, log_dir=root / "logs",
                           predictor_args=["--refresh-seconds", str(args.refresh_seconds)],
                           dashboard_args=["--retrain-url", f"http://127.0.0.1:{port}", "--sales", str(latest),
                                           "--registry-refresh-seconds", "5"])
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz", Service("retrain", svc, port, log=log), 180)
            stack.start(timeout=300)
            asof = str((end + pd.Timedelta(days=1)).date())
            r = browse(stack.dashboard.url, args.store, asof, ["1", "2", args.store])
        finally:
            stack.stop()
            svc.terminate()
            svc.wait(timeout=15)
    f = r["first"]
    print(f"| dashboard ({n_stores} stores in the version, one refitted, predictor refresh {args.refresh_seconds:g} s)"
          " | value |")
    print("|---|---:|")
    print(f"| click -> new forecast drawn (measured in the page) | {r['page_seconds']:.1f} s |")
    print(f"| click -> new forecast drawn (measured by the driver) | {r['wall']:.1f} s |")
    print(f"| job states seen (state, s after the click) | {r['states']} |")
    print(f"| first visit: requests, transferred (static part) | {f['requests']}, {f['transfer'] / 1024:.1f} KB "
          f"({f['static'] / 1024:.1f} KB) |")
    print(f"| first visit: time to the first chart (3 stores) | {f['first_chart_ms']:.0f} ms |")
    print(r["text"])
    print(f"RESULT | dashboard: refresh click -> new forecast drawn, one store ({n_stores} stores, refresh "
          f"{args.refresh_seconds:g} s) | {r['page_seconds']:.1f} s | the story's 5 min | goal <= 15 s |")
    print(f"RESULT | dashboard: first visit, 3 stores (page + uPlot + data) | {f['transfer'] / 1024:.0f} KB, "
          f"first chart {f['first_chart_ms']:.0f} ms | static part {f['static'] / 1024:.0f} KB | |")


if __name__ == "__main__":
    main()
