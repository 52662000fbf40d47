"""The retrain service's job store on a real SQLite file: de-duplication per sender, an old database
migrated, refresh budgets, secrets, a deleted file recreated without loss, unwritable files refused."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from pipelines.retrain.jobstore import EventKey, Job, JobStore, JobStoreUnavailable


def test_events_are_deduplicated_per_sender(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    planner = EventKey("id:planner", "storecast.drift", "drift-7-abc")
    store.put(Job("j1", ["4"], "pre-empt?", "requested"), planner)
    assert store.job_of_event(planner) == "j1"
    # the same source + id from another sender is another event: nobody pre-empts anybody
    assert store.job_of_event(EventKey("internal:drift", "storecast.drift", "drift-7-abc")) is None
    store.remember_event(EventKey("internal:drift", "storecast.drift", "drift-7-abc"), "j2")
    assert store.job_of_event(EventKey("internal:drift", "storecast.drift", "drift-7-abc")) == "j2"
    assert store.job_of_event(planner) == "j1"


def test_a_database_of_the_earlier_release_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (source TEXT NOT NULL, id TEXT NOT NULL, job_id TEXT, received REAL, "
               "PRIMARY KEY (source, id))")
    db.execute("INSERT INTO events VALUES ('tests', 'old-1', 'job-old', 1.0)")
    db.commit()
    db.close()
    store = JobStore(path)
    cols = [r[1] for r in store._db.execute("PRAGMA table_info(events)").fetchall()]
    assert cols[:3] == ["sender", "source", "id"]
    # a redelivery of an event recorded before senders still finds its job, whoever delivers it now
    assert store.job_of_event(EventKey("id:broker", "tests", "old-1")) == "job-old"
    store.remember_event(EventKey("id:broker", "tests", "new-1"), "job-new")
    assert store.job_of_event(EventKey("id:other", "tests", "new-1")) is None
    store.close()
    assert JobStore(path).job_of_event(EventKey("id:broker", "tests", "new-1")) == "job-new"  # reopened: as is


def test_budgets_are_all_or_nothing_per_identity_and_day_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    assert store.charge("id:planner", "2026-01-02", 40, 60) == (True, 40)
    assert store.charge("id:planner", "2026-01-02", 21, 60) == (False, 40)  # nothing taken
    assert store.charge("id:other", "2026-01-02", 60, 60) == (True, 60)
    store.refund("id:planner", "2026-01-02", 5)
    store.close()
    again = JobStore(path)  # a restart keeps the count
    assert again.charge("id:planner", "2026-01-02", 25, 60) == (True, 60)
    assert again.charge("id:planner", "2026-01-03", 60, 60) == (True, 60)  # a new UTC day
    assert again.secret("drift") == again.secret("drift") != JobStore(tmp_path / "b.sqlite").secret("drift")


def test_a_deleted_file_is_recreated_from_the_open_copy(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.sqlite"
    store = JobStore(path)
    for i in range(3):
        store.put(Job(f"j{i}", ["1"], "t", "requested"), EventKey("id:p", "tests", f"e{i}"))
    assert store.health()["ok"] and store.health()["incident"] is None
    for f in path.parent.iterdir():  # what `rm -f jobs.sqlite*` does
        f.unlink()
    health = store.health()  # noticed, and recreated
    assert health["ok"] and "was deleted" in health["incident"] and "3 job(s)" in health["incident"]
    assert path.exists()
    store.put(Job("j3", ["2"], "t", "requested"))
    store.close()
    reopened = JobStore(path)  # what a restart finds: nothing lost
    assert sorted(j.id for j in reopened.recent()) == ["j0", "j1", "j2", "j3"]
    assert reopened.job_of_event(EventKey("id:p", "tests", "e2")) == "j2"


def test_a_file_replaced_under_the_service_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    store.put(Job("j0", ["1"], "t", "requested"))
    os.replace(path, tmp_path / "moved.sqlite")
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(JobStoreUnavailable, match="replaced by another file"):
        store.put(Job("j1", ["1"], "t", "requested"))
    health = store.health()
    assert not health["ok"] and "replaced" in health["error"]
    assert store.get("j0") is not None  # reads still answer from the open copy
