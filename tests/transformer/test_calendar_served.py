"""The calendar through the business API with real processes: closed days answered 0, what-ifs, which days came
from the calendar, and a calendar push served by an alias-following predictor without a refit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize_with_calendar
from pipelines.stack import LocalStack
from tests.support import run_cli

END = "2015-07-31"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calendar-served")
    sales, calendar = synthesize_with_calendar(4, seed=5, end=END, calendar_days=21)
    return {"root": root, "sales": write_sales(sales, root / "sales.csv.gz"),
            "calendar": write_sales(calendar, root / "calendar.csv")}


@pytest.fixture(scope="module")
def registry(mlflow_server: str, files: dict[str, Path]) -> str:
    run_cli("train", "--data", str(files["sales"]), "--calendar", str(files["calendar"]), "--tracking-uri",
            mlflow_server, "--model-name", "calsrv", "--alias", "champion", "--workers", "1", "--no-progress",
            cwd=files["root"])
    return mlflow_server


@pytest.fixture(scope="module")
def stack(registry: str, files: dict[str, Path]) -> Iterator[LocalStack]:
    with LocalStack("models:/calsrv@champion", registry, log_dir=files["root"] / "logs",
                    predictor_args=["--refresh-seconds", "1"]) as s:
        yield s


def ask(stack: LocalStack, **instance: object) -> dict:
    r = httpx.post(f"{stack.transformer.url}/v1/models/storecast:predict", timeout=30,
                   content=json.dumps({"instances": [{"storeId": "2", **instance}]}),
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def _rows(p: dict) -> dict[str, dict]:
    return {row["timestamp"][:10]: row for row in p["forecast"]}


def test_rows_carry_the_calendar_and_closed_days_are_zero(stack: LocalStack, files: dict[str, Path]) -> None:
    cal = pd.read_csv(files["calendar"])
    cal = cal[cal["Store"] == 2].set_index("Date")
    rows = _rows(ask(stack, beginDate="2015-08-01", endDate="2015-08-28"))
    for day, row in rows.items():
        if day in cal.index:
            assert row["calendar"] == "calendar"
            assert row["open"] == bool(cal.loc[day, "Open"]) and row["promo"] == bool(cal.loc[day, "Promo"])
            assert row["holiday"] == str(cal.loc[day, "StateHoliday"])
        else:
            assert row["calendar"] == "default" and row["promo"] is False
        if not row["open"]:  # closed by the calendar or, beyond it, by the weekday pattern
            assert row["value"] == row["lower"] == row["upper"] == 0
        if row["open"]:
            assert 0 < row["lower"] < row["value"] < row["upper"]
    assert any(not r["open"] and r["calendar"] == "calendar" for r in rows.values())  # Sundays
    assert any(not r["open"] and r["calendar"] == "default" for r in rows.values())


def test_what_if_promotion_and_closure(stack: LocalStack) -> None:
    base = _rows(ask(stack, beginDate="2015-08-10", endDate="2015-08-14"))
    plain = [d for d, r in base.items() if r["open"] and not r["promo"]]
    assert plain, base
    day = plain[0]
    after = _rows(ask(stack, beginDate="2015-08-10", endDate="2015-08-14", promoDays=[day],
                      closedDays=["2015-08-14"]))
    assert after[day]["promo"] and after[day]["calendar"] == "what-if"
    assert after[day]["value"] > base[day]["value"] * 1.05
    assert after["2015-08-14"]["value"] == 0 and not after["2015-08-14"]["open"]
    r = httpx.post(f"{stack.transformer.url}/v1/models/storecast:predict", timeout=30, json={"instances": [
        {"storeId": "2", "beginDate": "2015-08-10", "endDate": "2015-08-14", "promoDays": ["2015-09-01"]}]})
    assert r.status_code == 400 and "promoDays" in r.json()["error"]


def test_calendar_push_is_served_by_the_alias_following_predictor(stack: LocalStack, registry: str,
                                                                  files: dict[str, Path]) -> None:
    before = _rows(ask(stack, beginDate="2015-08-10", endDate="2015-08-16"))
    day = next(d for d, r in before.items() if r["open"] and not r["promo"])
    cal = pd.read_csv(files["calendar"])
    cal.loc[(cal["Store"] == 2) & (cal["Date"] == day), "Promo"] = 1
    cal.to_csv(files["root"] / "calendar2.csv", index=False)
    t0 = time.perf_counter()
    out = json.loads(run_cli("calendar", "push", "--calendar", str(files["root"] / "calendar2.csv"),
                             "--tracking-uri", registry, "--model-name", "calsrv", "--json",
                             cwd=files["root"]).stdout)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _rows(ask(stack, beginDate="2015-08-10", endDate="2015-08-16"))
        if now[day]["promo"]:
            break
        time.sleep(0.5)
    print(f"calendar push -> served: {time.perf_counter() - t0:.1f} s (version {out['version']})")
    assert now[day]["promo"] and now[day]["calendar"] == "calendar"
    assert now[day]["value"] > before[day]["value"] * 1.05
