"""``python -m pipelines.retrain``: the retrain service (CloudEvents over HTTP).

``POST /`` takes ``com.storecast.retrain.requested`` (data ``{"store_ids": [...], "reason": ...}``) and
``dev.knative.sources.ping`` (retrain whatever is stale), binary or structured, and answers at once:
202 with a job id (or 200 "up to date"). ``GET /jobs/{id}`` reports a job, ``GET /healthz`` liveness.
Results go out as CloudEvents to ``$K_SINK`` (set by a SinkBinding) when it is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pipelines import events
from pipelines.fitting import FitConfig
from pipelines.retrain_jobs import PROMOTE, RetrainManager

log = logging.getLogger("storecast.retrain")


def create_app(manager: RetrainManager) -> FastAPI:
    """The ASGI app of the service."""
    app = FastAPI(title="storecast retrain", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> JSONResponse:
        found = manager.jobs.get(job_id)
        if found is None:
            return JSONResponse({"error": f"no job {job_id!r}"}, status_code=404)
        return JSONResponse(found.view())

    @app.get("/jobs")
    def jobs() -> dict[str, Any]:
        return {"jobs": [j.view() for j in list(manager.jobs.values())[-50:]]}

    @app.post("/")
    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            ev = events.parse(dict(request.headers), body)
            stores, reason = _request(ev)
        except events.BadEvent as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        job, coalesced = await _in_thread(manager.submit, ev["id"], stores, reason)
        view = {**job.view(), "coalesced": coalesced}
        return JSONResponse(view, status_code=200 if job.status == "up_to_date" else 202)

    return app


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


def _request(ev: Any) -> tuple[list[str] | None, str]:
    """(store ids or None for "every stale store", reason) of an event; BadEvent when unusable."""
    kind = ev["type"]
    if kind == events.PING:
        return None, "scheduled ping"
    if kind != events.RETRAIN_REQUESTED:
        raise events.BadEvent(f"unsupported event type {kind!r}; expected {events.RETRAIN_REQUESTED} or {events.PING}")
    data = ev.get_data()
    if isinstance(data, bytes | str):
        import json

        try:
            data = json.loads(data)
        except ValueError:
            raise events.BadEvent("data: not JSON") from None
    stores = data.get("store_ids") if isinstance(data, dict) else None
    if not isinstance(stores, list) or not stores or not all(isinstance(s, str | int) and str(s).strip()
                                                            for s in stores):
        raise events.BadEvent("data.store_ids: expected a non-empty list of store ids")
    return [str(s).strip() for s in stores], str(data.get("reason", ""))[:500]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.retrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the latest sales table (file path or http(s) URL)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--model-name", default="storecast")
    p.add_argument("--max-age-days", type=float, default=30.0,
                   help="a ping refits every store when the champion version is older than this")
    p.add_argument("--promote", choices=PROMOTE, default="auto",
                   help="alias a passing version moves: champion, challenger (canary), or auto: champion for "
                        "up to --auto-champion-stores stores, else challenger")
    p.add_argument("--auto-champion-stores", type=int, default=20)
    p.add_argument("--workers", type=int, default=1, help="fitting processes for big jobs")
    p.add_argument("--holdout-days", type=int, default=42)
    p.add_argument("--gate-margin", type=float, default=0.10)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    from pipelines.fitting import quiet

    quiet()
    import prophet  # noqa: F401 - imported once at start, not on the first job

    manager = RetrainManager(args.data, model_name=args.model_name, promote=args.promote,
                             auto_champion_stores=args.auto_champion_stores, max_age_days=args.max_age_days,
                             workers=args.workers, sink=os.environ.get("K_SINK"),
                             config=FitConfig(holdout_days=args.holdout_days, gate_margin=args.gate_margin))
    log.info("retrain service on %s:%s, registry %s, sink %s", args.host, args.port, manager.uri,
             manager.sink or "-")
    uvicorn.run(create_app(manager), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
