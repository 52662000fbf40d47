"""The dashboard's ASGI app: static files, the same-origin proxy, recent sales and version metrics.

Routes (all JSON errors are ``{"error": "..."}``):

- ``GET /`` and the static files of ``static/``;
- ``POST /api/session``: checks the caller's key with one small forecast request upstream;
- ``POST /api/forecast`` -> the transformer's ``POST /v1/models/{model}:predict`` (body as given);
- ``POST /api/retrain`` ``{"store_ids": [...]}`` (at most ``serving.contract.REFRESH_MAX_STORES``) -> the
  retrain service, as a CloudEvent ``retrain.requested``; ``GET /api/jobs/{id}`` -> its ``GET /jobs/{id}``;
- ``GET /api/model[?version=N]``, ``GET /api/metrics?stores=..[&version=N]``, ``GET /api/sales?stores=..&days=28``:
  the dashboard's own read-only data, for a key the business API accepts (asked with one small
  forecast request the first time a key is seen, then trusted for ``--key-ttl-seconds``);
- ``GET /api/config``, ``GET /healthz``.

Open without a key: the static page, ``/healthz``, ``/api/config`` (what the page offers, no data) and the
sign-in (``/api/session``, which needs a key to succeed). Every other route needs one: without it, 401
before anything goes upstream, whatever the business API would say (an open, loopback stack included).
Refused before any work (``serving.access.doorstep``): bodies over ``MAX_BODY`` (413), a request another
site's page made (a foreign ``Origin``, or on loopback a ``Host`` that is not: 403), and a POST with a body
that is not ``application/json`` (415: what an HTML form or a ``text/plain`` fetch sends).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dashboard.config import Settings
from dashboard.proxy import Upstream, error, retrain_event, store_ids
from dashboard.registry_info import RegistryCache
from dashboard.sales import SalesCache
from serving.access.admission import MAX_TOKEN
from serving.access.doorstep import Doorstep, Refusal, answer_too_large, media_type
from serving.access.settings import LOOPBACK
from serving.contract import store_sort_key

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # the retrain service's ids: no '.', no '/', nothing to resolve
JSON_POSTS = ("/api/forecast", "/api/retrain")  # the POST routes with a body
SECURITY = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' "
                                         b"'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'")]


class KeyCache:
    """Digests of keys the business API accepted recently (never the keys themselves)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._until: dict[str, float] = {}

    def remember(self, key: str) -> None:
        now = time.monotonic()
        if len(self._until) > 10_000:
            self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[_digest(key)] = now + self.ttl

    def known(self, key: str) -> bool:
        return self._until.get(_digest(key), 0.0) > time.monotonic()


def caller_key(request: Request) -> str:
    """The key the caller sent (``x-api-key`` or ``authorization: Bearer``), '' for none."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return (request.headers.get("x-api-key") or (token if scheme.lower() == "bearer" else "")).strip()


def keyless(request: Request) -> Response | None:
    """401 for a request without a key, with one longer than any key or token can be, or with a credential
    header sent twice (which one counts is never guessed); nothing goes upstream, nothing is hashed. Else None."""
    key = caller_key(request)
    twice = any(len(request.headers.getlist(h)) > 1 for h in ("x-api-key", "authorization"))
    if key and len(key) <= MAX_TOKEN and not twice:
        return None
    return error(401, "send one credential: x-api-key or authorization came more than once" if twice else
                 f"the API key is longer than {MAX_TOKEN} characters" if key else
                 "sign in first: send your API key as x-api-key (the page's sign-in takes it)",
                 {"www-authenticate": 'Bearer realm="storecast"'})


def json_posts_only(method: str, path: str, headers: Any) -> Refusal | None:
    """415 for a POST with a body that is not JSON (an HTML form's or a ``text/plain`` fetch's)."""
    if method == "POST" and path in JSON_POSTS and media_type(headers) != "application/json":
        return 415, f"content-type {media_type(headers)[:60] or 'none'}: expected application/json"
    return None


def create_app(settings: Settings, sales: SalesCache | None = None, registry: RegistryCache | None = None) -> Starlette:
    """The app; ``sales`` and ``registry`` default to caches built from ``settings``."""
    sales = sales or SalesCache(settings.sales, settings.sales_check_seconds)
    registry = registry or RegistryCache(settings.tracking_uri, settings.registry_model, settings.alias,
                                         settings.registry_refresh_seconds)
    api = Upstream("forecast service", settings.api_url, settings.timeout_seconds)
    retrain = Upstream("retrain service", settings.retrain_url, settings.timeout_seconds) \
        if settings.retrain_url else None
    keys = KeyCache(settings.key_ttl_seconds)
    predict_path = f"/v1/models/{settings.model_name}:predict"

    probing: dict[str, asyncio.Future] = {}

    async def probe(request: Request) -> Response | None:
        """Ask the business API for one store with the caller's key: None if it passed the door, else the refusal."""
        stores = registry.peek()
        body = json.dumps({"instances": [{"storeId": min(stores, key=store_sort_key) if stores else "1"}]}).encode()
        answer = await api.send(request, "POST", predict_path, body, {"content-type": "application/json"})
        # 400 = the key passed the door and the probe store is unknown (no registry to pick one from)
        if answer.status_code in (200, 400):
            keys.remember(caller_key(request))
            return None
        return answer

    async def signed_in(request: Request) -> Response | None:
        """None for a key the business API accepted recently (asked once per key and TTL), else its refusal;
        no key at all: 401, whatever the business API would say."""
        if (denied := keyless(request)) is not None:
            return denied
        key = caller_key(request)
        if keys.known(key):
            return None
        digest = _digest(key)
        pending = probing.get(digest)
        if pending is None:  # concurrent first requests with one key share one probe
            pending = probing[digest] = asyncio.ensure_future(probe(request))
            pending.add_done_callback(lambda _: probing.pop(digest, None))
        return await asyncio.shield(pending)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def config(_: Request) -> Response:
        return JSONResponse({"model": settings.model_name, "refresh": retrain is not None,
                             "registry": registry.enabled, "sales": sales.enabled, "windows": [7, 14, 42],
                             "history_days": 28})

    async def session(request: Request) -> Response:
        """Sign-in: 200 when the business API accepts the caller's key, else its refusal as it is."""
        denied = keyless(request) or await probe(request)
        return denied if denied is not None else JSONResponse({"ok": True, "refresh": retrain is not None})

    async def forecast(request: Request) -> Response:
        if (denied := keyless(request)) is not None:
            return denied
        body = await request.body()  # at most MAX_BODY: the doorstep answers 413 past it
        answer = await api.send(request, "POST", predict_path, body, {"content-type": "application/json"})
        if answer.status_code == 200:
            keys.remember(caller_key(request))
        return answer

    async def refresh(request: Request) -> Response:
        if retrain is None:
            return error(503, "refresh is not configured on this dashboard (no --retrain-url)")
        if (denied := keyless(request)) is not None:
            return denied
        body = await request.body()
        try:
            ids = store_ids(json.loads(body or b"null"))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return error(400, str(exc) if "store_ids" in str(exc) else "body: not JSON")
        headers, event = retrain_event(ids, "refresh requested on the dashboard")
        return await retrain.send(request, "POST", "/", event, headers)

    async def job(request: Request) -> Response:
        if retrain is None:
            return error(503, "refresh is not configured on this dashboard (no --retrain-url)")
        if (denied := keyless(request)) is not None:
            return denied
        job_id = request.path_params["job_id"]
        if not JOB_ID.fullmatch(job_id):  # only an exact id goes up: never '.', '..' or another path
            return error(400, "job id: 1 to 64 letters, digits, '_' or '-', starting with a letter or digit")
        return await retrain.send(request, "GET", f"/jobs/{job_id}")

    async def model(request: Request) -> Response:
        if (denied := await signed_in(request)) is not None:
            return denied
        if not registry.enabled:
            return error(404, "no registry configured on this dashboard (--tracking-uri)")
        info = await anyio.to_thread.run_sync(registry.info, request.query_params.get("version"))
        if info is None:
            return error(503, registry.error or "the registry has no version to show yet", {"retry-after": "5"})
        return JSONResponse({**info.view(), "alias": registry.alias if info.version == registry.current else None})

    async def metrics(request: Request) -> Response:
        if (denied := await signed_in(request)) is not None:
            return denied
        info = await anyio.to_thread.run_sync(registry.info, request.query_params.get("version"))
        if info is None:
            return error(503, registry.error or "no registry configured on this dashboard", {"retry-after": "5"})
        ids = _ids(request)
        return JSONResponse({"version": info.version, "data_end": info.data_end,
                             "stores": {s: info.metrics[s] for s in ids if s in info.metrics},
                             "unknown": [s for s in ids if s not in info.metrics]})

    async def recent_sales(request: Request) -> Response:
        if (denied := await signed_in(request)) is not None:
            return denied
        if not sales.enabled:
            return error(404, "no sales file configured on this dashboard (--sales)")
        try:
            days = int(request.query_params.get("days", "28"))
        except ValueError:
            return error(400, "days: expected a whole number of days")
        return JSONResponse(await anyio.to_thread.run_sync(sales.view, _ids(request), days))

    @asynccontextmanager
    async def lifespan(_: Starlette):
        registry.start()
        await anyio.to_thread.run_sync(sales.get)
        yield
        registry.stop()
        await api.close()
        if retrain is not None:
            await retrain.close()

    routes = [Route("/healthz", healthz), Route("/api/config", config),
              Route("/api/session", session, methods=["POST"]), Route("/api/forecast", forecast, methods=["POST"]),
              Route("/api/retrain", refresh, methods=["POST"]),
              Route("/api/jobs/{job_id}", job), Route("/api/model", model), Route("/api/metrics", metrics),
              Route("/api/sales", recent_sales), Mount("/", StaticFiles(directory=STATIC, html=True))]
    app = Starlette(routes=routes, lifespan=lifespan)
    answer_too_large(app)
    app.add_middleware(GZipMiddleware, minimum_size=600)
    app.add_middleware(Doorstep, max_body=MAX_BODY, limit_name="the dashboard's limit",
                       local_only=settings.host in LOOPBACK, content=json_posts_only)
    app.add_middleware(Headers)
    return app


class Headers:
    """Security headers on every answer; API answers are never cached, static files revalidated."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = b"no-store" if scope["path"].startswith("/api/") else b"no-cache"

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY, (b"cache-control", cache)]
            await send(message)

        await self.app(scope, receive, wrapped)


def _ids(request: Request) -> list[str]:
    raw = request.query_params.get("stores", "")
    return [s.strip() for s in raw.split(",") if s.strip()][:500]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
