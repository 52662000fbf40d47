"""What an unfinished attempt of a retrain job leaves behind, and cleaning it up.

An attempt may stop after it started an MLflow run or registered a version: it failed
(``RetrainManager._failed_attempt``) or a restart cut it short (``interrupted``). Its entry in the job's
history says what it left; ``clean_up`` ends a run the restart left open (FAILED) and tags a version no
alias points at ``orphaned`` (it is never served). It runs before the job's next attempt and when the
job is given up; a registry that is down postpones it (``clean_up_quietly``), to the next attempt.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipelines.retrain.jobstore import Job, JobStore
from pipelines.versions.registry import Registry

log = logging.getLogger("storecast.retrain")
ALIASES = ("champion", "challenger")  # a version one of these points at is served, never orphaned


def interrupted(job: Job) -> dict[str, Any]:
    """Record in ``job.history`` the attempt a restart cut short (its run and version, to clean up); returns
    the entry. The job's ``run_id`` and ``version`` are cleared: they belong to that attempt."""
    entry: dict[str, Any] = {"attempt": job.attempt, "at": time.time(), "phase": job.phase,
                             "error": f"interrupted: the service stopped while the job was {job.status} ({job.phase})"}
    if job.run_id:
        entry.update(run_id=job.run_id, run_ended=False)
    if job.version and job.phase in ("registered", "aliased"):
        entry.update(version=job.version, orphan_tagged=False)
    job.history.append(entry)
    job.run_id = job.version = None
    return entry


def clean_up(job: Job, registry: Registry, store: JobStore) -> None:
    """End the runs and tag the versions that earlier attempts left behind, then record the job (raises when
    the registry is down)."""
    for entry in job.history:
        if entry.get("run_id") and entry.get("run_ended") is False:
            registry.end_run(entry["run_id"], "FAILED")
            entry["run_ended"] = True
        if entry.get("version") and entry.get("orphan_tagged") is False:
            v = entry["version"]
            aliases = [a for a in ALIASES if (mv := registry.alias(a)) is not None and str(mv.version) == v]
            if not aliases:
                registry.tag(v, "orphaned", f"job {job.id} stopped after registering it, before moving "
                             f"{job.target}; no alias points at it, so it is never served")
            entry["orphan_tagged"] = not aliases
            entry["alias_moved"] = aliases
    store.put(job)


def clean_up_quietly(job: Job, registry: Registry, store: JobStore) -> str:
    """``clean_up``, never raising: ``"done"``, or ``"postponed: why"`` (retried when the job runs again)."""
    try:
        clean_up(job, registry, store)
        return "done"
    except Exception as exc:  # retried when the job runs again; recorded meanwhile
        log.warning("cleanup of job %s postponed: %s", job.id, exc)
        return f"postponed: {exc}"
