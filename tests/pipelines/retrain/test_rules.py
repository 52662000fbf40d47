"""Who may move what, against a real retrain service process with an auth file (not a dry run).

- a planner's refreshes are bounded per identity per UTC day (429 + Retry-After naming the limit), the
  count kept in the job store across a restart; identities that may ``retrain`` are not bounded;
- events are de-duplicated per authenticated sender: another identity cannot take over an event id;
- anything fleet-sized goes to the challenger, even with ``--promote champion`` and a service's key;
- sales rows of stores the champion does not hold are refused, naming them, unless the service runs
  with ``--keep-unknown-stores`` (here: its variable ``STORECAST_KEEP_UNKNOWN_STORES``).

The champion holds every store's latest data, so refreshes are answered "up to date" without a fit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipelines.data.sales_csv import write_sales
from pipelines.data.sales_store import SalesStore
from pipelines.data.synth import synthesize
from tests.support import FINISHED, alias, log_tail, planner_service_auth, send, start_service, stop, train

MODEL = "storecast-rules"
KEYS = {"planner-a": "sc_rules-planner-a", "planner-b": "sc_rules-planner-b", "svc": "sc_rules-service"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("rules")
    sales = write_sales(synthesize(4, seed=41), root / "sales.csv.gz")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first = train(sales, uri, MODEL, root)
    auth = planner_service_auth(root / "auth.yaml", {"planner-a": ("planner", KEYS["planner-a"]),
                                                     "planner-b": ("planner", KEYS["planner-b"]),
                                                     "svc": ("service", KEYS["svc"])})
    state: dict = {"svc": None}

    def start(env: dict | None = None) -> str:
        port = state["svc"].http_port if state["svc"] is not None else None
        if state["svc"] is not None:
            stop(state["svc"].proc)
        state["svc"] = start_service(sales, uri, MODEL, root, "--auth-file", str(auth), "--promote", "champion",
                                     "--auto-champion-stores", "2", "--refresh-stores-per-day", "3", name="rules",
                                     port=port, env=env)
        return state["svc"].url

    try:
        yield {"start": start, "url": start(), "uri": uri, "first": first, "sales": sales, "svc": state}
    finally:
        if state["svc"] is not None:
            stop(state["svc"].proc)


def ask(url: str, who: str, stores: list[str], event_id: str, **extra: object) -> httpx.Response:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    ev = CloudEvent({"type": "com.storecast.retrain.requested", "source": "dashboard", "id": event_id},
                    {"store_ids": stores, "reason": "test", **extra})
    headers, body = to_binary(ev)
    return httpx.post(url, headers={**headers, "x-api-key": KEYS[who]}, content=body, timeout=60)


def wait_job(url: str, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{url}/jobs/{job_id}", headers={"x-api-key": KEYS["svc"]}, timeout=10).json()).get(
            "status") not in FINISHED:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_refreshes_are_bounded_per_identity_per_day_and_events_per_sender(world: dict) -> None:
    url = world["url"]
    first = ask(url, "planner-a", ["1", "2"], "a-1")
    assert first.status_code == 200 and first.json()["status"] == "up_to_date", first.text
    again = ask(url, "planner-a", ["1", "2"], "a-1")  # a redelivery: the same answer, not counted again
    assert again.json()["job_id"] == first.json()["job_id"]
    # another identity sending the same source + id gets its own answer, not planner-a's
    other = ask(url, "planner-b", ["1"], "a-1")
    assert other.status_code == 200 and other.json()["job_id"] != first.json()["job_id"]
    assert ask(url, "planner-a", ["3", "3"], "a-2").status_code == 200  # 3 of 3 stores today
    over = ask(url, "planner-a", ["4"], "a-3")
    assert over.status_code == 429, over.text
    body = over.json()
    assert body["limit"] == 3 and body["used"] == 3 and body["asked"] == 1
    assert "refresh limit" in body["error"] and "--refresh-stores-per-day" in body["error"]
    retry = int(over.headers["retry-after"])  # seconds to midnight UTC
    assert 0 < retry <= 86401 and retry == body["retry_after"]
    assert ask(url, "planner-b", ["2", "3"], "b-2").status_code == 200  # planner-b's own 3
    assert ask(url, "svc", ["1", "2", "3", "4"], "s-1").status_code == 200  # may retrain: not bounded


def test_fleet_sized_goes_to_the_challenger_whoever_asked(world: dict) -> None:
    url, uri = world["url"], world["uri"]
    r = ask(url, "svc", ["1", "2", "3"], "fleet-1", force=True)  # three stores: more than --auto-champion-stores
    assert r.status_code == 202 and r.json()["target"] == "challenger", r.text
    job = wait_job(url, r.json()["job_id"])
    assert job["status"] == "done" and job["result"]["promoted"] == "challenger", (job, log_tail(world["svc"]["svc"]))
    assert alias(uri, MODEL) == world["first"]  # --promote champion, a service's key: champion did not move
    assert alias(uri, MODEL, "challenger") == job["result"]["version"]


def test_unknown_stores_refused_then_kept_with_the_flag_and_the_budget_survives_a_restart(world: dict) -> None:
    rows = {"rows": [{"Store": "999", "Date": "2015-08-01", "Sales": 5000, "Open": 1, "Promo": 0,
                      "StateHoliday": "0", "SchoolHoliday": 0},
                     {"Store": "4", "Date": "2015-08-01", "Sales": 5000, "Open": 1, "Promo": 0,
                      "StateHoliday": "0", "SchoolHoliday": 0}]}
    parts = Path(f"{world['sales']}.parts")
    kind = "com.storecast.sales.appended"
    svc_key = {"x-api-key": KEYS["svc"]}

    def append(url: str, event_id: str) -> httpx.Response:
        from cloudevents.conversion import to_binary
        from cloudevents.http import CloudEvent

        headers, body = to_binary(CloudEvent({"type": kind, "source": "tests", "id": event_id}, rows))
        return httpx.post(url, headers={**headers, **svc_key}, content=body, timeout=120)

    refused = append(world["url"], "unknown-1")
    assert refused.status_code == 400 and "999" in refused.json()["error"], refused.text
    assert not parts.exists() or not list(parts.glob("part-*"))  # nothing written

    url = world["start"]({"STORECAST_KEEP_UNKNOWN_STORES": "1"})  # the same state file, the flag by variable
    over = ask(url, "planner-a", ["4"], "a-4")  # the day's count survived the restart
    assert over.status_code == 429 and over.json()["used"] == 3, over.text
    kept = append(url, "unknown-2")
    assert kept.status_code == 200 and kept.json()["appended"] == 2, kept.text
    assert "999" in set(SalesStore(str(world["sales"])).load().frame["Store"].astype(str))
    assert send(url, {"store_ids": ["1"]}, "anon").status_code == 401  # still closed to callers without a key
