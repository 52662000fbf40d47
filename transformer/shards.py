"""Calling the predictor shards: one long-lived client per shard, windows routed by crc32, merged in order.

The transformer sends the predictor's windows form (``serving.contract``: ``store_id``, INT32
``begin_day`` and ``days``, one element per store window) and asks FP64 / INT32 outputs, so a
42-day window is one element on the wire, not 42 pairs of strings, and answers come back as
arrays without Python lists. gRPC V2 (default) builds ``ModelInferRequest`` protobufs with
``raw_input_contents`` directly on one ``grpc.aio`` channel per shard (reconnect backoff at most
1 s, so a shard that comes back is used again within about a second), the answer read from
``raw_output_contents``; REST V2 posts the binary tensor extension on one keep-alive ``httpx``
client per shard. Each call is bounded in all by the predictor timeout (a deadline over the whole
call, not per read). A shard that is down, slow or broken is named in a ``ShardUnavailable`` (503 /
UNAVAILABLE, with ``Retry-After``); a 4xx from a predictor (unknown store, another version) comes back as
``PredictorRejected`` with its status and message. :class:`ShardWatch` asks every shard now and
then which version it serves, its data end and its stores (for metadata, metrics and the horizon check).

Every call to a predictor (inference, the shard watch, ``transformer.ready``'s checks) carries the
transformer's :class:`Credential`: its own key (``x-api-key``, gRPC metadata or REST header), or with
``--forward-authorization`` and no key the caller's ``authorization`` header. A predictor refusing the
transformer's own credential (401, 403) is a ``ShardRefused`` naming the shard (502: the deployment's
keys are wrong, not the caller's); refusing a forwarded one is the caller's answer (``PredictorRejected``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from serving import rest_tensors, tensors
from serving.budget import offload
from serving.contract import LIST_STORES, shard_of, window_rows
from serving.errors import ServingError, Unavailable
from transformer.settings import Credential

FP64 = ("yhat", "yhat_lower", "yhat_upper", "open_rate")
FLAGS = "day_flags"  # open, promo, holiday, calendar source in one INT32 (serving.contract.pack_day_flags)
OUTPUTS = (*FP64[:3], FLAGS)  # asked of the predictor for a business (V1) answer
TYPES = {**dict.fromkeys(FP64, "FP64"), FLAGS: "INT32"}
GRPC_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
MERGE_INLINE_ROWS = 50_000  # larger answers are merged in the bulk thread
_ids = itertools.count()
REFUSALS = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}
log = logging.getLogger("storecast.transformer")


class ShardUnavailable(Unavailable):
    """A predictor shard could not answer (down, timed out, failed): the request fails whole (503)."""

    def __init__(self, shard: int, host: str, detail: str) -> None:
        super().__init__(f"predictor shard {shard} ({host}) unavailable: {detail}", shard=shard)
        self.shard, self.host = shard, host


class ShardRefused(ServingError):
    """A predictor shard refused the transformer's own credential (401 / 403): the deployment's keys are wrong."""

    status = 502

    def __init__(self, shard: int, host: str, detail: str) -> None:
        super().__init__(f"predictor shard {shard} ({host}) refused the transformer ({detail}); give the "
                         "transformer a key of the predictors' auth file with the forecast permission "
                         "(STORECAST_PREDICTOR_API_KEY or --predictor-api-key-file)", shard=shard)
        self.shard, self.host = shard, host


class PredictorRejected(ServingError):
    """A predictor answered the request with a 4xx: passed through with its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Forecast:
    """The predictor's outputs for every row, and the version(s) that answered."""

    values: dict[str, np.ndarray]
    versions: set[str] = field(default_factory=set)

    @property
    def version(self) -> str | None:
        return ",".join(sorted(self.versions)) or None


@dataclass(frozen=True)
class Batch:
    """Windows for one predictor call: store ids, first days, lengths and, for a what-if, per-row flags."""

    ids: list[str]
    begin: np.ndarray  # int days since 1970-01-01
    days: np.ndarray
    what_if: tuple[np.ndarray, np.ndarray] | None = None  # promo, open per row (int8, -1: as the calendar says)

    def tensors(self) -> list[tuple[str, str, bytes]]:
        """(name, datatype, little-endian bytes) of each input of the windows form."""
        out = [("store_id", "BYTES", tensors.to_bytes(self.ids, "BYTES")),
               ("begin_day", "INT32", self.begin.astype("<i4").tobytes()),
               ("days", "INT32", self.days.astype("<i4").tobytes())]
        if self.what_if is not None:
            out += [(name, "INT32", values.astype("<i4").tobytes())
                    for name, values in zip(("promo", "open"), self.what_if, strict=True)]
        return out

    def shapes(self) -> dict[str, int]:
        rows = int(self.days.sum())
        return {"store_id": len(self.ids), "begin_day": len(self.ids), "days": len(self.ids), "promo": rows,
                "open": rows}


class GrpcShard:
    """One predictor over gRPC V2 (raw contents both ways)."""

    def __init__(self, host: str, model: str, timeout: float) -> None:
        # a Knative service host without a port is reached on 80 (gRPC would otherwise assume 443)
        self.host = host if ":" in host.rsplit("]", 1)[-1] else f"{host}:80"
        self.model, self.timeout = model, timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: GRPCInferenceServiceStub | None = None

    def _client(self) -> GRPCInferenceServiceStub:
        if self._stub is None:  # created on the serving event loop, kept for the process's life
            self._channel = grpc.aio.insecure_channel(self.host, options=GRPC_OPTIONS)
            self._stub = GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def infer(self, batch: Batch, request_id: str, outputs: tuple[str, ...], version: str | None = None,
                    headers: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], str]:
        shapes = batch.shapes()
        parts = batch.tensors()
        request = pb.ModelInferRequest(
            model_name=self.model, model_version=version or "", id=request_id,
            inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=[shapes[name]])
                    for name, datatype, _ in parts],
            raw_input_contents=[blob for _, _, blob in parts],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs])
        response = await self._client().ModelInfer(request, timeout=self.timeout,
                                                   metadata=tuple(headers.items()) if headers else None)
        return read_grpc(response), response.model_version

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def read_grpc(response: Any) -> dict[str, np.ndarray]:
    """Outputs of a ``ModelInferResponse`` (raw contents, or typed contents) as arrays."""
    arrays = {}
    for i, out in enumerate(response.outputs):
        if response.raw_output_contents:
            arrays[out.name] = tensors.from_bytes(response.raw_output_contents[i], out.datatype)
        elif out.datatype == "BYTES":
            arrays[out.name] = np.array([b.decode() for b in out.contents.bytes_contents], dtype=object)
        else:
            arrays[out.name] = np.asarray(getattr(out.contents, tensors.GRPC_FIELDS[out.datatype]))
    return arrays


class RestShard:
    """One predictor over REST V2 with the binary tensor extension both ways."""

    def __init__(self, host: str, model: str, timeout: float) -> None:
        base = host if host.startswith(("http://", "https://")) else f"http://{host}"
        self.host, self.base, self.model, self.timeout = host, base, model, timeout
        self._http: httpx.AsyncClient | None = None

    async def infer(self, batch: Batch, request_id: str, outputs: tuple[str, ...], version: str | None = None,
                    headers: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], str]:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=64))
        shapes = batch.shapes()
        body, sent = rest_tensors.binary_request([(name, datatype, [shapes[name]], blob)
                                                  for name, datatype, blob in batch.tensors()], outputs, request_id)
        path = f"/v2/models/{self.model}" + (f"/versions/{version}" if version else "") + "/infer"
        response = await self._http.post(self.base + path, content=body, headers={**sent, **(headers or {})})
        if response.status_code >= 400:
            raise _HttpStatus(response.status_code, _error_text(response))
        doc, arrays = rest_tensors.read_rest_response(response.content,
                                                      response.headers.get(rest_tensors.HEADER_LENGTH))
        return arrays, str(doc.get("model_version", ""))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class _HttpStatus(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ShardRouter:
    """Splits store windows by shard (and into batches of at most ``batch_rows`` rows), calls the shards
    concurrently, merges the rows in request order."""

    def __init__(self, hosts: list[str], protocol: str, model: str, timeout: float, batch_rows: int = 50_000,
                 credential: Credential | None = None):
        if protocol not in ("grpc-v2", "v2"):
            raise ValueError(f"predictor protocol must be grpc-v2 or v2 (REST V2), got {protocol!r}")
        kind = GrpcShard if protocol == "grpc-v2" else RestShard
        self.hosts, self.protocol, self.model, self.batch_rows = hosts, protocol, model, batch_rows
        self.timeout, self.credential = timeout, credential or Credential()
        self.clients = [kind(h, model, timeout) for h in hosts]
        self.versions: dict[int, str] = {}  # the version each shard answered with last

    async def infer(self, store_ids: np.ndarray, begin: np.ndarray, days: np.ndarray, request_id: str | None = None,
                    outputs: tuple[str, ...] = OUTPUTS, version: str | None = None,
                    what_if: tuple[np.ndarray, np.ndarray] | None = None,
                    caller: Mapping[str, str] | None = None) -> Forecast:
        """Every day of every window: ``store_ids`` (str), ``begin`` (days since 1970-01-01) and ``days`` per
        window; ``what_if``: promo and open per row; ``caller``: the request's headers (a forwarded credential).
        The rows come back window by window, day by day."""
        days = np.asarray(days, dtype=np.int64)
        begin = np.asarray(begin, dtype=np.int64)
        n = int(days.sum())
        first = np.cumsum(days) - days  # each window's first row
        shard = shard_of(store_ids, len(self.clients))
        request_id = request_id or f"storecast-{next(_ids)}"
        headers = self.credential.headers(caller)
        calls, places = [], []
        for k in np.unique(shard).tolist():
            for part in _batches(np.flatnonzero(shard == k), days, self.batch_rows):
                rows = window_rows(first[part], days[part])
                part_what_if = None if what_if is None else (what_if[0][rows], what_if[1][rows])
                batch = Batch(store_ids[part].tolist(), begin[part], days[part], part_what_if)
                calls.append(self._call(k, batch, request_id, outputs, version, headers))
                places.append((k, rows))
        parts = await asyncio.gather(*calls)
        return await offload(n > MERGE_INLINE_ROWS, self._merge, n, outputs, places, parts)

    def _merge(self, n: int, outputs: tuple[str, ...], places: list[tuple[int, np.ndarray]],
               parts: list[tuple[dict[str, np.ndarray], str]]) -> Forecast:
        """The shards' answers in request order (checked: every row of every call answered)."""
        whole = len(places) == 1  # one call answered every row, in order
        out = Forecast({} if whole else {name: np.empty(n, dtype=tensors.DTYPES[TYPES[name]]) for name in outputs})
        for (k, rows), (values, answered) in zip(places, parts, strict=True):
            if any(len(values.get(name, ())) != len(rows) for name in outputs):
                raise ShardUnavailable(k, self.hosts[k], f"answered {len(values.get(outputs[0], ()))} rows for "
                                       f"{len(rows)} (or left out an output)")
            for name in outputs:
                if whole:
                    out.values[name] = values[name]
                else:
                    out.values[name][rows] = values[name]
            self.versions[k] = answered
            out.versions.add(answered)
        return out

    async def _call(self, k: int, batch: Batch, request_id: str, outputs: tuple[str, ...],
                    version: str | None, headers: dict[str, str]) -> tuple[dict[str, np.ndarray], str]:
        """One predictor call, bounded in all by ``timeout`` (a predictor trickling its answer byte by byte
        is cut off too, not only one that stays silent): past it, a 503 naming the shard and the timeout.
        A refusal of the caller's forwarded credential is the caller's; of the transformer's own, a 502."""
        forwarded = "authorization" in headers
        try:
            async with asyncio.timeout(self.timeout):
                return await self.clients[k].infer(batch, request_id, outputs, version, headers)
        except TimeoutError:  # before OSError, of which it is one
            raise ShardUnavailable(k, self.hosts[k], self._late()) from None
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise PredictorRejected(400, err.details() or "invalid input") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise PredictorRejected(404, err.details() or "not found") from None
            if code in REFUSALS:
                if forwarded:
                    raise PredictorRejected(REFUSALS[code], err.details() or code.name.lower()) from None
                raise ShardRefused(k, self.hosts[k], f"{code.name}: {(err.details() or '')[:300]}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ShardUnavailable(k, self.hosts[k], self._late()) from None
            raise ShardUnavailable(k, self.hosts[k], f"{code.name}: {(err.details() or '')[:300]}") from None
        except httpx.TimeoutException:
            raise ShardUnavailable(k, self.hosts[k], self._late()) from None
        except _HttpStatus as err:
            if err.status in (401, 403) and not forwarded:
                raise ShardRefused(k, self.hosts[k], f"HTTP {err.status}: {str(err)[:300]}") from None
            if err.status == 429:  # the transformer's own identity over its limit: a busy shard, retried later
                raise ShardUnavailable(k, self.hosts[k], f"HTTP 429: {str(err)[:300]}") from None
            if 400 <= err.status < 500:
                raise PredictorRejected(err.status, str(err)) from None
            raise ShardUnavailable(k, self.hosts[k], f"HTTP {err.status}: {str(err)[:300]}") from None
        except (httpx.HTTPError, OSError, KeyError, ValueError, ServingError) as err:
            raise ShardUnavailable(k, self.hosts[k], f"{type(err).__name__}: {str(err)[:300]}") from None

    def _late(self) -> str:
        return f"no answer within {self.timeout:g} s (--predictor_request_timeout_seconds)"

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


def _batches(windows: np.ndarray, days: np.ndarray, limit: int) -> list[np.ndarray]:
    """``windows`` (indices) cut into runs of at most ``limit`` rows (a longer window goes alone)."""
    out, start, rows = [], 0, 0
    for i, n in enumerate(days[windows].tolist()):
        if rows and rows + n > limit:
            out.append(windows[start:i])
            start, rows = i, 0
        rows += n
    out.append(windows[start:])
    return out


@dataclass
class ShardState:
    """What a shard said it serves, when last asked."""

    version: str | None = None
    stores: int | None = None
    data_end: str | None = None
    error: str | None = None


class ShardWatch:
    """Asks every shard every ``seconds`` which version it serves (a daemon thread, blocking clients)."""

    def __init__(self, router: ShardRouter, seconds: float = 5.0) -> None:
        self.router, self.seconds = router, seconds
        self.states = [ShardState() for _ in router.hosts]
        self.listeners: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channels: dict[str, grpc.Channel] = {}

    def start(self) -> None:
        if self._thread is None and self.seconds > 0:
            self._thread = threading.Thread(target=self._run, name="storecast-shard-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> None:
        for k, host in enumerate(self.router.hosts):
            try:
                self.states[k] = self._ask(host)
            except Exception as exc:  # a shard down: keep what it said last, note why
                self.states[k].error = f"{type(exc).__name__}: {str(exc)[:200]}"
        for listener in list(self.listeners):
            listener(self.states)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            known = all(s.version for s in self.states)  # quickly at first, until every shard has answered
            self._stop.wait(self.seconds if known else min(self.seconds, 0.25))

    def _ask(self, host: str) -> ShardState:
        if self.router.protocol == "grpc-v2":
            target = GrpcShard(host, self.router.model, self.router.timeout).host
            if target not in self._channels:
                self._channels[target] = grpc.insecure_channel(target, options=GRPC_OPTIONS)
            stub = GRPCInferenceServiceStub(self._channels[target])
            res = stub.ModelInfer(pb.ModelInferRequest(model_name=self.router.model, parameters={
                LIST_STORES: pb.InferParameter(bool_param=True)}), timeout=self.router.timeout,
                metadata=self.router.credential.metadata())
            params = res.parameters
            return ShardState(res.model_version, int(params["stores"].int64_param),
                              params["data_end"].string_param or None)
        base = host if host.startswith(("http://", "https://")) else f"http://{host}"
        r = httpx.post(f"{base}/v2/models/{self.router.model}/infer", timeout=self.router.timeout,
                       json={"parameters": {LIST_STORES: True}, "inputs": []}, headers=self.router.credential.headers())
        r.raise_for_status()
        doc = r.json()
        params = doc.get("parameters", {})
        return ShardState(doc.get("model_version"), params.get("stores"), params.get("data_end") or None)


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:500]
