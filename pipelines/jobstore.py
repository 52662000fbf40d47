"""Durable state of the retrain service: jobs, the CloudEvents seen, rollouts (one SQLite file).

Every change of a job is written before the service acts on it (WAL, synchronous=FULL), so after a
crash ``GET /jobs/{id}`` still answers, a redelivered event (same CloudEvent ``source`` + ``id``)
still finds its job, and a job that was running is found and recovered (``RetrainManager.recover``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

UNFINISHED = ("queued", "running", "retrying")
FINISHED = ("done", "failed", "up_to_date")


@dataclass
class Job:
    """One retrain job and what became of it."""

    id: str
    stores: list[str] | None  # None: every stale store (a ping, a first version)
    reason: str
    kind: str  # requested, ping, drift, bootstrap
    target: str | None = None  # the alias a passing version moves
    force: bool = False
    status: str = "queued"  # queued, running, retrying, done, failed, up_to_date
    phase: str = "queued"  # queued, fitting, registering, registered, aliased, rayjob, finished
    attempt: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    run_id: str | None = None
    version: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier attempts: what stopped them

    def view(self) -> dict[str, Any]:
        return {"job_id": self.id, "status": self.status, "phase": self.phase, "kind": self.kind,
                "stores": self.stores if self.stores is not None else "every stale store", "target": self.target,
                "force": self.force, "reason": self.reason, "attempt": self.attempt, "run_id": self.run_id,
                "version": self.version, "result": self.result, "error": self.error, "attempts": self.history,
                "created": self.created,
                "seconds": round((self.finished or time.time()) - self.created, 3)}


JSON_FIELDS = ("stores", "result", "history")


class JobStore:
    """Jobs, events and rollouts in one SQLite file (thread-safe; one writer at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        cols = ", ".join(f"{f.name} TEXT" if f.name != "id" else "id TEXT PRIMARY KEY" for f in fields(Job))
        self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({cols})")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created)")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (source TEXT NOT NULL, id TEXT NOT NULL, job_id TEXT, "
                         "received REAL, PRIMARY KEY (source, id))")
        self._db.execute("CREATE TABLE IF NOT EXISTS rollouts (version TEXT PRIMARY KEY, status TEXT, doc TEXT, "
                         "updated REAL)")

    # ---- jobs ---------------------------------------------------------------------------
    def put(self, job: Job) -> None:
        row = asdict(job)
        values = [json.dumps(row[f]) if f in JSON_FIELDS else (None if row[f] is None else str(row[f]))
                  for f in row]
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({names}) VALUES ({marks})", values)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return _job(dict(zip(names, row, strict=True))) if row else None

    def recent(self, n: int = 50) -> list[Job]:
        return self._select("SELECT * FROM jobs ORDER BY CAST(created AS REAL) DESC LIMIT ?", (n,))

    def unfinished(self) -> list[Job]:
        marks = ", ".join("?" for _ in UNFINISHED)
        return self._select(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY CAST(created AS REAL)",
                            UNFINISHED)

    def _select(self, sql: str, args: tuple) -> list[Job]:
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [_job(dict(zip(names, r, strict=True))) for r in rows]

    # ---- events -------------------------------------------------------------------------
    def job_of_event(self, source: str, event_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT job_id FROM events WHERE source = ? AND id = ?",
                                   (source, event_id)).fetchone()
        return row[0] if row else None

    def remember_event(self, source: str, event_id: str, job_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO events (source, id, job_id, received) VALUES (?, ?, ?, ?)",
                             (source, event_id, job_id, time.time()))

    # ---- rollouts -----------------------------------------------------------------------
    def put_rollout(self, version: str, status: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO rollouts (version, status, doc, updated) VALUES (?, ?, ?, ?)",
                             (str(version), status, json.dumps(doc, default=str), time.time()))

    def rollouts(self, status: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM rollouts", ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated", args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job(row: dict[str, Any]) -> Job:
    out: dict[str, Any] = {}
    for f in fields(Job):
        value = row.get(f.name)
        if f.name in JSON_FIELDS:
            value = json.loads(value) if value is not None else None
        elif value is not None and f.name in ("created", "started", "finished"):
            value = float(value)
        elif f.name == "attempt":
            value = int(value or 0)
        elif f.name == "force":
            value = value == "True"
        out[f.name] = value
    if out["history"] is None:
        out["history"] = []
    return Job(**out)
