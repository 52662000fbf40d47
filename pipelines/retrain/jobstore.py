"""Durable state of the retrain service: jobs, the CloudEvents seen, rollouts, refresh budgets (one SQLite file).

Every change of a job is written before the service acts on it (WAL, synchronous=FULL), so after a
crash ``GET /jobs/{id}`` still answers, a redelivered event still finds its job, and a job that was
running is found and recovered (``RetrainManager.recover``).

- Events are de-duplicated on (sender, ``source``, ``id``): the sender is who delivered the event
  (the authenticated identity, or ``internal:...`` for the service's own requests), so nobody can
  pre-empt another sender's event by sending its id first. Databases of earlier releases (events
  keyed on ``source`` + ``id`` only) are migrated on open; their rows keep an empty sender and still
  answer a redelivery of those old events.
- Refresh budgets: stores asked per identity per UTC day (``charge``), so a limit survives a restart.
- Any SQLite or OS error (a full disk, a read-only volume) is ``JobStoreUnavailable``: the caller
  answers 503 instead of accepting work it cannot record, and ``health()`` says why. A state file
  deleted while the service runs is noticed on the next write or health check and recreated from the
  connection that still holds it (SQLite's backup), also when the service stops, so nothing recorded
  is lost; the incident is kept for ``/healthz``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

UNFINISHED = ("queued", "running", "retrying")
FINISHED = ("done", "failed", "up_to_date")


class JobStoreUnavailable(RuntimeError):
    """The state file cannot be read or written right now (answered 503; ``/healthz`` degraded)."""


class EventKey(NamedTuple):
    """Who delivered an event, and its CloudEvent ``source`` and ``id``."""

    sender: str
    source: str
    id: str


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
EVENTS = ("CREATE TABLE IF NOT EXISTS events (sender TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL, "
          "job_id TEXT, received REAL, PRIMARY KEY (sender, source, id))")


class JobStore:
    """Jobs, events, rollouts and budgets in one SQLite file (thread-safe; one writer at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.error: str | None = None  # why the last write failed (None: it worked)
        self.incident: str | None = None  # the state file was deleted (and recreated) while the service ran
        self._db = self._open()
        cols = ", ".join(f"{f.name} TEXT" if f.name != "id" else "id TEXT PRIMARY KEY" for f in fields(Job))
        db = self._db
        db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({cols})")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created)")
        db.execute("CREATE TABLE IF NOT EXISTS rollouts (version TEXT PRIMARY KEY, status TEXT, doc TEXT, "
                   "updated REAL)")
        db.execute("CREATE TABLE IF NOT EXISTS budgets (identity TEXT NOT NULL, day TEXT NOT NULL, used INTEGER, "
                   "PRIMARY KEY (identity, day))")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        _migrate_events(db)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        st = os.stat(self.path)
        self._file = (st.st_dev, st.st_ino)
        return db

    # ---- one place every statement goes through -----------------------------------------
    def _do(self, what: str, fn: Callable[[sqlite3.Connection], Any], write: bool = True) -> Any:
        """``fn(db)`` under the lock; a write first checks the file is still there (recreating it if not)."""
        with self._lock:
            try:
                if write:
                    self._ensure_file()
                out = fn(self._db)
            except (sqlite3.Error, OSError) as exc:
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                message = f"job store {self.path}: cannot {what}: {type(exc).__name__}: {exc}"
                if write:
                    self.error = message
                raise JobStoreUnavailable(message) from None
            if write:
                self.error = None
            return out

    def _tx(self, what: str, statements: list[tuple[str, tuple]]) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")

        self._do(what, run)

    def _ensure_file(self) -> None:
        """Recreate the state file from the open connection when it was deleted (nothing recorded is lost)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._file:
            return
        if st is not None:
            raise OSError(f"{self.path} was replaced by another file while the service ran; not writing to it "
                          "(restart the service to use the new file)")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = self.path.with_name(f"{self.path.name}.restore-{os.getpid()}")
        copy = sqlite3.connect(str(tmp))
        try:
            self._db.backup(copy)
        except BaseException:
            copy.close()
            tmp.unlink(missing_ok=True)
            raise
        copy.close()
        jobs = self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        self._db.close()
        for suffix in ("-wal", "-shm"):  # the deleted file's; its content is in the copy
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, self.path)
        self._db = self._open()
        self.incident = (f"{self.path} was deleted while the service ran (noticed {when}); recreated from the "
                         f"open copy with {jobs} job(s)")

    # ---- jobs ---------------------------------------------------------------------------
    def put(self, job: Job, event: EventKey | None = None) -> None:
        """Record ``job`` (and, in the same transaction, the event that asked for it)."""
        row = asdict(job)
        values = [json.dumps(row[f]) if f in JSON_FIELDS else (None if row[f] is None else str(row[f]))
                  for f in row]
        sql = f"INSERT OR REPLACE INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})"
        statements = [(sql, tuple(values))]
        if event is not None:
            statements.append(_remember(event, job.id))
        self._tx(f"record job {job.id}", statements)

    def get(self, job_id: str) -> Job | None:
        def run(db: sqlite3.Connection) -> tuple[Any, list[str]]:
            cur = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            return cur.fetchone(), [d[0] for d in cur.description]

        row, names = self._do(f"read job {job_id}", run, write=False)
        return _job(dict(zip(names, row, strict=True))) if row else None

    def recent(self, n: int = 50) -> list[Job]:
        return self._select("SELECT * FROM jobs ORDER BY CAST(created AS REAL) DESC LIMIT ?", (n,))

    def unfinished(self) -> list[Job]:
        marks = ", ".join("?" for _ in UNFINISHED)
        return self._select(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY CAST(created AS REAL)",
                            UNFINISHED)

    def _select(self, sql: str, args: tuple) -> list[Job]:
        def run(db: sqlite3.Connection) -> tuple[list[str], list[Any]]:
            cur = db.execute(sql, args)
            return [d[0] for d in cur.description], cur.fetchall()

        names, rows = self._do("read jobs", run, write=False)
        return [_job(dict(zip(names, r, strict=True))) for r in rows]

    # ---- events -------------------------------------------------------------------------
    def job_of_event(self, event: EventKey) -> str | None:
        """The job (or answer) an event got the first time; events recorded before senders were (sender
        ``''``) still answer their redelivery."""
        row = self._do("read events", lambda db: db.execute(
            "SELECT job_id FROM events WHERE source = ? AND id = ? AND sender IN (?, '') ORDER BY sender DESC",
            (event.source, event.id, event.sender)).fetchone(), write=False)
        return row[0] if row else None

    def remember_event(self, event: EventKey, job_id: str) -> None:
        self._tx("record event", [_remember(event, job_id)])

    # ---- rollouts -----------------------------------------------------------------------
    def put_rollout(self, version: str, status: str, doc: dict[str, Any]) -> None:
        self._tx(f"record rollout of {version}", [(
            "INSERT OR REPLACE INTO rollouts (version, status, doc, updated) VALUES (?, ?, ?, ?)",
            (str(version), status, json.dumps(doc, default=str), time.time()))])

    def rollouts(self, status: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM rollouts", ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self._do("read rollouts", lambda db: db.execute(sql + " ORDER BY updated", args).fetchall(),
                        write=False)
        return [json.loads(r[0]) for r in rows]

    # ---- refresh budgets ----------------------------------------------------------------
    def charge(self, identity: str, day: str, n: int, limit: int) -> tuple[bool, int]:
        """Spend ``n`` of ``identity``'s ``limit`` for ``day``, all or nothing; (charged, used afterwards)."""
        def run(db: sqlite3.Connection) -> tuple[bool, int]:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT used FROM budgets WHERE identity = ? AND day = ?", (identity, day)).fetchone()
            used = int(row[0]) if row else 0
            if used + n > limit:
                db.execute("ROLLBACK")
                return False, used
            db.execute("INSERT OR REPLACE INTO budgets (identity, day, used) VALUES (?, ?, ?)",
                       (identity, day, used + n))
            db.execute("DELETE FROM budgets WHERE day < ?", (day,))
            db.execute("COMMIT")
            return True, used + n

        return self._do("record the refresh budget", run)

    def refund(self, identity: str, day: str, n: int) -> None:
        """Give back what ``charge`` took for a request that was then not accepted."""
        self._tx("record the refresh budget", [(
            "UPDATE budgets SET used = MAX(0, used - ?) WHERE identity = ? AND day = ?", (n, identity, day))])

    # ---- meta ---------------------------------------------------------------------------
    def secret(self, name: str) -> str:
        """A random secret of this service, made once and kept in the state file (e.g. for event ids)."""
        def run(db: sqlite3.Connection) -> str:
            key = f"secret:{name}"
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, secrets.token_hex(32)))
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

        return self._do("read a secret", run)

    def health(self) -> dict[str, Any]:
        """Whether the state file can be written now (a real write), and any incident since the start."""
        with contextlib.suppress(JobStoreUnavailable):
            self._tx("write a health check", [("INSERT OR REPLACE INTO meta (key, value) VALUES ('checked', ?)",
                                               (str(time.time()),))])
        return {"ok": self.error is None, "path": str(self.path), "error": self.error, "incident": self.incident}

    def close(self) -> None:
        """Let go of the file; one deleted under the service is written back first (a stop loses nothing)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error, OSError):
                self._ensure_file()
            self._db.close()


def _remember(event: EventKey, job_id: str) -> tuple[str, tuple]:
    return ("INSERT OR IGNORE INTO events (sender, source, id, job_id, received) VALUES (?, ?, ?, ?, ?)",
            (event.sender, event.source, event.id, job_id, time.time()))


def _migrate_events(db: sqlite3.Connection) -> None:
    """The events table keyed on (sender, source, id); an older one (source, id) is copied over, sender ''."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(events)").fetchall()]
    if cols and "sender" not in cols:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE events RENAME TO events_source_id")
        db.execute(EVENTS)
        db.execute("INSERT INTO events (sender, source, id, job_id, received) "
                   "SELECT '', source, id, job_id, received FROM events_source_id")
        db.execute("DROP TABLE events_source_id")
        db.execute("COMMIT")
    else:
        db.execute(EVENTS)


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
