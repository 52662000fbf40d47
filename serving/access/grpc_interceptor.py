"""The access check as a ``grpc.aio`` server interceptor (KServe's V2 gRPC server, or any other).

Credentials come from the call metadata (``x-api-key`` or ``authorization: Bearer``). A refusal ends the
call before the servicer runs: ``UNAUTHENTICATED``, ``PERMISSION_DENIED`` or ``RESOURCE_EXHAUSTED`` with
``retry-after`` (seconds), ``grpc-retry-pushback-ms`` and the ``ratelimit-policy`` / ``ratelimit`` values in
the trailing metadata. ``rules(method)`` says what a method needs (``OPEN`` for the health RPCs only).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

from serving.access.admission import Access, AccessError
from serving.access.asgi import OPEN

HEALTH = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
                    "/inference.GRPCInferenceService/ModelReady", "/grpc.health.v1.Health/Check",
                    "/grpc.health.v1.Health/Watch"})
HTTP_OF = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
           grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
           grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.FAILED_PRECONDITION: 400,
           grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.CANCELLED: 499}


def inference_rules(method: str) -> str | None:
    """Health and readiness RPCs are open; everything else (ModelInfer, metadata, ...) needs ``forecast``."""
    return OPEN if method in HEALTH else "forecast"


def _status(context: Any) -> int:
    code = context.code() if hasattr(context, "code") else None
    if code is None or isinstance(code, int):
        return 200 if not code else 500
    return HTTP_OF.get(code, 500)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Admit every call (unary or streaming) before its servicer runs."""

    def __init__(self, access: Access, rules: Callable[[str], str | None] = inference_rules) -> None:
        self.access, self.rules = access, rules

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        rule = self.rules(details.method)
        if handler is None or rule == OPEN:
            return handler
        access, method = self.access, details.method

        async def admit(context: Any) -> Any:
            metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            try:
                return await access.admit(metadata, context.peer(), route=method, protocol="grpc", permission=rule)
            except AccessError as exc:
                await context.abort(grpc.StatusCode[exc.grpc_code], exc.message,
                                    trailing_metadata=exc.grpc_trailing_metadata())

        def unary(behavior: Callable) -> Callable:
            async def call(request: Any, context: Any) -> Any:
                admission = await admit(context)
                status = 500
                try:
                    response = behavior(request, context)
                    if inspect.isawaitable(response):
                        response = await response
                    status = _status(context)
                    return response
                except grpc.aio.AbortError:
                    status = _status(context)
                    raise
                finally:
                    admission.finish(status)
            return call

        def streaming(behavior: Callable) -> Callable:
            async def call(request: Any, context: Any) -> Any:
                admission = await admit(context)
                status = 500
                try:
                    items = behavior(request, context)
                    if hasattr(items, "__aiter__"):
                        async for item in items:
                            yield item
                    else:
                        for item in items:
                            yield item
                    status = _status(context)
                finally:
                    admission.finish(status)
            return call

        wrap = {"unary_unary": unary, "stream_unary": unary, "unary_stream": streaming, "stream_stream": streaming}
        for kind, factory in wrap.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                maker = getattr(grpc, f"{kind}_rpc_method_handler")
                return maker(factory(behavior), request_deserializer=handler.request_deserializer,
                             response_serializer=handler.response_serializer)
        return handler
