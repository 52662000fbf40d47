"""A planner's month, end to end, every component a real process on loopback (issue 21, "a test of the whole loop").

"Today" starts on 2015-06-30, the first version's data end, and moves a day with each day of actuals
appended. Between the days: calendar pushes (by event and by the CLI), three planner refreshes from the
dashboard (one racing a calendar push), a drift refit, a fleet retrain rolled out by canary, a bad version
rolled back, bad calendar files and bad sales refused, and a planner's fleet-sized refresh (canaried too).
After every step ``check_invariants`` asserts the lifecycle's six invariants (tests/system/invariants.py):
calendars intact in what is served, closed days 0 on every protocol, appended actuals in the dashboard,
every answer's version explained by its tags, champion moved only through the gate or the rollout, no job
and no row lost. The data, the processes and the ledger of what was done are tests/system/world.py.

The steps run in order on one world (module scope); each builds on the one before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.system.invariants import changes, check_invariants
from tests.system.world import (
    CALENDAR_UPDATED,
    DRIFT_STORE,
    FEW,
    MODEL,
    MONTH_END,
    PING,
    RETRAIN_REQUESTED,
    SALES_APPENDED,
    STORES,
    World,
    records,
)


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("month"), mlflow_server)
    try:
        yield w.start()
    finally:
        w.stop()


def days(world: World, last: str, step: str) -> None:
    """Append each day of actuals up to ``last``; the invariants after each."""
    for day in world.next_days(last):
        world.append_day(day)
        check_invariants(world, f"{step}: actuals of {day}")


def row(world: World, store: str, day: str, **change: object) -> dict[str, object]:
    """A calendar row of ``store`` on ``day`` as the first calendar has it, with ``change`` laid over it."""
    cal = world.month.calendar
    found = cal[(cal["Store"].astype(str) == store) & (cal["Date"] == pd.Timestamp(day))]
    assert len(found) == 1, f"no calendar row of store {store} on {day}"
    base = found.iloc[0]
    return {"Store": int(store), "Date": day, "Open": int(base["Open"]), "Promo": int(base["Promo"]),
            "StateHoliday": str(base["StateHoliday"]), "SchoolHoliday": int(base["SchoolHoliday"]), **change}


def plain_day(world: World, store: str, first: str, last: str) -> str:
    """The first day in [first, last] the store is open without a promotion (by the calendar known now)."""
    for day in pd.date_range(first, last).strftime("%Y-%m-%d"):
        is_open, promo, _ = world.ledger.calendar[(store, day)]
        if is_open and not promo and pd.Timestamp(day).dayofweek < 6:
            return day
    raise AssertionError(f"store {store} has no plain open day in {first}..{last}")


def assert_refused(r: httpx.Response, *words: str) -> None:
    """A clear 4xx: a JSON error naming every one of ``words``."""
    assert 400 <= r.status_code < 500, f"expected a 4xx naming {words}, got HTTP {r.status_code}: {r.text[:500]}"
    error = r.json().get("error", "")
    assert all(w in error for w in words), f"the refusal should name {words}: {error!r}"


def test_00_the_first_version_is_served(world: World) -> None:
    """0. The first version: every store, trained with the calendar of July and August, serves it."""
    check_invariants(world, "0: first version")


def test_01_actuals_arrive_daily(world: World) -> None:
    """1. Actuals of July 1st to 3rd, one day at a time."""
    days(world, "2015-07-03", "1")


def test_02_calendar_pushes(world: World) -> None:
    """2. A planner's calendar: promotions on Saturday 8 August (stores 2 and 5) and store 3 closed on a Thursday,
    uploaded to the sales store and announced by calendar.updated; then a promotion for store 8 by the CLI."""
    before = world.alias()
    assert world.ledger.calendar[("3", "2015-08-20")][0], "store 3 should be open on 2015-08-20 before the push"
    path = world.calendar_file([row(world, "2", "2015-08-08", Promo=1), row(world, "5", "2015-08-08", Promo=1),
                                row(world, "3", "2015-08-20", Open=0, Promo=0)], "promotions-and-closure.csv")
    answer = world.push_calendar(path)
    version = str(answer.get("version") or (answer.get("result") or {}).get("version"))
    assert world.alias() == version != before, (before, answer)
    tags = world.tags(version)
    assert "calendar" in changes(tags) and tags.get("parent_version") == before, tags
    check_invariants(world, "2a: calendar push by event")
    day = plain_day(world, "8", "2015-08-17", "2015-08-28")
    pushed = world.push_calendar_cli(world.calendar_file([row(world, "8", day, Promo=1)], "store-8.csv"))
    assert world.alias() == str(pushed["version"]), pushed
    check_invariants(world, "2b: calendar push by the CLI")


def test_03_more_actuals(world: World) -> None:
    """3. Actuals of July 4th to 6th."""
    days(world, "2015-07-06", "3")


def test_04_planner_refreshes_a_promoted_store(world: World) -> None:
    """4. A planner refreshes store 2 (it has the pushed promotion) from the dashboard: a gated champion."""
    job = world.refresh(["2"])
    assert job["status"] == "done" and job["result"]["promoted"] == "champion", job
    assert job["result"]["store_ids"] == ["2"], job
    check_invariants(world, "4: planner refresh of store 2")


def test_05_the_drift_watch_refits_a_store_that_drifts(world: World) -> None:
    """5. Store 6 sells 1.8 times its usual since July 1st: by its 7th open day (July 8th) the watch refits it."""
    for day in world.next_days("2015-07-10"):
        world.append_day(day)
        check_invariants(world, f"5: actuals of {day}")
        if any(DRIFT_STORE in (j.get("stores") or []) for j in world.ledger.drift):
            break
    refits = [j for j in world.ledger.drift if DRIFT_STORE in (j.get("stores") or [])]
    assert refits, f"no drift refit of store {DRIFT_STORE} by {world.ledger.day}: {world.ledger.drift}"
    job = world.job(refits[0]["job_id"])
    assert job["status"] == "done" and job["kind"] == "drift", job
    assert DRIFT_STORE in job["result"]["store_ids"] and job["result"]["promoted"] == "champion", job


def test_06_a_refresh_and_a_calendar_push_at_once(world: World) -> None:
    """6. A planner refreshes stores 3 (pushed closure) and 5 (pushed promotion) while a calendar.updated event
    closes store 4 on a plain day: two writers at once, both changes served."""
    day = plain_day(world, "4", "2015-08-24", "2015-08-28")
    path = world.calendar_file([row(world, "4", day, Open=0, Promo=0)], "store-4-closed.csv")
    ref = world.stored_calendar(path)
    job_id = world.ask_refresh(["3", "5"])
    pushed = world.announce_calendar(ref, path)  # while the refresh fits
    job = world.follow_refresh(job_id)
    assert job["status"] == "done" and job["result"]["promoted"] == "champion", job
    assert sorted(job["result"]["store_ids"]) == ["3", "5"], job
    assert pushed.get("version"), pushed
    check_invariants(world, "6: planner refresh of stores 3 and 5 with a calendar push at once")


def test_07_actuals_to_mid_month(world: World) -> None:
    """7. Actuals up to July 14th."""
    days(world, "2015-07-14", "7")


def test_08_a_fleet_retrain_is_canaried_and_promoted(world: World) -> None:
    """8. The nightly ping with force refits every store: fleet-sized, so challenger -> canary -> promoted."""
    before = world.alias()
    r = world.event(PING, {"force": True})
    assert r.status_code == 202, r.text
    job = world.wait_job(world.expect_job(r.json(), "fleet retrain (ping, force)"))
    assert job["status"] == "done" and job["result"]["promoted"] == "challenger", job
    assert len(job["result"]["store_ids"]) == len(STORES) > FEW, job
    doc = world.wait_rollout(str(job["result"]["version"]))
    assert doc["status"] == "promoted", doc
    assert world.alias() == str(doc.get("promoted_version") or doc["version"]) != before, doc
    assert world.alias("challenger") is None
    check_invariants(world, "8: fleet retrain promoted")


def test_09_more_actuals(world: World) -> None:
    """9. Actuals of July 15th to 18th."""
    days(world, "2015-07-18", "9")


def test_10_a_bad_version_is_rolled_back(world: World) -> None:
    """10. An admin retrains every store while the canary answers errors: rolled back, champion unchanged."""
    before = world.alias()
    world.traffic.bad = 0.3  # three in ten of the canary's requests fail
    try:
        r = world.event(RETRAIN_REQUESTED, {"store_ids": list(STORES), "force": True, "reason": "admin retrain"},
                        tier="admin")
        assert r.status_code == 202, r.text
        job = world.wait_job(world.expect_job(r.json(), "fleet retrain by an admin (rolled back)"))
        assert job["status"] == "done" and job["result"]["promoted"] == "challenger", job
        bad = str(job["result"]["version"])
        doc = world.wait_rollout(bad)
    finally:
        world.traffic.bad = 0.0
    assert doc["status"] == "rolledback" and "error ratio" in doc.get("reason", ""), doc
    assert world.alias() == before and world.alias("challenger") is None
    assert world.tags(bad).get("rollout") == "rolledback", world.tags(bad)
    check_invariants(world, "10: bad version rolled back")


def test_11_more_actuals(world: World) -> None:
    """11. Actuals of July 19th to 21st."""
    days(world, "2015-07-21", "11")


def upload_refused(world: World, calendar: Path, needle: str) -> None:
    """A bad calendar is refused naming ``needle``: by the upload itself (one line, no traceback), or, once
    stored, by the ``calendar.updated`` event that names it."""
    up = world.upload_calendar(calendar)
    if up.returncode == 0:
        ref = up.stdout.strip().splitlines()[-1].strip()
        assert_refused(world.event(CALENDAR_UPDATED, {"calendar": ref}), needle)
    else:
        assert needle in up.stderr and "Traceback" not in up.stderr, up.stderr[-1500:]


def test_12_bad_calendar_files_are_refused(world: World) -> None:
    """12. A calendar naming a store no version holds, and one with a malformed value, are refused with a clear
    4xx naming the problem (by event and by the CLI); a path on the server is refused too. Nothing moves."""
    before = world.alias()
    day = plain_day(world, "2", "2015-08-24", "2015-08-28")
    unknown = world.calendar_file([row(world, "2", day, Promo=1), {**row(world, "2", day, Promo=1), "Store": 99}],
                                  "unknown-store.csv")
    upload_refused(world, unknown, "99")
    proc = world.cli("calendar", "push", "--calendar", str(unknown), "--tracking-uri", world.uri, "--model-name",
                     MODEL)
    assert proc.returncode != 0 and "99" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    malformed = world.calendar_file([row(world, "2", day, Promo="yes")], "malformed.csv")
    upload_refused(world, malformed, "Promo")
    assert_refused(world.event(CALENDAR_UPDATED, {"path": str(unknown)}), "data.path")
    assert world.alias() == before
    check_invariants(world, "12: bad calendar files refused")


def test_13_bad_sales_are_refused(world: World) -> None:
    """13. Sales with a malformed value (negative, not a number) and sales naming a store no version holds are
    refused with a clear 4xx naming the rows (by event and by the CLI); nothing is stored."""
    day = world.next_days(MONTH_END)[0]
    good = world.month.actuals[world.month.actuals["Date"] == pd.Timestamp(day)]
    negative = good.copy()
    negative.loc[negative["Store"].astype(str) == "1", "Sales"] = -5
    assert_refused(world.event(SALES_APPENDED, {"rows": records(negative)}), "Store 1", "negative")
    world.ledger.refused.append(("1", day, -5.0))
    not_a_number = records(good)
    not_a_number[0]["Sales"] = "12x"
    assert_refused(world.event(SALES_APPENDED, {"rows": not_a_number}), "Sales")
    stranger = good.copy()
    stranger["Store"] = 99
    assert_refused(world.event(SALES_APPENDED, {"rows": records(stranger)}), "99")
    path = world.root / "actuals" / f"stranger-{day}.csv"
    stranger.assign(Date=stranger["Date"].dt.strftime("%Y-%m-%d")).to_csv(path, index=False)
    proc = world.data_append(path)
    assert proc.returncode != 0 and "99" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    world.ledger.refused += [("99", day, float(y)) for y in stranger["Sales"]]
    check_invariants(world, "13: bad sales refused")


def test_14_planner_refreshes_again(world: World) -> None:
    """14. The third refresh: stores 1 and 8 (store 8 has the promotion pushed by the CLI)."""
    job = world.refresh(["1", "8"])
    assert job["status"] == "done" and job["result"]["promoted"] == "champion", job
    check_invariants(world, "14: planner refresh of stores 1 and 8")


def test_15_a_planners_fleet_sized_refresh_goes_through_the_canary(world: World) -> None:
    """15. A planner asks to refresh every store: fleet-sized, so challenger -> canary -> promoted, whoever asked."""
    job = world.refresh(list(STORES))
    assert job["status"] == "done" and job["result"]["promoted"] == "challenger", job
    doc = world.wait_rollout(str(job["result"]["version"]))
    assert doc["status"] == "promoted", doc
    check_invariants(world, "15: a planner's fleet-sized refresh, canaried")


def test_16_the_rest_of_the_month(world: World) -> None:
    """16. Actuals to July 31st; the month saw every kind of champion move, each explained."""
    days(world, MONTH_END, "16")
    assert world.ledger.day == MONTH_END
    moves = world.watch.history("champion")
    kinds = set().union(*(changes(world.tags(v)) for v in moves))
    assert {"first", "refit", "calendar"} <= kinds, (moves, kinds)
