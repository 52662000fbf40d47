"""Deriving versions (``pipelines.versions.lineage``): a refit keeps every known-ahead day and every pushed calendar,
calendar rows of unknown stores are refused or kept pending, the alias rule, compare-and-set alias moves, the
rollout's carry-over, and racing writers as real processes against one real ``mlflow server``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.data.calendar import read_calendar
from pipelines.data.sales_csv import write_sales
from pipelines.data.sales_store import SalesStore
from pipelines.data.synth import synthesize_with_calendar
from pipelines.training.fitting import FitConfig
from pipelines.versions.calendar_push import push
from pipelines.versions.lineage import UnknownStores, carry_over, download_parent, store_grid, target_alias
from pipelines.versions.publish import publish
from pipelines.versions.registry import AliasMoved, Registry, RegistryUnavailable
from predictor.forecast import calendar_days
from tests.support import BIN, alias, run_cli, versions

MODEL = "storecast"
FIRST_END, DATA_END = "2015-07-24", "2015-07-31"


def day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


def served(table, store: str, days: np.ndarray):
    """The calendar the predictor resolves for a store's days (``predictor.calendar`` through the table)."""
    row = int(table.index(np.array([store]))[0])
    return calendar_days(table, np.full(len(days), row), days)


def cells(table, store: str, days: np.ndarray) -> np.ndarray:
    start, grid = store_grid(table, store)
    col = days - start
    out = np.full((len(days), 4), -1, np.int8)
    ok = (col >= 0) & (col < len(grid))
    out[ok] = grid[col[ok]]
    return out


def make_data(root: Path, stores: int = 4) -> dict:
    """Synthetic stores: sales to FIRST_END (old) and DATA_END (new), and the calendar after each."""
    sales, calendar = synthesize_with_calendar(stores, seed=25, start="2014-01-01", end=DATA_END, calendar_days=40)
    sales = sales.assign(Store=sales["Store"].astype(str))
    calendar = calendar.assign(Store=calendar["Store"].astype(str))
    recent = sales[sales["Date"] > FIRST_END][list(calendar.columns)]
    first_cal = pd.concat([recent, calendar], ignore_index=True)
    first_cal = first_cal[first_cal["Store"] != str(stores)]  # the last store is not in the first version
    write_sales(first_cal, root / "calendar.csv")
    # the refit's sales file also has future rows: one contradicts the pushed closure, one is after everything
    future = pd.DataFrame({"Store": ["2", "2"], "Date": pd.to_datetime(["2015-08-12", "2015-09-20"]),
                           "Sales": [np.nan, np.nan], "Open": [1, 0], "Promo": [1, 0], "StateHoliday": ["0", "0"],
                           "SchoolHoliday": [0, 0]})
    return {"old": write_sales(sales[sales["Date"] <= FIRST_END], root / "old.csv.gz"),
            "new": write_sales(pd.concat([sales, future], ignore_index=True), root / "new.csv.gz"),
            "calendar": root / "calendar.csv", "sales": sales}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lineage")
    data = make_data(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_cli("train", "--data", str(data["old"]), "--calendar", str(data["calendar"]), "--stores", "1,2,3",
            "--model", "seed", "--holdout-days", "28", "--alias", "champion", "--workers", "1", "--no-progress",
            "--tracking-uri", uri, cwd=root)
    return {**data, "root": root, "uri": uri, "registry": Registry(uri, MODEL), "env": {"MLFLOW_TRACKING_URI": uri}}


def test_a_refit_keeps_every_known_ahead_day_and_the_pushed_calendar(world: dict) -> None:
    """Issue 21's headline: train with a calendar, push one, refit a store: its calendar is still served."""
    reg, root = world["registry"], world["root"]
    first = alias(world["uri"], MODEL)
    pushed = pd.DataFrame({"Store": ["2", "2", "1"], "Date": pd.to_datetime(["2015-08-12", "2015-08-14", "2015-08-14"]),
                           "Open": [0, 1, 1], "Promo": [0, 1, 1], "StateHoliday": ["0", "0", "0"],
                           "SchoolHoliday": [0, 0, 0]})
    write_sales(pushed, root / "push.csv")
    out = json.loads(run_cli("calendar", "push", "--calendar", str(root / "push.csv"), "--json", cwd=root,
                             env=world["env"]).stdout)
    assert out["parent_version"] == first and out["stores_changed"] == 2 and out["retries"] == 0
    refit = json.loads(run_cli("train", "--data", str(world["new"]), "--parent", "@champion", "--stores", "2",
                               "--force", "--alias", "champion", "--json", "--workers", "1", "--no-progress",
                               cwd=root, env=world["env"]).stdout.strip().splitlines()[-1])
    assert refit["parent_version"] == out["version"] and refit["alias"] == "champion" and refit["refitted"] == 1
    before, after = reg.table(out["version"]), reg.table(refit["version"])
    i = after.store_id.tolist().index("2")
    assert after.last_day[i] > before.last_day[before.store_id.tolist().index("2")]  # really refitted
    ahead = np.arange(day("2015-08-01"), day("2015-09-09") + 1)  # every day the pushed version knew ahead
    np.testing.assert_array_equal(cells(after, "2", ahead), cells(before, "2", ahead))
    old, new = served(before, "2", ahead), served(after, "2", ahead)
    assert new.known.all() and (new.open == old.open).all() and (new.promo == old.promo).all()
    closure, promo = day("2015-08-12") - ahead[0], day("2015-08-14") - ahead[0]
    assert not new.open[closure] and new.promo[promo]  # the push beats the sales file's own future row
    late = served(after, "2", np.array([day("2015-09-20")]))  # a sales-file row after everything: fills
    assert late.known.all() and not late.open.any()
    history = np.arange(day("2015-07-25"), day(DATA_END) + 1)  # the new actuals are history now
    sales = world["sales"]
    actual = sales[(sales["Store"] == "2") & (sales["Date"] > FIRST_END)].sort_values("Date")
    assert served(after, "2", history).open.tolist() == (actual["Open"] == 1).tolist()
    for other in ("1", "3"):  # untouched stores keep theirs, the push included
        np.testing.assert_array_equal(cells(after, other, ahead), cells(before, other, ahead))
    tags = MlflowClient(world["uri"]).get_model_version(MODEL, refit["version"]).tags
    assert tags["change"] == "refit" and tags["refitted"] == "2" and tags["parent_version"] == out["version"]
    assert tags["calendar_source"] == "file push.csv" and tags["data_end"] == DATA_END
    assert tags["calendar_end"] == "2015-09-20" and tags["calendar_date"]
    manifest = json.loads((reg.download(refit["version"], root / "dl") / "manifest.json").read_text())
    assert manifest["lineage"] == {k: tags[k] for k in manifest["lineage"]} == refit["lineage"]


def test_unknown_stores_are_refused_or_kept_until_they_are_trained(world: dict) -> None:
    reg, root = world["registry"], world["root"]
    champion, known = alias(world["uri"], MODEL), versions(world["uri"], MODEL)
    rows = pd.DataFrame({"Store": ["3", "4", "77"], "Date": pd.to_datetime(["2015-08-20"] * 3), "Open": [0, 0, 1],
                         "Promo": [0, 0, 1]})
    with pytest.raises(UnknownStores, match=r"2 store\(s\) the version does not hold: 4, 77"):
        push(rows, tracking_uri=world["uri"])
    assert alias(world["uri"], MODEL) == champion and versions(world["uri"], MODEL) == known  # nothing registered
    write_sales(rows, root / "unknown.csv")  # the CLI refuses the same way: exit 1, one line naming them
    proc = subprocess.run([str(BIN / "storecast"), "calendar", "push", "--calendar", str(root / "unknown.csv")],
                          capture_output=True, text=True, env={**os.environ, **world["env"]}, cwd=root, timeout=120)
    assert proc.returncode == 1 and "4, 77" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    kept = push(rows, tracking_uri=world["uri"], keep_unknown=True)
    assert kept.pending == ["4", "77"] and kept.stores_changed == 1
    pending = read_calendar(reg.download(kept.version, root / "kept") / "pending_calendar.csv.gz")
    assert sorted(pending["Store"].unique()) == ["4", "77"]
    # store 4 is fitted for the first time: the rows that waited are its calendar; 77 keeps waiting
    parent, tmp = download_parent(reg, "@champion")
    try:
        pub = publish(SalesStore(str(world["new"])).load(), reg, parent=parent, stores=["4"], alias="champion",
                      workers=1, parent_alias="champion")
    finally:
        tmp.cleanup()
    assert pub.alias == "champion" and pub.refitted == ["4"] and pub.pending == ["77"], pub.gate
    table = reg.table(pub.version)
    got = served(table, "4", np.array([day("2015-08-20")]))
    assert got.known.all() and not got.open.any()
    ahead = np.arange(day("2015-08-01"), day("2015-09-09") + 1)
    np.testing.assert_array_equal(cells(table, "3", ahead), cells(reg.table(kept.version), "3", ahead))
    assert not served(table, "3", np.array([day("2015-08-20")])).open.any()


def test_the_alias_rule_and_a_carry_over_that_keeps_the_champions_calendar(world: dict) -> None:
    assert target_alias("auto", 3, True) == "champion" and target_alias("auto", 21, True) == "challenger"
    assert target_alias("champion", 21, True) == "challenger"  # fleet-sized: through the canary, whoever asked
    assert target_alias("champion", 500, False) == "champion"  # the first version: nothing to canary against
    assert target_alias("challenger", 1, True) == "challenger"
    reg = world["registry"]
    champion = alias(world["uri"], MODEL)
    parent, tmp = download_parent(reg, "@champion")
    try:  # "fleet-sized" here is more than one store: asked for champion, it goes to challenger
        fleet = publish(SalesStore(str(world["new"])).load(), reg, parent=parent, stores=["1", "3"], force=True,
                        alias="champion", auto_champion_stores=1, workers=1, parent_alias="champion")
    finally:
        tmp.cleanup()
    assert fleet.alias == "challenger" and alias(world["uri"], MODEL) == champion
    # during its canary the champion gets a new calendar for store 3
    change = pd.DataFrame({"Store": ["3"], "Date": pd.to_datetime(["2015-08-26"]), "Open": [0], "Promo": [0]})
    moved = push(change, tracking_uri=world["uri"])
    rebased = carry_over(reg, fleet.version, moved.version)
    assert rebased not in (fleet.version, moved.version)
    cand, new = reg.table(fleet.version), reg.table(rebased)
    for sid in ("1", "3"):  # the candidate's refits stay
        i, j = cand.store_id.tolist().index(sid), new.store_id.tolist().index(sid)
        assert cand.k[i] == new.k[j] and cand.last_day[i] == new.last_day[j]
    assert not served(new, "3", np.array([day("2015-08-26")])).open.any()  # the champion's change is laid over
    ahead = np.arange(day("2015-08-01"), day("2015-08-25") + 1)
    np.testing.assert_array_equal(cells(new, "3", ahead), cells(cand, "3", ahead))
    tags = MlflowClient(world["uri"]).get_model_version(MODEL, rebased).tags
    assert tags["change"] == "carry-over" and tags["carried_from"] == moved.version
    assert tags["parent_version"] == fleet.version
    assert carry_over(reg, rebased, moved.version) == rebased  # nothing left to carry


def test_alias_moves_are_compare_and_set(world: dict) -> None:
    reg = world["registry"]
    champion = alias(world["uri"], MODEL)
    other = next(v for v in versions(world["uri"], MODEL) if v != champion)
    with pytest.raises(AliasMoved) as caught:
        reg.move_alias("champion", other, expected=other)
    assert caught.value.current == champion and alias(world["uri"], MODEL) == champion
    with pytest.raises(AliasMoved):
        reg.move_alias("champion", other, expected=None)  # None: the alias must not exist yet
    reg.move_alias("champion", champion, expected=champion)
    client = MlflowClient(world["uri"])
    client.create_registered_model(f"{MODEL}.lock.champion")  # a writer died holding the lock
    with pytest.raises(RegistryUnavailable, match="stayed locked"), reg.alias_lock("champion", wait=0.5):
        pass
    with reg.alias_lock("champion", wait=5, stale=0.0):  # old enough: broken, then taken
        assert client.get_registered_model(f"{MODEL}.lock.champion")
    names = {m.name for m in client.search_registered_models()}
    assert f"{MODEL}.lock.champion" not in names and any(".lock.champion.broken." in n for n in names)


# ---- racing writers: real processes, one real mlflow server -------------------------------------
def start(args: list[str], env: dict, root: Path, name: str) -> subprocess.Popen:
    log = (root / f"{name}.log").open("w")
    return subprocess.Popen([str(BIN / "storecast"), *args], stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, **env}, cwd=root)


def finish(proc: subprocess.Popen, root: Path, name: str) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, (root / f"{name}.log").read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def refit(data: Path, store: str) -> list[str]:
    return ["train", "--data", str(data), "--parent", "@champion", "--stores", store, "--force", "--alias",
            "champion", "--json", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def racing(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("race")
    data = make_data(root, stores=3)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    model = "storecast-race"
    first = publish(SalesStore(str(data["old"])).load(), Registry(mlflow_server, model), alias="champion", workers=1,
                    config=FitConfig.preset("seed", holdout_days=28), calendar=read_calendar(data["calendar"]))
    assert first.alias == "champion", first.gate
    return {**data, "root": root, "uri": mlflow_server, "model": model, "env": env}


def test_two_refits_at_the_same_time_both_land(racing: dict) -> None:
    root, uri, model = racing["root"], racing["uri"], racing["model"]
    first = alias(uri, model)
    env = {**racing["env"], "STORECAST_FAULT_ALIAS_BARRIER": f"{root / 'barrier-refits'}:2"}
    extra = ["--model-name", model]
    procs = {s: start([*refit(racing["new"], s), *extra], env, root, f"refit-{s}") for s in ("1", "2")}
    outs = {s: finish(p, root, f"refit-{s}") for s, p in procs.items()}
    assert sorted(o["retries"] for o in outs.values()) == [0, 1]  # both derived from one champion; one lost the race
    assert {o["alias"] for o in outs.values()} == {"champion"}
    won, lost = sorted(outs.values(), key=lambda o: o["retries"])
    assert lost["parent_version"] == won["version"] and alias(uri, model) == lost["version"]
    reg = Registry(uri, model)
    before, after = reg.table(first), reg.table(lost["version"])
    for s in ("1", "2"):  # the champion holds both refits
        assert after.last_day[after.store_id.tolist().index(s)] > before.last_day[before.store_id.tolist().index(s)]
    client = MlflowClient(uri)
    superseded = [v for v in versions(uri, model) if "superseded" in client.get_model_version(model, v).tags]
    assert len(superseded) == 1  # the loser's first version: registered, never served, and says why


def test_a_refit_and_a_calendar_push_at_the_same_time_both_land(racing: dict) -> None:
    root, uri, model = racing["root"], racing["uri"], racing["model"]
    env = {**racing["env"], "STORECAST_FAULT_ALIAS_BARRIER": f"{root / 'barrier-push'}:2"}
    rows = pd.DataFrame({"Store": ["3", "3"], "Date": pd.to_datetime(["2015-08-19", "2015-08-21"]), "Open": [0, 1],
                         "Promo": [0, 1]})
    write_sales(rows, root / "race-push.csv")
    base = alias(uri, model)
    pusher = start(["calendar", "push", "--calendar", str(root / "race-push.csv"), "--model-name", model, "--json"],
                   env, root, "push")
    fitter = start([*refit(racing["new"], "3"), "--model-name", model], env, root, "refit-3")
    pushed, fitted = finish(pusher, root, "push"), finish(fitter, root, "refit-3")
    assert sorted([pushed["retries"], fitted["retries"]]) == [0, 1]
    final = alias(uri, model)
    assert final in (pushed["version"], fitted["version"]) and base not in (pushed["version"], fitted["version"])
    reg = Registry(uri, model)
    table, start_table = reg.table(final), reg.table(base)
    i = table.store_id.tolist().index("3")
    assert table.last_day[i] > start_table.last_day[start_table.store_id.tolist().index("3")]  # the refit
    got = served(table, "3", np.array([day("2015-08-19"), day("2015-08-21")]))
    assert got.known.all() and got.open.tolist() == [False, True] and got.promo.tolist() == [False, True]  # the push
