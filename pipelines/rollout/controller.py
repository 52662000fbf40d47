"""Automatic rollout of a fleet version: challenger -> canary -> watch -> promote or roll back.

``Rollout.run(version)`` sends each share of ``RolloutPolicy.steps`` of the traffic to the candidate
in turn and watches it for ``watch_seconds``: the target must be ready (the InferenceService's canary
revision, or the challenger predictor serving that version), and the candidate predictor's own
``/metrics`` (Prometheus text, every replica summed) must show at least ``min_requests`` requests in
the step, an error ratio (answers that are not ``ok`` in ``storecast_requests_total``) at most
``max_error_ratio``, and a p95 latency (``request_predict_seconds`` histogram) at most
``max_p95_ms``. A scrape of ``/metrics`` that fails is retried at the next poll (and noted in the
timeline); only ``max_missed_scrapes`` failures in a row roll the canary back, never one missed read.
Then the ``champion`` alias moves to it (``promote``: compare-and-set; when the champion moved during
the canary, ``lineage.carry_over`` makes the version to promote, with what the champion gained) and
the canary is removed; else the canary is removed, the ``challenger`` alias too, and the reason is
recorded on the version (tags ``rollout``, ``rollout_reason``). Either way a CloudEvent goes out
(``com.storecast.rollout.promoted`` / ``...rolledback``) and the timeline is kept (``record``, e.g. the
``JobStore``'s rollouts; a failing record is logged, it never stops the rollout).

Targets: ``KubeTarget`` (``pipelines.rollout.canary``: the InferenceService through the Kubernetes API) and
``LocalTarget`` (a challenger-following predictor on this machine, for the local end-to-end test and
for people without a cluster).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines import events
from pipelines.rollout.reload import reload_predictors
from pipelines.versions.lineage import carry_over
from pipelines.versions.registry import AliasMoved, Registry
from serving.contract import MODEL_NAME

log = logging.getLogger("storecast.rollout")
REQUESTS = "storecast_requests"
LATENCY = "request_predict_seconds"


@dataclass(frozen=True)
class RolloutPolicy:
    steps: tuple[int, ...] = (10, 50)  # canaryTrafficPercent of each step
    watch_seconds: float = 300.0  # each step
    poll_seconds: float = 10.0
    ready_timeout: float = 600.0  # for the canary to turn ready at each step
    max_error_ratio: float = 0.02
    max_p95_ms: float | None = 500.0
    min_requests: int = 20  # in each step; fewer: too little traffic to judge, rolled back
    latency_metric: str = LATENCY
    max_missed_scrapes: int = 3  # failed reads of the canary's metrics in a row before it is rolled back

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < p < 100 for p in self.steps):
            raise ValueError(f"rollout steps must be percentages between 1 and 99, got {self.steps}")
        if self.max_missed_scrapes < 1:
            raise ValueError(f"max_missed_scrapes must be at least 1, got {self.max_missed_scrapes}")


# ---- the canary's metrics ----------------------------------------------------------------------
@dataclass
class Counters:
    """Cumulative counts of the candidate's replicas (summed)."""

    outcomes: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    versions: set[str] = field(default_factory=set)


def parse_metrics(texts: list[str], latency: str = LATENCY) -> Counters:
    """``Counters`` from the Prometheus text of each replica (``prometheus_client``'s parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = Counters()
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == f"{REQUESTS}_total" and s.labels.get("component", "predictor") == "predictor":
                    key = s.labels.get("outcome", "ok")
                    out.outcomes[key] = out.outcomes.get(key, 0.0) + s.value
                elif s.name == f"{latency}_bucket":
                    le = float(s.labels["le"])
                    out.buckets[le] = out.buckets.get(le, 0.0) + s.value
                elif s.name == "storecast_model_info" and s.value == 1:
                    out.versions.add(s.labels.get("version", ""))
    return out


@dataclass
class Observation:
    requests: float
    errors: float
    error_ratio: float | None
    p95_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"requests": int(self.requests), "errors": int(self.errors),
                "error_ratio": None if self.error_ratio is None else round(self.error_ratio, 4),
                "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 2)}


def observe(before: Counters, after: Counters) -> Observation:
    """What happened between two readings (a counter that went down means a restart: its new value)."""
    def delta(a: float, b: float) -> float:
        return b - a if b >= a else b

    out = {k: delta(before.outcomes.get(k, 0.0), v) for k, v in after.outcomes.items()}
    requests = sum(out.values())
    errors = requests - out.get("ok", 0.0)
    cum = sorted((le, delta(before.buckets.get(le, 0.0), v)) for le, v in after.buckets.items())
    p95 = None
    if cum and cum[-1][1] > 0:
        total = cum[-1][1]
        p95 = next(le for le, c in cum if c >= 0.95 * total) * 1000.0
        if p95 == float("inf"):
            p95 = max((le for le, _ in cum if le != float("inf")), default=0.0) * 1000.0
    return Observation(requests, errors, errors / requests if requests else None, p95)


def judge(obs: Observation, policy: RolloutPolicy, final: bool) -> str | None:
    """Why the canary fails (None: fine so far). Too little traffic only counts at the end of a step."""
    if obs.error_ratio is not None and obs.requests >= policy.min_requests and obs.error_ratio > policy.max_error_ratio:
        return (f"error ratio {obs.error_ratio:.1%} over {int(obs.requests)} requests > "
                f"{policy.max_error_ratio:.1%}")
    if policy.max_p95_ms is not None and obs.p95_ms is not None and obs.requests >= policy.min_requests \
            and obs.p95_ms > policy.max_p95_ms:
        return f"p95 latency {obs.p95_ms:.0f} ms > {policy.max_p95_ms:.0f} ms"
    if final and obs.requests < policy.min_requests:
        return f"too little traffic to judge: {int(obs.requests)} requests (need {policy.min_requests})"
    return None


# ---- targets -----------------------------------------------------------------------------------
class Target(Protocol):
    def start(self, version: str, percent: int) -> None: ...
    def ready(self, version: str) -> tuple[bool, str]: ...
    def metrics(self) -> list[str]: ...
    def promote(self, version: str) -> None: ...  # after the champion alias moved
    def rollback(self, version: str) -> None: ...


class LocalTarget:
    """A challenger-following predictor on this machine (``--model_uri models:/NAME@challenger``): the
    canary is that predictor; the traffic split is whoever calls it (``percent`` is recorded only).
    ``api_key``: sent with the reloads (a protected predictor's repository needs ``admin``)."""

    def __init__(self, canary_url: str, reload_urls: tuple[str, ...] = (), model: str = MODEL_NAME,
                 timeout: float = 5.0, api_key: str | None = None) -> None:
        self.url, self.reload_urls, self.model, self.timeout = canary_url.rstrip("/"), reload_urls, model, timeout
        self._key = api_key

    def start(self, version: str, percent: int) -> None:
        reload_predictors([self.url], self.model, api_key=self._key)

    def ready(self, version: str) -> tuple[bool, str]:
        import httpx

        try:
            r = httpx.get(f"{self.url}/v2/models/{self.model}/ready", timeout=self.timeout)
            served = parse_metrics([httpx.get(f"{self.url}/metrics", timeout=self.timeout).text]).versions
        except httpx.HTTPError as exc:
            return False, f"canary predictor {self.url} unreachable: {exc}"
        if r.status_code != 200:
            return False, f"canary predictor not ready (HTTP {r.status_code})"
        if version not in served:
            return False, f"canary predictor serves version {', '.join(sorted(served)) or '-'}, not {version}"
        return True, "ready"

    def metrics(self) -> list[str]:
        import httpx

        return [httpx.get(f"{self.url}/metrics", timeout=self.timeout).raise_for_status().text]

    def promote(self, version: str) -> None:
        reload_predictors(self.reload_urls, self.model, api_key=self._key)  # now, not at their next refresh

    def rollback(self, version: str) -> None:
        pass


# ---- the controller ----------------------------------------------------------------------------
def promote(registry: Registry, version: str, attempts: int = 5) -> str:
    """Move ``champion`` to ``version`` by compare-and-set; returns the version promoted.

    When the champion is neither ``version`` nor its parent (it moved while the candidate was in its
    canary: a refit, a calendar push), the version promoted is ``lineage.carry_over(registry, version,
    champion)``: the candidate with what the champion gained. A champion moving again meanwhile
    (``AliasMoved``) is carried over afresh; ``AliasMoved`` after ``attempts`` tries.
    """
    version = str(version)
    parent = registry.version(version).tags.get("parent_version", "")
    for attempt in range(attempts):
        mv = registry.alias("champion")
        champion = None if mv is None else str(mv.version)
        chosen = version if champion in (None, version, parent) else carry_over(registry, version, champion)
        try:
            registry.move_alias("champion", chosen, champion)
            return chosen
        except AliasMoved:
            if attempt == attempts - 1:
                raise
            log.warning("champion moved while promoting %s; carrying over again", version)
    return version  # not reached


class Rollout:
    """Runs rollouts one at a time; ``record(version, status, doc)`` keeps each timeline."""

    def __init__(self, registry: Registry, target: Target, policy: RolloutPolicy = RolloutPolicy(),
                 sink: str | None = None, record: Callable[[str, str, dict], None] | None = None) -> None:
        self.registry, self.target, self.policy, self.sink = registry, target, policy, sink
        self._record = record or (lambda *_: None)
        self.stopping = threading.Event()

    def record(self, version: str, status: str, doc: dict[str, Any]) -> None:
        try:
            self._record(version, status, doc)
        except Exception as exc:  # the next record writes the whole document again
            log.error("rollout of %s: could not record its timeline: %s", version, exc)

    def run(self, version: str, job_id: str | None = None) -> dict[str, Any]:
        """Canary, watch and promote or roll back ``version``; returns the rollout's document."""
        version = str(version)
        t0 = time.time()
        doc: dict[str, Any] = {"version": version, "job_id": job_id, "status": "running", "steps": list(
            self.policy.steps), "started": t0, "timeline": []}

        def note(event: str, **extra: Any) -> None:
            doc["timeline"].append({"t": round(time.time() - t0, 2), "event": event, **extra})
            self.record(version, doc["status"], doc)
            log.info("rollout of version %s: %s %s", version, event, extra or "")

        note("started")
        try:
            reason = self._steps(version, note)
        except Exception as exc:  # a failing dependency: never leave a half rollout; the old version serves
            log.exception("rollout of %s failed", version)
            reason = f"rollout error: {type(exc).__name__}: {exc}"
        if reason == "superseded":
            doc["status"] = "superseded"
            note("superseded", reason="the challenger alias moved to a newer version")
            return doc
        try:
            if reason is None:
                promoted = self._retrying(lambda: promote(self.registry, version))
                self._retrying(lambda: self.target.promote(promoted))
                self._retrying(lambda: self._drop_challenger(version))
                self._tag(version, "promoted", f"promoted after {len(self.policy.steps)} canary step(s)")
                doc.update(status="promoted", promoted_version=promoted)
                note("promoted", version=promoted)
                events.emit(self.sink, events.event(events.ROLLOUT_PROMOTED, {
                    "version": promoted, "canary": version, "job_id": job_id, "timeline": doc["timeline"]}))
            else:
                self._retrying(lambda: self.target.rollback(version))
                self._tag(version, "rolledback", reason)
                self._retrying(lambda: self._drop_challenger(version))
                doc.update(status="rolledback", reason=reason)
                note("rolledback", reason=reason)
                events.emit(self.sink, events.event(events.ROLLOUT_ROLLEDBACK, {
                    "version": version, "reason": reason, "job_id": job_id, "timeline": doc["timeline"]}))
        except Exception as exc:  # the cluster or registry kept failing: recorded, for a person (GET /rollouts)
            log.exception("rollout of %s could not finish", version)
            doc.update(status="error", reason=f"{'promote' if reason is None else 'roll back'} failed: "
                       f"{type(exc).__name__}: {exc}" + (f" (rolling back because: {reason})" if reason else ""))
            note("error", reason=doc["reason"])
            self._tag(version, "error", doc["reason"])
        doc["finished"] = time.time()
        self.record(version, doc["status"], doc)
        return doc

    def _steps(self, version: str, note: Callable[..., None]) -> str | None:
        p = self.policy
        for percent in p.steps:
            self.target.start(version, percent)
            note("canary", percent=percent)
            deadline = time.monotonic() + p.ready_timeout
            while True:
                ok, why = self.target.ready(version)
                if ok:
                    break
                if time.monotonic() > deadline:
                    return f"canary not ready after {p.ready_timeout:.0f} s: {why}"
                if self._wait(min(p.poll_seconds, 1.0)):
                    return "rollout stopped: the service is shutting down"
            note("ready", percent=percent)
            missed: list[str] = []  # why the reads in a row failed
            while (before := self._scrape(missed, percent, note)) is None:
                if len(missed) >= p.max_missed_scrapes:
                    return self._unreadable(percent, missed)
                if self._wait(p.poll_seconds):
                    return "rollout stopped: the service is shutting down"
            end = time.monotonic() + p.watch_seconds
            while True:
                final = time.monotonic() >= end
                if self._challenger() not in (version, None):
                    return "superseded"
                if (after := self._scrape(missed, percent, note)) is None:  # unknown: judged at the next read
                    if len(missed) >= p.max_missed_scrapes:
                        return self._unreadable(percent, missed)
                    if self._wait(p.poll_seconds):
                        return "rollout stopped: the service is shutting down"
                    continue
                obs = observe(before, after)
                reason = judge(obs, p, final)
                if reason:
                    note("failed", percent=percent, **obs.as_dict())
                    return f"step {percent}%: {reason}"
                if final:
                    note("passed", percent=percent, **obs.as_dict())
                    break
                if self._wait(min(p.poll_seconds, max(0.05, end - time.monotonic()))):
                    return "rollout stopped: the service is shutting down"
        return None

    def _scrape(self, missed: list[str], percent: int, note: Callable[..., None]) -> Counters | None:
        """The canary's counters now; None when they cannot be read (``missed`` grows; a read empties it)."""
        try:
            counters = parse_metrics(self.target.metrics(), self.policy.latency_metric)
        except Exception as exc:  # unreachable pod, HTTP error, unparsable text: unknown, not bad
            missed.append(f"{type(exc).__name__}: {exc}"[:300])
            note("scrape_missed", percent=percent, missed=len(missed), error=missed[-1])
            return None
        missed.clear()
        return counters

    def _unreadable(self, percent: int, missed: list[str]) -> str:
        return (f"step {percent}%: the canary's metrics could not be read {len(missed)} times in a row "
                f"(last: {missed[-1]})")

    def _retrying(self, fn: Callable[[], Any], attempts: int = 5) -> Any:
        """``fn()``, tried again after 1, 2, 4, 8 s when the cluster or registry fails."""
        for attempt in range(attempts):
            try:
                return fn()
            except Exception:
                if attempt == attempts - 1 or self.stopping.is_set():
                    raise
                log.warning("rollout step failed (attempt %d), retrying", attempt + 1, exc_info=True)
                self.stopping.wait(2**attempt)
        return None

    def _drop_challenger(self, version: str) -> None:
        """Remove ``challenger`` if it still points at ``version`` (under its cross-process lock: a newer
        challenger a job registers meanwhile is kept, for its own rollout)."""
        with self.registry.alias_lock("challenger"):
            if self._challenger() == version:
                self.registry.delete_alias("challenger")

    def _challenger(self) -> str | None:
        mv = self.registry.alias("challenger")
        return None if mv is None else str(mv.version)

    def _wait(self, seconds: float) -> bool:
        return self.stopping.wait(seconds)

    def _tag(self, version: str, outcome: str, reason: str) -> None:
        try:
            self.registry.tag(version, "rollout", outcome)
            self.registry.tag(version, "rollout_reason", reason)
        except Exception:  # the outcome stands; the tag is the record, logged when it cannot be written
            log.exception("could not tag version %s with its rollout outcome", version)
