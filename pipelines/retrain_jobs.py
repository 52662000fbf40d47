"""Retrain jobs: which stores are stale, coalescing concurrent requests, one fit at a time.

A request names stores (or, for a ping, asks for every stale store). Stores already covered by the
version a job would build on are answered "up to date"; stores already queued or being fitted are
coalesced into that job (the caller gets its id and waits for its result); a redelivered event
(same CloudEvent id) returns the job it created the first time. The rest become one job, run on one
worker thread: check again what is stale (a fit that finished meanwhile may cover it), fit on the
latest data, derive a version from its base (other stores copied), register it, move an alias by the
promotion policy, and emit ``model.registered`` (or ``retrain.failed``).

The base is the ``champion``; a job that will move ``challenger`` (a canary) builds on a challenger
newer than the champion when there is one, so refits waiting for their canary accumulate in one
candidate instead of each replacing the last, and a store refitted into it is not refitted again.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import events
from pipelines.data import open_days, read_sales
from pipelines.fitting import FitConfig
from pipelines.registry import Snapshot, download, register, tracking_uri
from pipelines.train import train
from predictor.table import ParamTable

log = logging.getLogger("storecast.retrain")
PROMOTE = ("auto", "champion", "challenger")


@dataclass
class Job:
    """One retrain job and what became of it."""

    id: str
    stores: list[str]
    reason: str
    kind: str
    target: str | None = None  # the alias a passing version moves
    status: str = "queued"  # queued, running, done, failed, up_to_date
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self) -> dict[str, Any]:
        return {"job_id": self.id, "status": self.status, "kind": self.kind, "stores": self.stores,
                "target": self.target, "reason": self.reason, "result": self.result, "error": self.error,
                "seconds": round((self.finished or time.time()) - self.created, 3)}


@dataclass(frozen=True)
class Version:
    """A registered version a job can build on."""

    version: str
    table: ParamTable
    created: float  # seconds since epoch


class SalesSource:
    """The latest sales table, re-read when the file changes (or on every job for a URL)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._key: tuple[Any, ...] | None = None
        self._sales: pd.DataFrame | None = None
        self._last: dict[str, int] = {}

    def load(self) -> tuple[pd.DataFrame, dict[str, int]]:
        """(sales, last open day of each store as days since epoch)."""
        if self.location.startswith(("http://", "https://")):
            import httpx

            with tempfile.TemporaryDirectory() as tmp:
                name = Path(self.location.split("?")[0]).name or "sales.csv"
                path = Path(tmp) / name
                path.write_bytes(httpx.get(self.location, timeout=60, follow_redirects=True).raise_for_status()
                                 .content)
                return self._read(path, None)
        path = Path(self.location)
        stat = path.stat()
        return self._read(path, (stat.st_mtime_ns, stat.st_size))

    def _read(self, path: Path, key: tuple[Any, ...] | None) -> tuple[pd.DataFrame, dict[str, int]]:
        if key is None or key != self._key:
            sales = read_sales(path)
            last = open_days(sales).groupby("store_id")["ds"].max()
            days = last.to_numpy().astype("datetime64[D]").astype(np.int64)
            self._sales, self._last, self._key = sales, dict(zip(last.index, days.tolist(), strict=True)), key
        return self._sales, self._last


class RetrainManager:
    """Accepts retrain requests, coalesces them and runs them one after another."""

    def __init__(self, data: str, *, model_name: str = "storecast", uri: str | None = None,
                 config: FitConfig | None = None, promote: str = "auto", auto_champion_stores: int = 20,
                 max_age_days: float = 30.0, workers: int = 1, sink: str | None = None) -> None:
        if promote not in PROMOTE:
            raise ValueError(f"promote must be one of {PROMOTE}, got {promote!r}")
        self.data = SalesSource(data)
        self.model_name, self.uri = model_name, tracking_uri(uri)
        self.config = config or FitConfig()
        self.promote, self.auto_champion_stores = promote, auto_champion_stores
        self.max_age_days, self.workers, self.sink = max_age_days, workers, sink
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.by_event: OrderedDict[str, str] = OrderedDict()
        self.inflight: dict[str, str] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._tables: OrderedDict[str, ParamTable] = OrderedDict()  # version -> table, the last few
        self._worker = threading.Thread(target=self._run, name="retrain-worker", daemon=True)
        self._worker.start()

    # ---- accepting requests -----------------------------------------------------------------
    def submit(self, event_id: str, stores: list[str] | None, reason: str = "") -> tuple[Job, dict[str, str]]:
        """A job for the stale stores among ``stores`` (None: every stale store); returns (job, coalesced)."""
        with self._lock:
            if event_id in self.by_event:  # redelivery: nothing new
                return self.jobs[self.by_event[event_id]], {}
        _, last = self.data.load()
        champion = self._version("champion")
        stale = self._stale(stores, last, champion)
        target = self._alias(len(stale))
        base = self._base(target, champion)
        if base is not champion:
            stale = self._stale(stale, last, base)
        with self._lock:
            if event_id in self.by_event:
                return self.jobs[self.by_event[event_id]], {}
            coalesced = {s: self.inflight[s] for s in stale if s in self.inflight}
            todo = [s for s in stale if s not in self.inflight]
            kind = "ping" if stores is None else "requested"
            if todo:
                job = Job(uuid.uuid4().hex[:12], todo, reason, kind, target)
                for s in todo:
                    self.inflight[s] = job.id
                self._queue.put(job)
            elif coalesced:
                job = self.jobs[next(iter(coalesced.values()))]
            else:
                job = self._up_to_date(Job(uuid.uuid4().hex[:12], [], reason, kind, target), stores, base)
            self.jobs[job.id] = job
            self.by_event[event_id] = job.id
            _trim(self.jobs, 10_000)
            _trim(self.by_event, 100_000)
        return job, coalesced

    @staticmethod
    def _up_to_date(job: Job, stores: list[str] | None, base: Version | None) -> Job:
        job.status, job.finished, job.result = "up_to_date", time.time(), _covered(stores, base)
        job.done.set()
        return job

    def _stale(self, stores: list[str] | None, last: dict[str, int], base: Version | None) -> list[str]:
        """Stores whose model in ``base`` does not cover their latest data (unknown stores stay: their job
        reports them)."""
        if base is None:
            return sorted(set(stores)) if stores is not None else sorted(last)
        covered = dict(zip(base.table.store_id.tolist(), base.table.last_day.tolist(), strict=True))
        too_old = (time.time() - base.created) / 86400 > self.max_age_days
        candidates = sorted(set(stores)) if stores is not None else sorted(set(last) | set(covered))
        return [s for s in candidates
                if s not in last or s not in covered or too_old or last[s] > covered[s]]

    def _version(self, alias: str) -> Version | None:
        """The version an alias points at (with its table), or None when there is none."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.uri)
        try:
            mv = client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None
        version = str(mv.version)
        if version not in self._tables:
            with tempfile.TemporaryDirectory() as tmp:
                path = download(f"models:/{self.model_name}/{version}", tmp, "params.npz", self.uri)
                self._tables[version] = ParamTable.load(path)
            _trim(self._tables, 4)
        return Version(version, self._tables[version], mv.creation_timestamp / 1000)

    def _base(self, target: str | None, champion: Version | None) -> Version | None:
        """What a job moving ``target`` builds on: a challenger newer than the champion, else the champion."""
        if target != "challenger":
            return champion
        challenger = self._version("challenger")
        if challenger is None or (champion is not None and int(challenger.version) <= int(champion.version)):
            return champion
        return challenger

    # ---- running jobs -----------------------------------------------------------------------
    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            job.status = "running"
            try:  # the event goes out before the status says so: a finished job has been announced
                status, result = self._retrain(job)
                if status == "done":
                    events.emit(self.sink, events.event(events.MODEL_REGISTERED, {"job_id": job.id, **result}))
                job.result, job.status = result, status
            except Exception as exc:  # a failed job is reported, never moves an alias
                log.exception("retrain job %s failed", job.id)
                error = f"{type(exc).__name__}: {exc}"
                events.emit(self.sink, events.event(events.RETRAIN_FAILED, {
                    "job_id": job.id, "store_ids": job.stores, "reason": error}))
                job.error, job.status = error, "failed"
            finally:
                job.finished = time.time()
                with self._lock:
                    for s in job.stores:
                        if self.inflight.get(s) == job.id:
                            del self.inflight[s]
                job.done.set()

    def _retrain(self, job: Job) -> tuple[str, dict[str, Any]]:
        """Fit, derive, register and promote: ("done", result), or ("up_to_date", ...) when nothing is
        stale any more."""
        sales, last = self.data.load()
        base = self._base(job.target, self._version("champion"))
        stores = self._stale(job.stores, last, base)  # a job that finished meanwhile may cover some
        if not stores:
            return "up_to_date", _covered(job.stores, base)
        missing = [s for s in stores if s not in last]
        if len(missing) == len(stores):
            raise ValueError(f"no open-day data for store(s) {', '.join(missing)}")
        result = train(sales, self.config, stores=[s for s in stores if s in last], workers=self.workers,
                       progress=False, start_method="spawn")
        if len(result.table) == 0:
            raise ValueError("no store could be fitted: " + "; ".join(f"{f['store_id']}: {f['reason']}"
                                                                       for f in result.failed))
        snap = Snapshot.from_result(result)
        base = self._base(job.target, self._version("champion"))  # may have moved while fitting
        parent = base.version if base else ""
        if base:
            with tempfile.TemporaryDirectory() as tmp:
                folder = download(f"models:/{self.model_name}/{parent}", tmp, uri=self.uri)
                snap = snap.derived_from(folder / "artifacts")
        gate = {r.store_id: r.metrics.get("gate", "n/a") for r in result.results if not r.error}
        alias = job.target if not result.gate_failed else None
        reg = register(snap, uri=self.uri, model_name=self.model_name, alias=alias, parent_version=parent,
                       params={"retrain_job": job.id, "reason": job.reason[:250]})
        return "done", {"version": reg.version, "model_uri": reg.model_uri, "parent_version": parent,
                        "store_ids": sorted(gate), "gate": gate, "promoted": alias,
                        "failed": result.failed + [{"store_id": s, "reason": "no open-day data"} for s in missing]}

    def _alias(self, n_stores: int) -> str:
        if self.promote == "auto":
            return "champion" if n_stores <= self.auto_champion_stores else "challenger"
        return self.promote

    def close(self) -> None:
        self._queue.put(None)


def _covered(stores: list[str] | None, base: Version | None) -> dict[str, Any]:
    """The answer for stores that ``base`` already covers."""
    return {"up_to_date": sorted(set(stores or [])), "version": base.version if base else None}


def _trim(d: OrderedDict, most: int) -> None:
    while len(d) > most:
        d.popitem(last=False)
