"""``python -m pipelines.retrain``: the retrain service (CloudEvents over HTTP).

``POST /`` takes ``com.storecast.retrain.requested`` (data ``{"store_ids": [...], "reason": ..., "force":
false}``), ``dev.knative.sources.ping`` (retrain whatever is stale), ``com.storecast.sales.appended``
(new actual sales: stored, the champion scored, drifting stores refitted) and
``com.storecast.calendar.updated`` (data ``{"calendar": REF}``, a calendar held in the sales store:
``storecast calendar upload``; pushed onto the champion without a refit), binary or structured, and
answers at once: 202 with a job id (or 200 "up to date"; with ``--dry-run`` 200 and what it would
do). ``GET /jobs/{id}`` reports a job (also after a restart), ``GET /rollouts`` the automatic rollouts,
``GET /drift`` the last accuracy report, ``GET /metrics`` Prometheus text, ``GET /healthz`` whether
the job store can be written (503 when not: nothing would be recorded), the worker runs and the sales
store can be read (to a caller without ``refresh``, only the status; the sales store's URL never with
its credentials or query). Results go out as CloudEvents to ``$K_SINK``.

Refused before any work (``serving.access.doorstep``): a body over ``--max-body-bytes`` (413), a cross-site
request (403), a POST that is not a CloudEvent by its headers (415); binary mode: permission by ``ce-type``.

Who may move what: a few named stores need ``refresh``, anything else ``retrain``
(``serving.access.asgi.retrain_permission``); a caller without ``retrain`` (a planner) may ask for
``--refresh-stores-per-day`` stores a UTC day (429 + Retry-After beyond); which alias a version moves
is ``lineage.target_alias`` whoever asked. Events are de-duplicated per authenticated sender.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sqlite3
import time
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pipelines import events
from pipelines.data.sales_store import BadSales, SalesUnavailable, redact
from pipelines.retrain.drift import DriftPolicy, read_groups
from pipelines.retrain.jobs import RetrainManager, Settings
from pipelines.retrain.jobstore import EventKey, JobStoreUnavailable
from pipelines.retrain.settings import RetrainSettings
from pipelines.retrain.watch import Watch
from pipelines.training.fitting import FitConfig
from pipelines.versions.calendar_push import event_ref
from pipelines.versions.registry import RegistryUnavailable
from serving.access.admission import AccessError
from serving.access.asgi import access_headers, admission_of, retrain_permission
from serving.access.doorstep import Doorstep, answer_too_large, cloudevents_only
from serving.access.settings import UVICORN_PROXY_OPTIONS as NO_PROXY_TRUST
from serving.access.settings import AccessSettings, add_access_arguments, build_access, check_exposure
from serving.contract import given_store_ids
from serving.logs import configure_logging
from serving.mlflow_env import use_mlflow_defaults
from serving.settings import settings_parser

log = logging.getLogger("storecast.retrain")
RETRY_AFTER = "30"
UNAVAILABLE = (SalesUnavailable, RegistryUnavailable, JobStoreUnavailable)  # 503 + retry


def authorize(request: Request, permission: str | None) -> None:
    """The one place a route checks the permission it needs (``refresh``: a few named stores, job views;
    ``retrain``: fleet-wide, pings, sales, calendars; None: liveness, metrics), before any work:
    ``app.state.authorize`` raises to refuse (``serving.access.asgi.require_permission``); None lets all in."""
    if (check := request.app.state.authorize) is not None:
        check(request, permission)


def sender(request: Request) -> tuple[str, bool]:
    """(who delivered the request, whether the refresh budget applies): ``id:NAME`` of the authenticated
    identity (budgeted unless it may ``retrain``), or ``anonymous`` (never budgeted: only on loopback)."""
    admission = admission_of(request)
    if admission is None or admission.identity.via == "anonymous":
        return "anonymous", False
    return f"id:{admission.identity.name}", not admission.identity.can("retrain")


async def may_see_details(request: Request) -> bool:
    """Whether ``/healthz`` may say more than its status: an open service (loopback), or a caller whose
    credentials the door admits with ``refresh`` (checked, audited and rate-limited as any request)."""
    access = request.app.state.access
    if access is None or access.open:
        return True
    if "x-api-key" not in request.headers and "authorization" not in request.headers:
        return False
    try:
        admission = await access.admit(access_headers(request.scope["headers"]), request.client, route="/healthz",
                                       protocol="rest", permission="refresh")
    except AccessError:
        return False
    admission.finish(200)
    return True


def create_app(manager: RetrainManager, watch: Watch | None = None, authorize_with: Any = None,
               access: Any = None) -> FastAPI:
    """The ASGI app of the service (``access``: the door's mechanism, for ``/healthz``'s details)."""
    app = FastAPI(title="storecast retrain", docs_url=None, redoc_url=None)
    app.state.authorize, app.state.access = authorize_with, access
    answer_too_large(app)  # a body past --max-body-bytes as it streams: 413 (serving.access.doorstep)

    @app.exception_handler(JobStoreUnavailable)
    async def no_job_store(request: Request, exc: JobStoreUnavailable) -> JSONResponse:
        return _unavailable(exc)

    def health() -> tuple[dict[str, Any], int]:
        source, store = manager.sales.health(), manager.store.health()
        manager.metrics.source.set(1 if source["ok"] else 0)
        manager.metrics.job_store.set(1 if store["ok"] else 0)
        can_work = store["ok"] and manager.working
        fine = can_work and source["ok"] and not store["incident"] and not manager.waiting
        worker = ("stopped" if not manager.working else f"waiting: {manager.waiting}" if manager.waiting else
                  "running")
        return {"status": "ok" if fine else "degraded", "data_source": source, "job_store": store, "worker": worker,
                "dry_run": manager.s.dry_run, "queued": len(set(manager.inflight.values()))}, 200 if can_work else 503

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """503 while the job store cannot be written or the worker is not running (work would be lost); "degraded"
        (200) when the sales store cannot be read or the job store was recreated; details: ``may_see_details``."""
        detailed = await may_see_details(request)
        view, status = await anyio.to_thread.run_sync(health)
        return JSONResponse(view if detailed else {"status": view["status"]}, status_code=status)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        authorize(request, None)
        manager.metrics.source.set(1 if manager.sales.error is None else 0)
        manager.metrics.job_store.set(1 if manager.store.error is None else 0)
        return Response(manager.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/jobs/{job_id}")
    def job(request: Request, job_id: str) -> JSONResponse:
        authorize(request, "refresh")
        found = manager.job(job_id)
        if found is None:
            return JSONResponse({"error": f"no job {job_id!r}"}, status_code=404)
        return JSONResponse(found.view())

    @app.get("/jobs")
    def jobs(request: Request) -> dict[str, Any]:
        authorize(request, "refresh")
        return {"jobs": [j.view() for j in manager.store.recent(50)]}

    @app.get("/rollouts")
    def rollouts(request: Request) -> dict[str, Any]:
        authorize(request, "refresh")
        return {"rollouts": manager.store.rollouts()}

    @app.get("/drift")
    async def drift(request: Request) -> JSONResponse:
        authorize(request, "refresh")
        if watch is None:
            return JSONResponse({"error": "the accuracy watch is off"}, status_code=404)
        if watch.last is None:
            return await _guarded(watch.check)
        return JSONResponse(watch.last.to_dict(watch.policy.worst))

    @app.post("/")
    async def receive(request: Request) -> JSONResponse:
        if "ce-type" in request.headers:  # binary mode: the type's permission before the body is read
            try:
                _before_body(request, request.headers["ce-type"])
            except events.BadEvent as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        body = await request.body()
        who, budgeted = sender(request)
        try:
            ev = events.parse(dict(request.headers), body)
            key = EventKey(who, ev["source"], ev["id"])
            kind = ev["type"]
            if kind == events.SALES_APPENDED:
                authorize(request, "retrain")
                if watch is None:
                    raise events.BadEvent(f"{events.SALES_APPENDED}: the accuracy watch is off (--no-drift)")
                data = _data(ev)
                return await _guarded(lambda: _once(manager, key, lambda: watch.appended(data),
                                                    lambda out: f"sales:{out.get('part', '')}"))
            if kind == events.CALENDAR_UPDATED:
                authorize(request, "retrain")
                ref = event_ref(_data(ev))
                return await _guarded(lambda: _once(manager, key, lambda: _calendar(manager, ref),
                                                    lambda out: f"calendar:{out['version']}"))
            stores, reason, force = _request(ev)
        except (events.BadEvent, BadSales) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        authorize(request, retrain_permission(stores))
        limit = manager.s.refresh_stores_per_day
        asked = len(set(stores)) if stores and budgeted and limit > 0 and not manager.s.dry_run else 0

        def go() -> JSONResponse:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            if asked and manager.known(key) is None:
                charged, used = manager.store.charge(who, day, asked, limit)
                if not charged:
                    return _over_budget(who, day, asked, used, limit)
            try:
                job, coalesced = manager.submit(ev["source"], ev["id"], stores, reason, force, sender=who)
            except BaseException:
                if asked:
                    with contextlib.suppress(JobStoreUnavailable):
                        manager.store.refund(who, day, asked)
                raise
            if isinstance(job, dict):  # a dry run: what it would do
                return JSONResponse(job)
            view = {**job.view(), "coalesced": coalesced}
            return JSONResponse(view, status_code=200 if job.status == "up_to_date" else 202)

        return await _guarded(go)

    return app


def _before_body(request: Request, kind: str) -> None:
    """The least an event of type ``kind`` needs, on its ``ce-type`` alone: ``retrain`` for pings, sales and
    calendars, ``refresh`` (or ``retrain``) for a retrain request (its stores say which); else ``BadEvent``."""
    if kind in (events.PING, events.SALES_APPENDED, events.CALENDAR_UPDATED):
        authorize(request, "retrain")
    elif kind != events.RETRAIN_REQUESTED:
        raise events.BadEvent(_UNSUPPORTED.format(kind=kind[:120]))
    elif (admission := admission_of(request)) is None or not admission.identity.can("retrain"):
        authorize(request, "refresh")


_UNSUPPORTED = (f"unsupported event type {{kind!r}}; expected {events.RETRAIN_REQUESTED}, {events.PING}, "
                f"{events.SALES_APPENDED} or {events.CALENDAR_UPDATED}")


def _over_budget(who: str, day: str, asked: int, used: int, limit: int) -> JSONResponse:
    """429: the identity's refreshes of this UTC day (counted in the job store, so a restart keeps them)."""
    retry = int(86400 - time.time() % 86400) + 1  # until midnight UTC
    return JSONResponse({"error": f"refresh limit: {who.removeprefix('id:')} asked for {used} store refresh(es) "
                                  f"on {day} (UTC); {asked} more would pass the limit of {limit} stores a day "
                                  f"(--refresh-stores-per-day); {max(0, limit - used)} left until midnight UTC",
                         "limit": limit, "used": used, "asked": asked, "retry_after": retry},
                        status_code=429, headers={"retry-after": str(retry)})


def _unavailable(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc), "retry": True}, status_code=503, headers={"retry-after": RETRY_AFTER})


async def _guarded(fn: Any) -> JSONResponse:
    """Run ``fn`` in a thread; an unreadable sales store, registry or job store is a 503 naming it (retry
    later); rows or a calendar that cannot be taken a 400."""
    try:
        out = await anyio.to_thread.run_sync(fn)
    except UNAVAILABLE as exc:
        return _unavailable(exc)
    except BadSales as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return out if isinstance(out, JSONResponse) else JSONResponse(out)


def _once(manager: RetrainManager, key: EventKey, work: Any, tag: Any) -> dict[str, Any] | JSONResponse:
    """``work()`` unless the event was taken already (then what it was); a taken one is remembered as ``tag(out)``."""
    first = manager.store.job_of_event(key)
    if first is not None:
        return {"duplicate": True, "first": first}
    out = work()
    if isinstance(out, dict) and not manager.s.dry_run:
        manager.store.remember_event(key, tag(out))
    return out


def _calendar(manager: RetrainManager, ref: str) -> dict[str, Any] | JSONResponse:
    """A new calendar (``calendar_push.push_ref``: read through the bounded reader, pushed without a refit)."""
    from pipelines.versions.calendar_push import push_ref

    try:
        return push_ref(manager.sales, ref, dry_run=manager.s.dry_run, tracking_uri=manager.s.uri,
                        model_name=manager.s.model_name, keep_unknown=manager.s.keep_unknown)
    except ValueError as exc:  # not allowed, not a calendar, stores the version does not hold: named, nothing done
        return JSONResponse({"error": str(exc)}, status_code=400)
    except SalesUnavailable:
        raise
    except Exception as exc:  # the registry: retry later
        raise RegistryUnavailable(f"calendar push: {type(exc).__name__}: {exc}") from exc


def _data(ev: Any) -> Any:
    data = ev.get_data()
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            raise events.BadEvent("data: not JSON") from None
    return data


def _request(ev: Any) -> tuple[list[str] | None, str, bool]:
    """(store ids or None for "every stale store", reason, force) of an event; BadEvent when unusable."""
    kind = ev["type"]
    if kind == events.PING:
        data = _data(ev) if ev.get_data() else {}
        return None, "scheduled ping", bool(isinstance(data, dict) and data.get("force"))
    if kind != events.RETRAIN_REQUESTED:
        raise events.BadEvent(_UNSUPPORTED.format(kind=str(kind)[:120]))
    data = _data(ev)
    try:
        stores = given_store_ids(data.get("store_ids") if isinstance(data, dict) else None, "data.store_ids")
    except ValueError as exc:
        raise events.BadEvent(str(exc)) from None
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise events.BadEvent("data.force: expected true or false")
    return stores, str(data.get("reason", ""))[:500], force


def build_parser() -> argparse.ArgumentParser:
    """The service's settings (``pipelines.retrain.settings``) plus the access flags (``--auth-file``, OIDC, ...)."""
    parser = settings_parser(RetrainSettings, "python -m pipelines.retrain", __doc__.split("\n\n")[0],
                             "retrain service")
    add_access_arguments(parser)
    return parser


def parse(argv: list[str] | None = None) -> RetrainSettings:
    """The settings from the command line and the ``STORECAST_*`` variables."""
    return RetrainSettings.from_args(build_parser().parse_args(argv))


def settings_from(s: RetrainSettings) -> Settings:
    """What the job manager takes of the settings."""
    same = ("data", "model_name", "state", "promote", "auto_champion_stores", "max_age_days", "workers", "retries",
            "retry_seconds", "max_attempts", "dry_run", "fleet_backend", "refresh_stores_per_day")
    overrides = {k: v for k in ("holdout_days", "gate_margin", "interval_width") if (v := getattr(s, k)) is not None}
    return Settings(**{k: getattr(s, k) for k in same}, sink=os.environ.get("K_SINK"), overrides=overrides,
                    base_config=FitConfig.preset(s.model), gate=s.policy(), reload_urls=s.reload_url,
                    keep_unknown=s.keep_unknown_stores, reload_api_key=s.predictor_key())


def build_rollout(s: RetrainSettings, manager: RetrainManager) -> Any:
    """The automatic rollout of fleet versions (``--rollout``), or None."""
    if s.rollout == "none" or s.dry_run:
        return None
    from pipelines.rollout.controller import LocalTarget, Rollout, RolloutPolicy

    if s.rollout == "kubernetes":
        from pipelines.rollout.canary import KubeTarget

        target: Any = KubeTarget(s.isvc, s.namespace, s.model_name, s.canary_metrics_port)
    else:
        if not s.canary_url:
            raise SystemExit("--rollout local needs --canary-url (the challenger-following predictor)")
        target = LocalTarget(s.canary_url, s.reload_url, s.served_model_name, api_key=manager.s.reload_api_key)
    policy = RolloutPolicy(steps=s.rollout_steps, watch_seconds=s.rollout_watch_seconds,
                           poll_seconds=s.rollout_poll_seconds, ready_timeout=s.rollout_ready_timeout,
                           max_error_ratio=s.canary_max_error_ratio, max_p95_ms=s.canary_max_p95_ms,
                           min_requests=s.canary_min_requests, max_missed_scrapes=s.rollout_max_missed_scrapes)
    return Rollout(manager.registry, target, policy, manager.s.sink, record=manager.store.put_rollout)


def main(argv: list[str] | None = None) -> None:
    s = parse(argv)
    configure_logging(libraries=logging.INFO)
    from serving.access.asgi import guard, require_permission, retrain_rules

    access_settings = AccessSettings.from_args(s.args)  # before any work: a bad auth file stops the start
    try:
        check_exposure(access_settings, s.host)
        access = build_access(access_settings)
    except ValueError as exc:
        raise SystemExit(f"python -m pipelines.retrain: {exc}") from None
    use_mlflow_defaults("retrain")  # a registry outage is a quick 503 + job retry, not minutes
    import uvicorn

    from pipelines.training.fitting import quiet

    quiet()
    import prophet  # noqa: F401 - imported once at start, not on the first job

    try:
        manager = RetrainManager(settings_from(s), start=False)
    except (OSError, sqlite3.Error, JobStoreUnavailable) as exc:  # the state volume: which file and why
        raise SystemExit(f"python -m pipelines.retrain: --state {s.state}: {type(exc).__name__}: {exc}") from None
    manager.rollout = build_rollout(s, manager)
    manager.start()
    watch = None
    if not s.no_drift:
        groups = read_groups(s.store_groups) if s.store_groups else None
        watch = Watch(manager, DriftPolicy(s.drift_factor, s.drift_window_days, s.drift_min_days, s.drift_floor),
                      groups, refit=not s.no_drift_refit)
    log.info("retrain service on %s:%s, registry %s, sales %s, state %s, sink %s%s", s.host, s.port,
             redact(manager.uri), redact(s.data), s.state, redact(manager.s.sink or "-"),
             " (dry run)" if s.dry_run else "")
    inner = create_app(manager, watch, authorize_with=require_permission, access=access)

    def let_go() -> None:  # SIGTERM: the job store let go cleanly (a state file deleted under it written back)
        manager.close()
        manager.store.close()

    inner.router.add_event_handler("shutdown", let_go)
    app = Doorstep(guard(inner, access, retrain_rules), max_body=s.max_body_bytes, limit_name="--max-body-bytes",
                   local_only=access.open, content=cloudevents_only)
    uvicorn.run(app, host=s.host, port=s.port, log_level="warning", **NO_PROXY_TRUST)

