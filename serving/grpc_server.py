"""The gRPC server: KServe's servicer and server with the same guarantees as REST.

- :class:`Guard`, the one server interceptor: a caller the door refused for its rate limit is refused again
  (``RESOURCE_EXHAUSTED`` with its retry metadata) from its metadata alone until its window frees a slot
  (``serving.access.fastpath``), then the doors (before the message is parsed: the handler
  it wraps gets the raw bytes, and the message is deserialized only once the doors admitted the call;
  its size is bounded by ``--max-body-bytes`` before that), the in-flight bound (shared with REST, counted per
  caller as there: ``UNAVAILABLE`` with ``retry-after`` and ``grpc-retry-pushback-ms`` trailing metadata), the error
  mapping of ``serving.errors`` (never ``INTERNAL`` for a client's mistake), one access-log line
  (a refusal's sampled, as REST's) and the request metrics;
- :class:`Servicer`: ``ModelInfer`` decoded and checked by ``serving.tensors`` (contents or raw),
  ``model_version`` honoured (another version is ``NOT_FOUND`` naming the served one), answers in
  ``raw_output_contents``; ``ModelMetadata`` with ``platform`` and ``versions``; server metadata
  with the extensions served;
- :class:`GrpcServer`: listens on the configured host (KServe's binds ``[::]``).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.utils.utils import to_headers

from serving import grpc_tensors, tensors
from serving.access import hook as doors_
from serving.access.fastpath import gate_of
from serving.errors import ClientError, Unavailable, failure_of
from serving.http import caller_key, log_access
from serving.metrics import Meter
from serving.rest import _not_ready
from serving.shedding import LoadShedder

log = logging.getLogger("storecast.errors")


class Guard(aio.ServerInterceptor):
    """Doors, in-flight bound, error mapping, access log and metrics for every unary call."""

    def __init__(self, component: str, meter: Meter, doors: doors_.Doors | None = None,
                 shedder: LoadShedder | None = None, log_requests: bool = True) -> None:
        self.component, self.meter, self.doors = component, meter, doors or doors_.Doors()
        self.shedder, self.log_requests = shedder, log_requests
        self.gate = gate_of(self.doors)  # callers over their rate limit: refused before the doors

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior, method = handler.unary_unary, details.method
        kind = doors_.classify_grpc(method)
        deserialize = handler.request_deserializer

        async def guarded(raw: bytes, context: aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            status, note, who, call, token, counted, shed, refused = 200, "", None, None, None, None, False, False
            peer = context.peer() or ""
            try:
                if self.doors:
                    metadata = doors_.combined((k, v) for k, v in (context.invocation_metadata() or ())
                                               if isinstance(v, str))
                    boxed = self.gate.refusal(self.gate.key_of(metadata, peer), "grpc") if (
                        self.gate is not None and kind == "infer") else None
                    if boxed is not None:  # over its rate limit: refused before the doors, the message unread
                        status, note, refused = 429, boxed.message, True
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, boxed.message,
                                            trailing_metadata=boxed.grpc_metadata)
                    call = doors_.Call("grpc", "POST", method, kind, metadata, peer, None, self.component)
                    refused = True
                    who = await self.doors.admit(call)
                    refused = False
                    token = doors_.set_principal(who)
                request = _parse(deserialize, raw)
                if kind == "infer" and self.shedder is not None and self.shedder.limit > 0:
                    key = caller_key(who)
                    if not self.shedder.enter(key):
                        self.shedder.count_shed("grpc")
                        shed = True
                        raise Unavailable(self.shedder.message(key))
                    counted = key
                return await behavior(request, context)
            except aio.AbortError:
                status = status if refused else _http_status(context)
                raise
            except Exception as exc:
                failure = failure_of(exc)
                status, note, refused = failure.status, failure.message, refused and failure.client
                if status >= 500 and status != 503:
                    log.error("gRPC %s failed", method, exc_info=exc)
                trailing = [(k.lower(), str(v)) for k, v in failure.headers.items()]
                trailing += [(k.lower(), str(v)) for k, v in _grpc_extra(exc)]
                if "retry-after" in failure.headers:
                    trailing.append(("grpc-retry-pushback-ms", str(int(float(failure.headers["retry-after"]) * 1000))))
                await context.abort(grpc.StatusCode[failure.grpc_code], failure.message,
                                    trailing_metadata=tuple(trailing))
            finally:
                if counted is not None:
                    self.shedder.leave(counted)
                if token is not None:
                    doors_.reset_principal(token)
                if call is not None:
                    self.doors.finished(call, who, status)
                if kind == "infer" and not shed:
                    self.meter.request("grpc", status)
                if self.log_requests:
                    log_access("grpc", "POST", method, status, t0, peer, who, note, kind, refused)

        # no request_deserializer: the raw bytes reach ``guarded``, which parses them after the doors
        return grpc.unary_unary_rpc_method_handler(guarded, response_serializer=handler.response_serializer)


def _parse(deserialize: Any, raw: bytes) -> Any:
    """The request message of ``raw`` (an unparsable one is INVALID_ARGUMENT)."""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception as exc:  # protobuf's DecodeError and its kin
        raise ClientError(f"the request message cannot be parsed ({type(exc).__name__})") from None


def _grpc_extra(exc: Exception) -> list[tuple[str, str]]:
    extra = getattr(exc, "grpc_trailing_metadata", None)  # a door's own metadata (rate-limit headers)
    return list(extra()) if callable(extra) else []


_CODES = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
          grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
          grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503}


def _http_status(context: Any) -> int:
    code = context.code() if hasattr(context, "code") else None
    return _CODES.get(code, 500) if isinstance(code, grpc.StatusCode) else 500


class Servicer(InferenceServicer):
    """KServe's servicer with checked decoding, versions, raw outputs and complete metadata."""

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        md = self._data_plane.metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=md["version"], extensions=md["extensions"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        dp = self._data_plane
        dp.check_version(request.name, request.version)
        md = await dp.model_metadata(request.name)
        return pb.ModelMetadataResponse(
            name=md["name"], versions=md.get("versions", []), platform=md.get("platform", ""),
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in md["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in md["outputs"]])

    async def ModelReady(self, request: Any, context: Any) -> Any:
        self._data_plane.check_version(request.name, request.version)
        return pb.ModelReadyResponse(ready=await self._data_plane.model_ready(model_name=request.name))

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        dp, name = self._data_plane, request.model_name
        model = dp.model(name)
        version = dp.check_version(name, request.model_version, infer=True)
        if not await dp.model_ready(name, True):
            raise Unavailable(_not_ready(model, name))
        checked = grpc_tensors.decode_grpc(request)
        checked.model_version = version
        response, _ = await dp.infer(name, tensors.to_kserve(checked, name), to_headers(context))
        return grpc_tensors.encode_grpc(response)


class GrpcServer(GRPCServer):
    """KServe's gRPC server on the configured host, with :class:`Guard` and :class:`Servicer`."""

    def __init__(self, port: int, host: str, data_plane: Any, model_repository_extension: Any, guard: Guard,
                 max_message: int, grace_period: int = 30) -> None:
        super().__init__(port, data_plane, model_repository_extension, kwargs={}, grace_period=grace_period)
        self.host, self.guard, self.max_message = host, guard, max_message

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"

    async def start(self, max_workers: int) -> None:
        servicer = Servicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=(self.guard,),
                                  options=[("grpc.max_send_message_length", self.max_message),
                                           ("grpc.max_receive_message_length", self.max_message),
                                           ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(self.address)
        logging.getLogger("storecast.server").info("gRPC on %s", self.address)
        await self._server.start()
        await self._server.wait_for_termination()
