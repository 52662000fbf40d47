"""Clients carry a key (issue 13, "People"): Locust's users send ``STORECAST_API_KEY`` as ``x-api-key``.

A real headless Locust run (the packaged locustfile) against a real uvicorn server behind the access
middleware with an auth file that admits no anonymous caller: every request of the run is admitted
under the key's identity (the server's audit lines say so), none is refused.
"""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loadtest.runner import run_locust
from serving.access.admission import Access
from serving.access.asgi import guard
from serving.access.auth_file import hash_key, parse
from tests.support import UvicornServer

KEY = "sc_locust-key"
AUTH = f"""
tiers:
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
identities:
  - {{name: locust, tier: service, key_sha256: "{hash_key(KEY)}"}}
"""


async def predict(request) -> Response:
    body = await request.body()
    answer = {"predictions": [{"request": {}, "forecast": []}]}
    if "ce-id" in request.headers:  # a binary CloudEvent is answered with one
        return Response(json.dumps(answer), media_type="application/json",
                        headers={"ce-type": "com.storecast.forecast.completed", "ce-id": "1", "ce-source": "t",
                                 "ce-specversion": "1.0"})
    return JSONResponse(answer if body else {})


def test_locust_users_send_the_key(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="storecast.audit")
    app = Starlette(routes=[Route("/v1/models/storecast:predict", predict, methods=["POST"])])
    server = UvicornServer(guard(app, Access(parse(AUTH))))
    try:
        summary = run_locust(server.url, tmp_path / "results", users=2, spawn_rate=2, duration="3s",
                             classes=["Planner", "Event"], timeout=120,
                             env={"STORECAST_API_KEY": KEY, "STORECAST_USER_RPS": "4", "STORECAST_STORES": "1-5"})
    finally:
        server.stop()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "storecast.audit"]
    assert summary.requests >= 5 and summary.failures == 0, (tmp_path / "results" / "locust.log").read_text()[-2000:]
    assert len(lines) >= summary.requests and {x["identity"] for x in lines} == {"locust"}
    assert {x["status"] for x in lines} == {200}
