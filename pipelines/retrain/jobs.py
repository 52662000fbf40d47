"""Retrain jobs: coalescing, one durable job at a time, retries and recovery.

A request names stores (a ping asks for every stale store). Stores the version a job would build on
already covers are answered "up to date" (unless ``force``; the rule is ``publish.stale``); stores
queued or being fitted are coalesced into that job; a redelivered event (same sender, CloudEvent
``source`` + ``id``) gets the job it created, also after a restart (``JobStore``). The rest become
one job, run on one worker thread through ``pipelines.versions.publish``: check again what is stale, fit,
derive from the base, gate, register, move an alias by compare-and-set (which alias:
``lineage.target_alias``, the one rule: ``champion`` for a few stores, ``challenger`` for anything
fleet-sized whoever asked, then an automatic rollout when one is configured), and emit
``model.registered`` (or ``retrain.failed``). Nothing here moves an alias itself.

Bases: the ``champion``; a job that moves ``challenger`` builds on a challenger newer than the
champion, so refits waiting for their canary accumulate in one candidate. With no champion at all
the job builds a first version of every store in the data (never a version of the few asked).

A registry or sales-store failure is retried (``retries``, backoff); anything else fails the job with
its reason. When the job store cannot be written (a full disk) a request is refused with 503 rather
than accepted unrecorded, and the worker keeps the job and tries again later: it never dies. A job
cut short by a restart is recovered on start (``recover``): its MLflow run ended FAILED, a version
it registered without moving its alias tagged ``orphaned`` (``pipelines.retrain.recovery``), and the
job queued again (up to ``max_attempts``) or failed with the reason.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipelines import events
from pipelines.data.sales_store import SalesStore, SalesUnavailable
from pipelines.retrain.jobstore import EventKey, Job, JobStore, JobStoreUnavailable
from pipelines.retrain.metrics import ServiceMetrics
from pipelines.retrain.recovery import clean_up, clean_up_quietly, interrupted
from pipelines.retrain.settings import PROMOTE, RetrainSettings
from pipelines.rollout.reload import reload_predictors
from pipelines.training.fitting import FitConfig
from pipelines.versions.lineage import target_alias
from pipelines.versions.publish import GatePolicy, PublishError, download_parent, publish, stale
from pipelines.versions.registry import Registry, RegistryUnavailable

log = logging.getLogger("storecast.retrain")
TRANSIENT = (RegistryUnavailable, SalesUnavailable, OSError)
PAUSE_ENV = "STORECAST_FAULT_PAUSE"  # "PHASE:SECONDS": sleep when a job reaches PHASE (fault-injection tests)


D = RetrainSettings  # its field defaults (a dataclass keeps them as class attributes)


@dataclass
class Settings:
    """How the service builds versions; the defaults are the service's settings' (``RetrainSettings``)."""

    data: str
    model_name: str = D.model_name
    uri: str | None = None
    state: str = D.state
    promote: str = D.promote
    auto_champion_stores: int = D.auto_champion_stores
    max_age_days: float = D.max_age_days
    workers: int = D.workers
    sink: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # FitConfig fields over the inherited ones
    base_config: FitConfig = field(default_factory=FitConfig)  # a first version (no champion yet)
    gate: GatePolicy = field(default_factory=GatePolicy)
    retries: int = D.retries
    retry_seconds: float = D.retry_seconds
    max_attempts: int = D.max_attempts  # runs of one job cut short by restarts before it is failed
    dry_run: bool = False
    reload_urls: tuple[str, ...] = ()  # champion-following predictors to reload at once (local)
    reload_api_key: str | None = field(default=None, repr=False)  # sent with the reloads (admin), never shown
    fleet_backend: str = D.fleet_backend  # or "rayjob" (pipelines.training.rayjob.submit_fleet_retrain)
    refresh_stores_per_day: int = D.refresh_stores_per_day  # per identity without the retrain permission
    keep_unknown: bool = False  # keep appended sales rows of stores the champion does not hold


class RetrainManager:
    """Accepts retrain requests, coalesces them and runs them one after another, durably."""

    def __init__(self, settings: Settings, *, rollout: Any = None, start: bool = True) -> None:
        if settings.promote not in PROMOTE:
            raise ValueError(f"promote must be one of {PROMOTE}, got {settings.promote!r}")
        self.s = settings
        self.sales = SalesStore(settings.data)
        self.registry = Registry(settings.uri, settings.model_name)
        self.store = JobStore(settings.state)
        self.metrics = ServiceMetrics()
        self.rollout = rollout
        self.inflight: dict[str, str] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._rollouts: queue.Queue[tuple[str, str | None] | None] = queue.Queue()
        self._stop = threading.Event()
        self._pause = _pause_setting()
        self._worker: threading.Thread | None = None
        self.waiting: str | None = None  # why the worker waits for the job store (None: it does not)
        self.watch: Any = None  # pipelines.retrain.watch.Watch (drift), set by the service
        if start:
            self.start()

    def start(self) -> None:
        """Recover what a restart cut short, then start the worker (and the rollout thread)."""
        self.recover()
        self._worker = threading.Thread(target=self._run, name="retrain-worker", daemon=True)
        self._worker.start()
        if self.rollout is not None:
            threading.Thread(target=self._run_rollouts, name="rollout", daemon=True).start()

    @property
    def uri(self) -> str:
        return self.registry.uri

    @property
    def working(self) -> bool:
        """The worker thread runs (False before ``start`` and after ``close``)."""
        return self._worker is not None and self._worker.is_alive()

    # ---- accepting requests -----------------------------------------------------------------
    def job(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def plan(self, stores: list[str] | None, force: bool = False) -> dict[str, Any]:
        """What a request would do now: base version, target alias, stores to fit and up to date."""
        sales = self.sales.load()
        champion = self.registry.alias("champion")
        few = self.s.auto_champion_stores
        if champion is None:
            return {"base_version": None, "target": target_alias(self.s.promote, len(sales.last), False, few),
                    "kind": "bootstrap", "fit": sorted(sales.last), "up_to_date": [],
                    "note": "no champion yet: a first version of every store in the data"}
        table = self.registry.table(str(champion.version))
        too_old = (time.time() - champion.creation_timestamp / 1000) / 86400 > self.s.max_age_days
        todo = stale(sales.last, table, stores, every=force or too_old)
        target = target_alias(self.s.promote, len(todo), True, few)
        base = self._base(target, str(champion.version))
        if base != str(champion.version):
            todo = stale(sales.last, self.registry.table(base), todo, every=force)
        asked = sorted(set(stores or []))
        return {"base_version": base, "target": target, "kind": "ping" if stores is None else "requested",
                "fit": todo, "up_to_date": [s for s in asked if s not in todo]}

    def submit(self, source: str, event_id: str, stores: list[str] | None, reason: str = "", force: bool = False,
               kind: str | None = None, *, sender: str) -> tuple[Job | dict[str, Any], dict[str, str]]:
        """A job for the stale stores among ``stores`` (None: every stale store); returns (job, coalesced).
        With ``dry_run`` the answer is the plan (nothing queued, nothing registered). ``sender``: who
        delivered the event (de-duplication is per sender). ``JobStoreUnavailable`` when it cannot be
        recorded: nothing is queued then."""
        key = EventKey(sender, source, event_id)
        if (job := self.known(key)) is not None:
            return job, {}
        plan = self.plan(stores, force)
        if self.s.dry_run:
            return {"dry_run": True, "would": plan}, {}
        with self._lock:
            if (job := self.known(key)) is not None:
                return job, {}
            coalesced = {s: self.inflight[s] for s in plan["fit"] if s in self.inflight}
            todo = [s for s in plan["fit"] if s not in self.inflight]
            kind = kind or plan["kind"]
            if todo:
                job = Job(uuid.uuid4().hex[:12], todo, reason or plan.get("note", ""), kind, plan["target"], force)
                self.store.put(job, key)  # recorded (with its event) before it is queued, or a 503
                for s in todo:
                    self.inflight[s] = job.id
                self._queue.put(job.id)
            elif coalesced:
                job = self.store.get(next(iter(coalesced.values())))
                self.store.remember_event(key, job.id)
            else:
                job = Job(uuid.uuid4().hex[:12], [], reason, kind, plan["target"], force, status="up_to_date",
                          phase="finished", finished=time.time(),
                          result={"up_to_date": plan["up_to_date"], "version": plan["base_version"]})
                self.store.put(job, key)
                self.metrics.jobs.labels("up_to_date").inc()
            self.metrics.queue.set(len(set(self.inflight.values())))
        return job, coalesced

    def known(self, key: EventKey) -> Job | None:
        """The job an event (this sender's ``source`` + ``id``) asked for before, if any."""
        found = self.store.job_of_event(key)
        return self.store.get(found) if found is not None else None

    def _base(self, target: str | None, champion: str) -> str:
        """What a job moving ``target`` builds on: a challenger newer than the champion, else the champion."""
        if target != "challenger":
            return champion
        challenger = self.registry.alias("challenger")
        if challenger is None or int(challenger.version) <= int(champion):
            return champion
        return str(challenger.version)

    # ---- running jobs -----------------------------------------------------------------------
    def _run(self) -> None:
        """The worker: one job at a time; nothing a job raises stops it. A job store that cannot be written
        keeps the job (in flight, queued again after a pause) until it can."""
        while (job_id := self._queue.get()) is not None:
            job = None
            try:
                job = self.store.get(job_id)
                if job is not None:
                    self._attempts(job)
                self.waiting = None
            except JobStoreUnavailable as exc:
                self.waiting = f"job {job_id} waits for the job store: {exc}"
                log.error("retrain %s", self.waiting)
                if not self._stop.wait(max(1.0, self.s.retry_seconds)):
                    self._queue.put(job_id)
                continue
            except Exception:  # a defect: logged, the job left as recorded (recovered at the next start)
                log.exception("retrain job %s: unexpected error", job_id)
            if job is not None:
                with self._lock:
                    for s in job.stores or []:
                        if self.inflight.get(s) == job.id:
                            del self.inflight[s]
                    self.metrics.queue.set(len(set(self.inflight.values())))

    def _attempts(self, job: Job) -> None:
        while True:
            job.attempt += 1
            job.status, job.started, job.error = "running", time.time(), None
            self._phase(job, "fitting")
            try:
                clean_up(job, self.registry, self.store)
                status, result = self._retrain(job)
            except JobStoreUnavailable:
                raise
            except TRANSIENT as exc:
                if self._failed_attempt(job, exc, transient=True):
                    continue
                return
            except Exception as exc:  # a failed job is reported, never moves an alias
                if not isinstance(exc, PublishError | ValueError):
                    log.exception("retrain job %s failed", job.id)
                self._failed_attempt(job, exc, transient=False)
                return
            if status == "done":
                events.emit(self.s.sink, events.event(events.MODEL_REGISTERED, {"job_id": job.id, **result}))
            job.result, job.status, job.phase, job.finished = result, status, "finished", time.time()
            self._put_durably(job)
            self.metrics.jobs.labels(status).inc()
            return

    def _put_durably(self, job: Job) -> None:
        """Record a finished job, waiting for the job store if it cannot be written now (the work is done:
        repeating it is not the answer)."""
        while True:
            try:
                self.store.put(job)
                return
            except JobStoreUnavailable as exc:
                self.waiting = f"job {job.id} finished; recording it waits for the job store: {exc}"
                log.error("retrain %s", self.waiting)
                if self._stop.wait(max(1.0, self.s.retry_seconds)):
                    raise

    def _failed_attempt(self, job: Job, exc: Exception, transient: bool) -> bool:
        """Record a failed attempt; True when it will be retried (after a backoff)."""
        error = f"{type(exc).__name__}: {exc}"
        entry = {"attempt": job.attempt, "error": error, "at": time.time(), "phase": job.phase}
        if job.run_id:
            entry.update(run_id=job.run_id)  # ended FAILED by MLflow's run context
        if job.version and job.phase == "registered":
            entry.update(version=job.version, orphan_tagged=False)
        job.history.append(entry)
        job.run_id, job.version, job.error = None, None, error
        if transient and job.attempt < self.s.retries and not self._stop.is_set():
            job.status = "retrying"
            self.store.put(job)
            self.metrics.jobs.labels("retried").inc()
            log.warning("retrain job %s: attempt %d failed (%s); retrying", job.id, job.attempt, error)
            self._stop.wait(self.s.retry_seconds * 2 ** (job.attempt - 1))
            return True
        with_cleanup = clean_up_quietly(job, self.registry, self.store)
        job.status, job.phase, job.finished = "failed", "finished", time.time()
        self.store.put(job)
        self.metrics.jobs.labels("failed").inc()
        events.emit(self.s.sink, events.event(events.RETRAIN_FAILED, {
            "job_id": job.id, "store_ids": job.stores, "reason": error, "cleanup": with_cleanup}))
        return False

    def _retrain(self, job: Job) -> tuple[str, dict[str, Any]]:
        """Fit, derive, gate, register and alias through ``publish``."""
        if job.target == "challenger" and self.s.fleet_backend == "rayjob":
            from pipelines.retrain.rayjob import fleet_on_rayjob

            return fleet_on_rayjob(self, job)
        sales = self.sales.load()
        champion = self.registry.alias("champion")
        base = self._base(job.target, str(champion.version)) if champion is not None else None
        parent, tmp = download_parent(self.registry, base) if base else (None, None)
        try:
            champion_table = self.registry.table(str(champion.version)) if champion is not None and \
                base != str(champion.version) else None
            pub = publish(sales, self.registry, stores=job.stores, parent=parent, config=self.s.base_config,
                          overrides=self.s.overrides, gate=self.s.gate, alias=job.target or None,
                          auto_champion_stores=self.s.auto_champion_stores, force=job.force,
                          champion=champion_table, workers=self.s.workers, start_method="spawn",
                          params={"retrain_job": job.id, "reason": job.reason[:250]},
                          reason=f"{job.kind} (retrain job {job.id}): {job.reason}"[:500],
                          tags={"retrain_job": job.id}, on_run=lambda r: self._phase(job, "registering", run_id=r),
                          on_version=lambda v: self._phase(job, "registered", version=v),
                          parent_alias=None if base is None else "champion" if champion is not None and
                          base == str(champion.version) else "challenger")
        finally:
            if tmp is not None:
                tmp.cleanup()
        if pub.status == "up_to_date":
            return "up_to_date", {"up_to_date": sorted(job.stores or []), "version": pub.version}
        self._phase(job, "aliased")
        self.metrics.fit.observe(pub.seconds.get("fit", 0.0))
        result = {"version": pub.version, "model_uri": pub.model_uri, "parent_version": pub.parent_version,
                  "store_ids": pub.refitted, "gate": pub.store_gate, "promoted": pub.alias, "failed": pub.failed,
                  "version_gate": {"passed": pub.gate.passed, "reasons": pub.gate.reasons},
                  "config": pub.config, "seconds": pub.seconds, "alias_retries": pub.retries}
        if pub.alias == "champion":
            reload_predictors(self.s.reload_urls, api_key=self.s.reload_api_key)
        elif pub.alias == "challenger" and self.rollout is not None:
            result["rollout"] = "queued"
            self._rollouts.put((pub.version, job.id))
        return "done", result

    def _phase(self, job: Job, phase: str, **fields: Any) -> None:
        job.phase = phase
        for k, v in fields.items():
            setattr(job, k, v)
        self.store.put(job)
        if self._pause and self._pause[0] == phase:
            log.warning("fault injection: job %s paused %.0f s at %s", job.id, self._pause[1], phase)
            time.sleep(self._pause[1])

    # ---- recovery ---------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Jobs a restart cut short: clean up after them and queue them again (or fail them)."""
        recovered = []
        for job in self.store.unfinished():
            if job.status != "queued" or job.attempt:
                self.metrics.jobs.labels("interrupted").inc()
                entry = interrupted(job)
                if job.attempt >= self.s.max_attempts:
                    clean_up_quietly(job, self.registry, self.store)
                    job.status, job.phase, job.finished = "failed", "finished", time.time()
                    job.error = f"{entry['error']}; gave up after {job.attempt} attempt(s)"
                    self.store.put(job)
                    continue
            job.status, job.phase = "queued", "queued"
            clean_up_quietly(job, self.registry, self.store)
            self.store.put(job)
            for s in job.stores or []:
                self.inflight[s] = job.id
            self._queue.put(job.id)
            recovered.append(job.id)
        for doc in self.store.rollouts("running"):
            if self.rollout is not None:
                self._rollouts.put((doc["version"], doc.get("job_id")))
        return recovered

    # ---- rollouts ---------------------------------------------------------------------------
    def _run_rollouts(self) -> None:
        while (item := self._rollouts.get()) is not None:
            version, job_id = item
            try:  # never let the rollout thread die; the document says where it stopped
                doc = self.rollout.run(version, job_id)
                if doc["status"] in ("promoted", "rolledback", "superseded", "error"):
                    self.metrics.rollouts.labels(doc["status"]).inc()
                if job_id and (job := self.store.get(job_id)) is not None and job.result:
                    job.result["rollout"] = {k: doc.get(k) for k in ("status", "reason", "promoted_version")}
                    self.store.put(job)
            except Exception:
                log.exception("rollout of version %s failed", version)

    def close(self) -> None:
        self._stop.set()
        if self.rollout is not None:
            self.rollout.stopping.set()
            self._rollouts.put(None)
        self._queue.put(None)


def _pause_setting() -> tuple[str, float] | None:
    text = os.environ.get(PAUSE_ENV, "")
    phase, _, seconds = text.partition(":")
    try:
        return (phase, float(seconds)) if phase else None
    except ValueError:
        return None
