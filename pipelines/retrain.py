"""``python -m pipelines.retrain``: the retrain service (CloudEvents over HTTP).

``POST /`` takes ``com.storecast.retrain.requested`` (data ``{"store_ids": [...], "reason": ..., "force":
false}``), ``dev.knative.sources.ping`` (retrain whatever is stale) and ``com.storecast.sales.appended``
(new actual sales: stored, the champion scored, drifting stores refitted), binary or structured, and
answers at once: 202 with a job id (or 200 "up to date"; with ``--dry-run`` 200 and what it would
do). ``GET /jobs/{id}`` reports a job (also after a restart), ``GET /rollouts`` the automatic rollouts,
``GET /drift`` the last accuracy report, ``GET /metrics`` Prometheus text, ``GET /healthz`` liveness
and whether the sales store can be read. Results go out as CloudEvents to ``$K_SINK``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pipelines import events
from pipelines.drift import DriftPolicy, read_groups
from pipelines.fitting import FitConfig
from pipelines.publish import GatePolicy
from pipelines.registry import RegistryUnavailable
from pipelines.retrain_jobs import PROMOTE, RetrainManager, Settings
from pipelines.retrain_watch import Watch
from pipelines.sales_store import BadSales, SalesUnavailable

log = logging.getLogger("storecast.retrain")
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # a registry outage is a quick 503 + job retry, not 4 min
RETRY_AFTER = "30"
REFRESH_MAX_STORES = 20  # more named stores than this is a fleet-wide retrain (permission "retrain")


def authorize(request: Request, permission: str | None) -> None:
    """The one place a request is authenticated and authorised, called first by every route, before any work.

    ``app.state.authorize(request, permission)`` raises to refuse (e.g. ``serving.access_asgi``: the
    middleware admits the caller, this checks the permission the route needs); None lets all in.
    Permissions: ``refresh`` (a few named stores, job views), ``retrain`` (fleet-wide, pings, new sales),
    None (liveness and metrics).
    """
    check = getattr(request.app.state, "authorize", None)
    if check is not None:
        check(request, permission)


def create_app(manager: RetrainManager, watch: Watch | None = None, authorize_with: Any = None) -> FastAPI:
    """The ASGI app of the service."""
    app = FastAPI(title="storecast retrain", docs_url=None, redoc_url=None)
    app.state.authorize = authorize_with

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        authorize(request, None)
        source = manager.sales.health()
        manager.metrics.source.set(1 if source["ok"] else 0)
        return {"status": "ok" if source["ok"] else "degraded", "data_source": source,
                "dry_run": manager.s.dry_run, "queued": len(set(manager.inflight.values()))}

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        authorize(request, None)
        manager.metrics.source.set(1 if manager.sales.error is None else 0)
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
        body = await request.body()
        try:
            ev = events.parse(dict(request.headers), body)
            kind = ev["type"]
            if kind == events.SALES_APPENDED:
                authorize(request, "retrain")
                if watch is None:
                    raise events.BadEvent(f"{events.SALES_APPENDED}: the accuracy watch is off (--no-drift)")
                data = _data(ev)
                return await _guarded(lambda: _dedupe_sales(manager, watch, ev, data))
            if kind == events.CALENDAR_UPDATED:
                authorize(request, "retrain")
                path = _calendar_path(_data(ev))
                return await _guarded(lambda: _calendar(manager, ev, path))
            stores, reason, force = _request(ev)
        except (events.BadEvent, BadSales) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        authorize(request, "refresh" if stores and len(stores) <= REFRESH_MAX_STORES else "retrain")

        def go() -> JSONResponse:
            job, coalesced = manager.submit(ev["source"], ev["id"], stores, reason, force)
            if isinstance(job, dict):  # a dry run: what it would do
                return JSONResponse(job)
            view = {**job.view(), "coalesced": coalesced}
            return JSONResponse(view, status_code=200 if job.status == "up_to_date" else 202)

        return await _guarded(go)

    return app


async def _guarded(fn: Any) -> JSONResponse:
    """Run ``fn`` in a thread; an unreadable sales store or registry is a 503 naming it (retry later)."""
    try:
        out = await anyio.to_thread.run_sync(fn)
    except (SalesUnavailable, RegistryUnavailable) as exc:
        return JSONResponse({"error": str(exc), "retry": True}, status_code=503, headers={"retry-after": RETRY_AFTER})
    except BadSales as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return out if isinstance(out, JSONResponse) else JSONResponse(out)


def _dedupe_sales(manager: RetrainManager, watch: Watch, ev: Any, data: Any) -> dict[str, Any]:
    key = manager.store.job_of_event(ev["source"], ev["id"])
    if key is not None:
        return {"duplicate": True, "first": key}
    out = watch.appended(data)
    if not manager.s.dry_run:
        manager.store.remember_event(ev["source"], ev["id"], f"sales:{out.get('part', '')}")
    return out


def _calendar_path(data: Any) -> str:
    path = data.get("path") if isinstance(data, dict) else None
    if not isinstance(path, str) or not path.strip():
        raise events.BadEvent("data.path: expected where the new calendar file is (test.csv layout)")
    return path.strip()


def _calendar(manager: RetrainManager, ev: Any, path: str) -> dict[str, Any] | JSONResponse:
    """A new calendar: a derived version with the same parameters, champion moved (no refit, seconds)."""
    from pipelines.calendar_push import main_push

    key = manager.store.job_of_event(ev["source"], ev["id"])
    if key is not None:
        return {"duplicate": True, "first": key}
    if manager.s.dry_run:
        return {"dry_run": True, "would": f"register the champion again with the calendar {path} and move champion"}
    try:
        out = main_push(path, tracking_uri=manager.s.uri, model_name=manager.s.model_name, alias="champion")
    except ValueError as exc:  # an unreadable or foreign calendar: named, nothing registered
        return JSONResponse({"error": f"calendar {path}: {exc}"}, status_code=400)
    except Exception as exc:  # the registry: retry later
        raise RegistryUnavailable(f"calendar push: {type(exc).__name__}: {exc}") from exc
    manager.store.remember_event(ev["source"], ev["id"], f"calendar:{out['version']}")
    return out


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
        raise events.BadEvent(f"unsupported event type {kind!r}; expected {events.RETRAIN_REQUESTED}, {events.PING}, "
                              f"{events.SALES_APPENDED} or {events.CALENDAR_UPDATED}")
    data = _data(ev)
    stores = data.get("store_ids") if isinstance(data, dict) else None
    if not isinstance(stores, list) or not stores or not all(isinstance(s, str | int) and str(s).strip()
                                                            for s in stores):
        raise events.BadEvent("data.store_ids: expected a non-empty list of store ids")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise events.BadEvent("data.force: expected true or false")
    return [str(s).strip() for s in stores], str(data.get("reason", ""))[:500], force


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages like 10,50; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from pipelines.retrain_flags import add_arguments

    p = argparse.ArgumentParser(prog="python -m pipelines.retrain", description=__doc__.split("\n\n")[0])
    add_arguments(p, PROMOTE, _steps)
    from serving.access_settings import add_access_arguments  # --auth-file, OIDC, rate limits (issue 13)

    add_access_arguments(p)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k) for k in ("holdout_days", "gate_margin", "interval_width")
                 if getattr(args, k) is not None}
    base = FitConfig.preset(args.model)
    return Settings(data=args.data, model_name=args.model_name, state=args.state, promote=args.promote,
                    auto_champion_stores=args.auto_champion_stores, max_age_days=args.max_age_days,
                    workers=args.workers, sink=os.environ.get("K_SINK"), overrides=overrides, base_config=base,
                    gate=GatePolicy(args.gate_min_pass_share, args.gate_plausible_factor), retries=args.retries,
                    retry_seconds=args.retry_seconds, max_attempts=args.max_attempts, dry_run=args.dry_run,
                    reload_urls=tuple(args.reload_url or ()), fleet_backend=args.fleet_backend)


def build_rollout(args: argparse.Namespace, manager: RetrainManager) -> Any:
    """The automatic rollout of fleet versions (``--rollout``), or None."""
    if args.rollout == "none" or args.dry_run:
        return None
    from pipelines.rollout import LocalTarget, Rollout, RolloutPolicy

    if args.rollout == "kubernetes":
        from pipelines.canary import KubeTarget

        target: Any = KubeTarget(args.isvc, args.namespace, args.model_name, args.canary_metrics_port)
    else:
        if not args.canary_url:
            raise SystemExit("--rollout local needs --canary-url (the challenger-following predictor)")
        target = LocalTarget(args.canary_url, tuple(args.reload_url or ()), args.model_name_served)
    policy = RolloutPolicy(steps=args.rollout_steps, watch_seconds=args.rollout_watch_seconds,
                           poll_seconds=args.rollout_poll_seconds, ready_timeout=args.rollout_ready_timeout,
                           max_error_ratio=args.canary_max_error_ratio, max_p95_ms=args.canary_max_p95_ms,
                           min_requests=args.canary_min_requests)
    from pipelines.publish import carry_over

    def before_promote(version: str) -> str:
        champion = manager.registry.alias("champion")
        parent = manager.registry.version(version).tags.get("parent_version", "")
        if champion is None or str(champion.version) in (version, parent):
            return version
        return carry_over(manager.registry, version, str(champion.version))

    return Rollout(manager.registry, target, policy, manager.s.sink, record=manager.record_rollout,
                   before_promote=before_promote)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from serving.access_asgi import guard, require_permission, retrain_rules
    from serving.access_settings import AccessSettings, build_access, check_exposure

    access_settings = AccessSettings.from_args(args)  # before any work: a bad auth file stops the start
    try:
        check_exposure(access_settings, args.host)
        access = build_access(access_settings)
    except ValueError as exc:
        raise SystemExit(f"python -m pipelines.retrain: {exc}") from None
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import uvicorn

    from pipelines.fitting import quiet

    quiet()
    import prophet  # noqa: F401 - imported once at start, not on the first job

    try:
        manager = RetrainManager(settings_from(args), start=False)
    except (OSError, sqlite3.Error) as exc:  # the state volume: say which file and why, not a traceback
        raise SystemExit(f"python -m pipelines.retrain: --state {args.state}: {type(exc).__name__}: {exc}") from None
    manager.rollout = build_rollout(args, manager)
    manager.start()
    watch = None
    if not args.no_drift:
        groups = read_groups(args.store_groups) if args.store_groups else None
        watch = Watch(manager, DriftPolicy(args.drift_factor, args.drift_window_days, args.drift_min_days,
                                           args.drift_floor), groups, refit=not args.no_drift_refit)
    log.info("retrain service on %s:%s, registry %s, sales %s, state %s, sink %s%s", args.host, args.port,
             manager.uri, args.data, args.state, manager.s.sink or "-", " (dry run)" if args.dry_run else "")
    app = guard(create_app(manager, watch, authorize_with=require_permission), access, retrain_rules)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
