"""Calling the predictor shards: one long-lived client per shard, rows routed by crc32, merged in order.

gRPC V2 (default) builds ``ModelInferRequest`` protobufs directly on one ``grpc.aio`` channel per
shard; REST V2 posts Open Inference Protocol JSON on one keep-alive ``httpx`` client per shard.
A shard that is down, slow or broken is named in a ``ShardUnavailable`` (503); a 4xx from a
predictor (unknown store, bad date) comes back as ``PredictorRejected`` with its status and message.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import orjson
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

OUTPUTS = ("yhat", "yhat_lower", "yhat_upper", "open_rate")  # asked of the predictor, in this order
GRPC_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.enable_retries", 0)]
_ids = itertools.count()
_REQUESTED = [pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in OUTPUTS]


class ShardUnavailable(RuntimeError):
    """A predictor shard could not answer (down, timed out, failed): the request fails whole (503)."""

    def __init__(self, shard: int, host: str, detail: str) -> None:
        super().__init__(f"predictor shard {shard} ({host}) unavailable: {detail}")
        self.shard, self.host = shard, host


class PredictorRejected(RuntimeError):
    """A predictor answered the request with a 4xx: passed through with its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Forecast:
    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    open_rate: np.ndarray  # share of that weekday the store was open in its last 52 weeks


def shard_of(store_ids: np.ndarray, shards: int) -> np.ndarray:
    """``crc32(store_id) % shards`` per row (DESIGN.md "Scaling"); computed once per distinct store."""
    if shards == 1:
        return np.zeros(len(store_ids), dtype=np.int64)
    unique, inverse = np.unique(store_ids.astype(str), return_inverse=True)
    return np.array([zlib.crc32(s.encode()) % shards for s in unique], dtype=np.int64)[inverse]


class GrpcShard:
    """One predictor over gRPC V2."""

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

    async def infer(self, ids: list[bytes], ds: list[bytes], request_id: str) -> Forecast:
        n = len(ids)
        request = pb.ModelInferRequest(model_name=self.model, id=request_id, inputs=[
            pb.ModelInferRequest.InferInputTensor(name="store_id", datatype="BYTES", shape=[n],
                                                  contents=pb.InferTensorContents(bytes_contents=ids)),
            pb.ModelInferRequest.InferInputTensor(name="ds", datatype="BYTES", shape=[n],
                                                  contents=pb.InferTensorContents(bytes_contents=ds)),
        ], outputs=_REQUESTED)
        response = await self._client().ModelInfer(request, timeout=self.timeout)
        arrays = {}
        for i, out in enumerate(response.outputs):
            if response.raw_output_contents:
                arrays[out.name] = np.frombuffer(response.raw_output_contents[i], dtype="<f8")
            else:
                arrays[out.name] = np.asarray(out.contents.fp64_contents, dtype=np.float64)
        return Forecast(*(arrays[k] for k in OUTPUTS))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class RestShard:
    """One predictor over REST V2 (Open Inference Protocol JSON)."""

    def __init__(self, host: str, model: str, timeout: float) -> None:
        base = host if host.startswith(("http://", "https://")) else f"http://{host}"
        self.host, self.url, self.timeout = host, f"{base}/v2/models/{model}/infer", timeout
        self._http: httpx.AsyncClient | None = None

    async def infer(self, ids: list[bytes], ds: list[bytes], request_id: str) -> Forecast:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=64))
        n = len(ids)
        body = {"id": request_id, "inputs": [
            {"name": "store_id", "datatype": "BYTES", "shape": [n], "data": [s.decode() for s in ids]},
            {"name": "ds", "datatype": "BYTES", "shape": [n], "data": [d.decode() for d in ds]},
        ], "outputs": [{"name": name} for name in OUTPUTS]}
        response = await self._http.post(self.url, content=orjson.dumps(body),
                                          headers={"content-type": "application/json"})
        if response.status_code >= 400:
            raise _HttpStatus(response.status_code, _error_text(response))
        outputs = {o["name"]: np.asarray(o["data"], dtype=np.float64) for o in response.json()["outputs"]}
        return Forecast(*(outputs[k] for k in OUTPUTS))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class _HttpStatus(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ShardRouter:
    """Splits long-format rows by shard (and into batches), calls shards concurrently, merges in order."""

    def __init__(self, hosts: list[str], protocol: str, model: str, timeout: float, batch_rows: int = 50_000):
        if protocol not in ("grpc-v2", "v2"):
            raise ValueError(f"predictor protocol must be grpc-v2 or v2 (REST V2), got {protocol!r}")
        kind = GrpcShard if protocol == "grpc-v2" else RestShard
        self.hosts, self.protocol, self.batch_rows = hosts, protocol, batch_rows
        self.clients = [kind(h, model, timeout) for h in hosts]

    async def infer(self, store_ids: np.ndarray, ds: np.ndarray, request_id: str | None = None) -> Forecast:
        """Forecast every (store_id, ds) row; ``ds`` are ISO date strings."""
        n = len(store_ids)
        shard = shard_of(store_ids, len(self.clients))
        ids_b = [s.encode() for s in store_ids.tolist()]
        ds_b = [d.encode() for d in ds.tolist()]
        request_id = request_id or f"storecast-{next(_ids)}"
        calls, places = [], []
        for k in np.unique(shard).tolist():
            rows = np.flatnonzero(shard == k)
            for start in range(0, len(rows), self.batch_rows):
                part = rows[start: start + self.batch_rows]
                calls.append(self._call(k, [ids_b[i] for i in part], [ds_b[i] for i in part], request_id))
                places.append(part)
        parts = await asyncio.gather(*calls)
        out = Forecast(np.empty(n), np.empty(n), np.empty(n), np.empty(n))
        for part, fc in zip(places, parts, strict=True):
            if any(len(a) != len(part) for a in (fc.yhat, fc.lower, fc.upper, fc.open_rate)):
                raise ShardUnavailable(int(shard[part[0]]), self.hosts[int(shard[part[0]])],
                                       f"answered {len(fc.yhat)} rows for {len(part)}")
            out.yhat[part], out.lower[part], out.upper[part], out.open_rate[part] = (
                fc.yhat, fc.lower, fc.upper, fc.open_rate)
        return out

    async def _call(self, k: int, ids: list[bytes], ds: list[bytes], request_id: str) -> Forecast:
        try:
            return await self.clients[k].infer(ids, ds, request_id)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise PredictorRejected(400, err.details() or "invalid input") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise PredictorRejected(404, err.details() or "not found") from None
            raise ShardUnavailable(k, self.hosts[k], f"{code.name}: {err.details()}") from None
        except _HttpStatus as err:
            if 400 <= err.status < 500:
                raise PredictorRejected(err.status, str(err)) from None
            raise ShardUnavailable(k, self.hosts[k], f"HTTP {err.status}: {err}") from None
        except (httpx.HTTPError, OSError, KeyError, ValueError) as err:
            raise ShardUnavailable(k, self.hosts[k], f"{type(err).__name__}: {err}") from None

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text
