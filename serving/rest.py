"""The REST server: KServe's uvicorn/FastAPI server with our V2 endpoints, errors and front.

:class:`RestServer` is KServe's ``RESTServer`` bound to the configured host, without uvicorn's own
``x-forwarded-for`` trust (the access door resolves forwarded addresses from ``--trusted-proxies`` only),
with uvicorn's access log replaced by ours, the shed fast path as its HTTP protocol, :class:`~serving.http.Front` as the
only middleware, every error answered ``{"error": "..."}`` (KServe's own 404/422 included, client
errors without a traceback), and the V2 routes below registered ahead of KServe's:

- ``POST /v2/models/{name}[/versions/{v}]/infer``: the body read as sent (JSON without or with any
  content type, the binary extension), checked by ``serving.tensors``, answered with optional
  fields omitted and binary outputs when asked;
- ``GET /v2/models/{name}[/versions/{v}]`` and ``.../ready``: versions checked (404 naming the served one);
- ``GET /v2``: server metadata with the extensions served;
- ``POST /v1/models/{name}:predict``: KServe's V1 predict, which may also send a model's ready JSON
  buffer as it is (the transformer's large answers, built without one more copy).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from kserve import errors as kerrors
from kserve.protocol.rest.server import RESTServer
from starlette.exceptions import HTTPException

from serving import rest_tensors, shedding, tensors
from serving.access.settings import UVICORN_PROXY_OPTIONS
from serving.errors import Failure, ServingError, Unavailable, failure_of
from serving.http import Front, error_response

log = logging.getLogger("storecast.errors")


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def failure_response(failure: Failure) -> Response:
    status, headers, body = error_response(failure)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers
                                                       if k not in (b"content-length",)})


class V2:
    """Our V2 endpoints over a :class:`~serving.dataplane.ServingDataPlane`."""

    def __init__(self, dataplane: Any) -> None:
        self.dataplane = dataplane

    async def repository_index(self) -> Response:
        """The repository extension's index: every model with its version and state (Triton's form)."""
        out = []
        for name, model in sorted(self.dataplane.model_registry.get_models().items()):
            ready = await self.dataplane.model_ready(name)
            versions = (model.served_versions() if hasattr(model, "served_versions") else None) or (
                model.known_versions() if hasattr(model, "known_versions") else [])
            entry = {"name": name, "state": "READY" if ready else "UNAVAILABLE"}
            if versions:
                entry["version"] = versions[0]
            out.append(entry)
        return json_response(out)

    async def server_metadata(self) -> Response:
        return json_response(self.dataplane.metadata())

    async def model_metadata(self, model_name: str, model_version: str | None = None) -> Response:
        self.dataplane.check_version(model_name, model_version)
        return json_response(await self.dataplane.model_metadata(model_name))

    async def model_ready(self, model_name: str, model_version: str | None = None) -> Response:
        self.dataplane.check_version(model_name, model_version)
        if not await self.dataplane.model_ready(model_name):
            raise Unavailable(_not_ready(self.dataplane.model(model_name), model_name))
        return json_response({"name": model_name, "ready": True})

    async def infer(self, raw: Request, model_name: str, model_version: str | None = None) -> Response:
        model = self.dataplane.model(model_name)
        if not await self.dataplane.model_ready(model_name, True):
            raise Unavailable(_not_ready(model, model_name))
        body = await raw.body()
        request = rest_tensors.decode_rest(body, raw.headers.get(rest_tensors.HEADER_LENGTH))
        request.model_version = self.dataplane.check_version(model_name, model_version or request.model_version,
                                                             infer=True)
        headers = dict(raw.headers)
        response, response_headers = await self.dataplane.infer(model_name, tensors.to_kserve(request, model_name),
                                                                headers)
        payload, out_headers = rest_tensors.encode_rest(response, request)
        return Response(payload, headers={**{k: v for k, v in (response_headers or {}).items()
                                             if k.lower() not in ("content-length", "content-type")}, **out_headers})

    async def v1_predict(self, raw: Request, model_name: str) -> Response:
        """KServe's V1 ``:predict`` (CloudEvents included), where a model may also answer a ready JSON
        buffer (``bytes``, ``bytearray``, ``memoryview``): sent as it is, never copied or re-encoded."""
        if not await self.dataplane.model_ready(model_name, True):
            raise kerrors.ModelNotReady(model_name)
        headers = dict(raw.headers.items())
        request, attributes = self.dataplane.decode(body=await raw.body(), headers=headers)
        response, response_headers = await self.dataplane.infer(model_name=model_name, request=request,
                                                                headers=headers)
        response, encoded_headers = self.dataplane.encode(model_name=model_name, response=response,
                                                          headers=headers, req_attributes=attributes)
        response_headers = {**response_headers, **encoded_headers}
        response_headers.pop("content-length", None)
        if isinstance(response, bytearray | memoryview):
            response = memoryview(response)
        if isinstance(response, bytes | str | memoryview):
            return Response(content=response, headers=response_headers)
        response_headers.setdefault("content-type", "application/json")
        return Response(orjson.dumps(response, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                        headers=response_headers)

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models/{model_name}:predict", self.v1_predict, methods=["POST"], response_model=None)
        router = APIRouter(prefix="/v2")
        router.add_api_route("", self.server_metadata, methods=["GET"], include_in_schema=False)
        router.add_api_route("/repository/index", self.repository_index, methods=["POST"])
        for suffix in ("", "/versions/{model_version}"):
            base = "/models/{model_name}" + suffix
            router.add_api_route(base, self.model_metadata, methods=["GET"])
            router.add_api_route(base + "/ready", self.model_ready, methods=["GET"])
            router.add_api_route(base + "/infer", self.infer, methods=["POST"])
        app.include_router(router)


def _not_ready(model: Any, name: str) -> str:
    why = getattr(model, "not_ready_reason", None)
    reason = why() if callable(why) else None
    return f"model {name} is not ready: {reason}" if reason else f"model {name} is not ready yet"


async def _handle(request: Request, exc: Exception) -> Response:
    failure = failure_of(exc)
    if failure.status >= 500 and failure.status != 503:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return failure_response(failure)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = (f"no route {request.method} {request.url.path[:120]}: see /v2/models/<name>/infer, "
                   "/v1/models/<name>:predict, /v2/models/<name>")
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path[:120]}"
    else:
        message = str(exc.detail)
    return failure_response(Failure(exc.status_code, message, dict(exc.headers or {})))


async def _validation(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                         for e in exc.errors()[:5])
    return failure_response(Failure(400, f"bad request: {problems[:500]}"))


class RestServer(RESTServer):
    """KServe's REST server with the storecast guarantees (see the module docstring)."""

    def __init__(self, *args: Any, host: str, front: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.config.http = shedding.PROTOCOL
        for name, value in UVICORN_PROXY_OPTIONS.items():  # uvicorn trusts 127.0.0.1's x-forwarded-for otherwise
            setattr(self.config, name, value)
        self.front = front

    def create_application(self) -> None:
        quiet = logging.getLogger("uvicorn.access")  # our Front writes the access line (both protocols)
        quiet.handlers, quiet.propagate = [], False
        super().create_application()

    def _add_middlewares(self, app: FastAPI) -> None:
        app.add_middleware(Front, **self.front)

    def _register_endpoints(self, app: FastAPI) -> None:
        V2(self.dataplane).register(app)
        super()._register_endpoints(app)

    def _add_exception_handlers(self, app: FastAPI) -> None:
        for kind in (ServingError, kerrors.InvalidInput, kerrors.InferenceError, kerrors.ModelNotFound,
                     kerrors.ModelNotReady, kerrors.UnsupportedProtocol, kerrors.ServerNotLive,
                     kerrors.ServerNotReady, NotImplementedError, RecursionError):
            app.add_exception_handler(kind, _handle)
        app.add_exception_handler(HTTPException, _http_error)
        app.add_exception_handler(RequestValidationError, _validation)
