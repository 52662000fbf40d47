"""The transformer: a ``kserve.Model`` turning business requests into predictor calls and back.

V1 ``{"instances": [{"storeId", "beginDate", "endDate", "promoDays", "closedDays"}]}`` -> per store: the
request echoed and its forecast rows (``timestamp``, ``value``, ``lower``, ``upper``, ``open``, ``promo``,
``holiday``, ``calendar``); ``open`` on a day beyond the calendar follows the store's weekday pattern.
A closed day (``open`` false: by the calendar, the request's what-if, or the weekday pattern) is answered
``value``, ``lower`` and ``upper`` 0 on every path (V1, V2 JSON / binary / gRPC, CloudEvents:
``transformer.answer.zero_closed``). The answer carries ``model_version``: the predictor version that
answered. V2 inputs ``store_id``, ``begin_date``, ``end_date`` -> the long-format outputs of
``serving.contract.TRANSFORMER_OUTPUTS`` (those requested).

Listing the stores served, behind the same door as a forecast (``forecast`` permission, the same rate
limit): V1 ``{"list_stores": true}`` -> ``{"stores": [...], "model_version"}``; V2 request parameter
``list_stores: true`` with no inputs -> one output ``store_id`` (BYTES) and parameters ``stores`` (count)
and ``data_end``, as the predictor answers it. Every shard is asked at the time (its stores, sorted by
``serving.contract.store_sort_key``); a shard that does not answer is a 503 naming it, never a partial list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from serving import cloudevents
from serving.budget import SMALL_ROWS, RowBudget, offload
from serving.contract import LIST_STORES, TRANSFORMER_INPUTS, TRANSFORMER_OUTPUTS, names, store_sort_key, to_day
from serving.errors import ClientError
from transformer.answer import FORECASTS, v1_body, v2_columns
from transformer.ready import PredictorsReady
from transformer.request import (
    BusinessRequestError,
    Limits,
    StoreWindow,
    asks_stores,
    parse_columns,
    parse_v1,
    what_if,
)
from transformer.shards import (
    FLAGS,
    FP64,
    GRPC_OPTIONS,
    OUTPUTS,
    REFUSALS,
    Forecast,
    GrpcShard,
    PredictorRejected,
    ShardRefused,
    ShardRouter,
    ShardState,
    ShardUnavailable,
    ShardWatch,
    read_grpc,
)

V2_INPUTS = tuple(t.name for t in TRANSFORMER_INPUTS)
V2_OUTPUTS = {t.name: t.datatype for t in TRANSFORMER_OUTPUTS}
V2_DEFAULT = names(TRANSFORMER_OUTPUTS, default=True)
V2_CALENDAR = ("open", "promo", "holiday", "calendar")  # V2 outputs unpacked from the predictor's day_flags
PLATFORM = "storecast_business_api"
INLINE_STORES = 64  # larger requests are parsed in a worker thread
log = logging.getLogger("storecast.transformer")


@dataclass
class Job:
    """One request on its way through preprocess -> predict -> postprocess."""

    windows: list[StoreWindow]
    v2: bool
    request_id: str
    outputs: tuple[str, ...] = ()  # V2: the outputs to answer, in order
    version: str | None = None  # the predictor version asked for (None: whatever it serves)
    event: bool = False  # V1 asked as a CloudEvent (KServe wraps the answer: a dict, not bytes)
    forecast: Forecast | None = None
    answer: Any = None
    listing: bool = False  # the stores served, not a forecast

    @property
    def rows(self) -> int:
        return sum(w.days for w in self.windows)


class ForecastTransformer(Model):
    """Business forecast API in front of one or more predictor shards."""

    def __init__(self, name: str, router: ShardRouter, limits: Limits, watch: ShardWatch | None = None,
                 budget: RowBudget | None = None, predictors: PredictorsReady | None = None) -> None:
        super().__init__(name, return_response_headers=True)
        self.router, self.limits, self.watch = router, limits, watch
        self.budget = budget or RowBudget(0)
        self.predictors = predictors
        self.data_end: int | None = None
        self.ready = False
        if watch is not None:
            watch.listeners.append(self._on_states)

    def load(self) -> bool:
        """The transformer itself is ready at once; its readiness also waits for the predictors (``healthy``)."""
        self.ready = True
        return self.ready

    def start(self) -> None:
        log.info("predictor calls carry %s", self.router.credential.describe())
        for thread in (self.watch, self.predictors):
            if thread is not None:
                thread.start()

    async def healthy(self) -> bool:
        """Model-level readiness (the probes): loaded, and every predictor shard answered ready when last asked
        (``transformer.ready``); inference does not wait for it (``serving.dataplane``)."""
        return self.ready and (self.predictors is None or self.predictors.ready)

    def not_ready_reason(self) -> str | None:
        if self.predictors is not None and not self.predictors.ready:
            return self.predictors.reason
        return None

    # ---- versions, metadata, metrics -------------------------------------------------------------
    def served_versions(self) -> None:
        """None: the predictors check a requested version (the transformer passes it on)."""
        return None

    def known_versions(self) -> list[str]:
        seen = set(self.router.versions.values())
        if self.watch is not None:
            seen |= {s.version for s in self.watch.states if s.version}
        return sorted(v for v in seen if v)

    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {
            "name": self.name, "platform": PLATFORM,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1]} for t in TRANSFORMER_INPUTS],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1]} for t in TRANSFORMER_OUTPUTS]}
        versions = self.known_versions()
        if versions:
            md["versions"] = versions
        return md

    def attach(self, meter: Any) -> None:
        self.meter = meter

    def _on_states(self, states: list[ShardState]) -> None:
        ends = []
        for s in states:
            if s.data_end:
                with contextlib.suppress(ValueError):
                    ends.append(to_day(s.data_end))
        self.data_end = max(ends) if ends else self.data_end
        meter = getattr(self, "meter", None)
        if meter is not None:
            known = {(s.version, s.data_end or "") for s in states if s.version}
            stores = sum(s.stores or 0 for s in states) if all(s.stores is not None for s in states) else None
            meter.serving(known, stores)

    # ---- inference -------------------------------------------------------------------------------
    async def preprocess(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> Job:
        limits = replace(self.limits, data_end=self.data_end)
        try:
            if isinstance(payload, InferRequest):
                if (payload.parameters or {}).get(LIST_STORES) is True and not payload.inputs:
                    return Job([], True, payload.id or str(uuid.uuid4()), version=payload.model_version or None,
                               listing=True)
                cols = _columns(payload)
                outputs = _outputs(payload)
                windows = await offload(len(cols["store_id"]) > INLINE_STORES, parse_columns, cols["store_id"],
                                        cols.get("begin_date"), cols.get("end_date"), limits)
                return Job(windows, True, payload.id or str(uuid.uuid4()), outputs, payload.model_version or None)
            event = bool(headers) and (cloudevents.is_binary(headers) or cloudevents.is_structured(headers))
            if asks_stores(payload):
                return Job([], False, _request_id(headers), event=event, listing=True)
            instances = payload.get("instances") if isinstance(payload, dict) else None
            many = isinstance(instances, list) and len(instances) > INLINE_STORES
            windows = await offload(many, parse_v1, payload, limits)
            return Job(windows, False, _request_id(headers), event=event)
        except BusinessRequestError as err:
            raise ClientError(str(err)) from None

    def validate(self, payload: Job) -> Job:  # the base class checks dict payloads; ours is already checked
        return payload

    async def predict(self, job: Job, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Job:
        """Ask the predictors for every window and build the answer, within the row budget."""
        if job.listing:
            job.answer = await self.list_stores(job.version, headers)
            return job
        if job.v2:
            asked = tuple(o for o in FP64 if o in job.outputs)
            if not asked or any(o in V2_CALENDAR or o in FORECASTS for o in job.outputs):
                asked += (FLAGS,)  # the calendar columns, and which days are closed (answered 0)
        else:
            asked = OUTPUTS
        ids = np.array([w.store_id for w in job.windows], dtype=object)
        begin = np.array([w.begin for w in job.windows], dtype=np.int64)
        days = np.array([w.days for w in job.windows], dtype=np.int64)
        async with self.budget.hold(job.rows):
            job.forecast = fc = await self.router.infer(ids, begin, days, job.request_id, asked, job.version,
                                                        what_if(job.windows), headers)
            if job.v2:
                job.answer = await offload(job.rows > SMALL_ROWS, v2_columns, job.windows, fc.values, job.outputs)
            else:
                job.answer = await offload(job.rows > SMALL_ROWS, v1_body, job.windows, fc.values, fc.version)
        if not job.v2 and not job.event and response_headers is not None:
            response_headers["content-type"] = "application/json"
        return job

    async def postprocess(self, job: Job, headers: dict[str, str] | None = None,
                          response_headers: Any = None) -> dict | bytearray | InferResponse:
        if job.listing:
            ids, version, data_end = job.answer
            if not job.v2:
                return {"stores": ids, "model_version": version}
            return InferResponse(response_id=job.request_id, model_name=self.name, model_version=version,
                                 infer_outputs=[InferOutput("store_id", [len(ids)], "BYTES", ids)],
                                 parameters={"stores": len(ids), "data_end": data_end or ""})
        fc = job.forecast
        assert fc is not None
        if job.v2:
            n = job.rows
            outputs = [InferOutput(name, [n], V2_OUTPUTS[name], job.answer[name]) for name in job.outputs]
            return InferResponse(response_id=job.request_id, model_name=self.name, model_version=fc.version,
                                 infer_outputs=outputs)
        if job.event:  # KServe wraps a CloudEvent answer around a document
            return orjson.loads(job.answer)
        return job.answer  # a ready JSON buffer, sent as it is (serving.rest)


    # ---- the stores served -------------------------------------------------------------------------
    async def list_stores(self, version: str | None = None, caller: dict[str, str] | None = None
                          ) -> tuple[list[str], str | None, str | None]:
        """Every shard's stores (asked now, all shards at once), sorted; the version(s) and the latest data end."""
        headers = self.router.credential.headers(caller)
        answers = await asyncio.gather(*(self._shard_stores(k, version, headers)
                                         for k in range(len(self.router.hosts))))
        ids = sorted({s for shard_ids, _, _ in answers for s in shard_ids}, key=store_sort_key)
        versions = ",".join(sorted({v for _, v, _ in answers if v})) or None
        ends = [end for _, _, end in answers if end]
        return ids, versions, max(ends) if ends else None

    async def _shard_stores(self, k: int, version: str | None, headers: dict[str, str]
                            ) -> tuple[list[str], str, str | None]:
        """One shard's ``list_stores`` answer over the router's protocol, bounded by the predictor timeout;
        failures as inference maps them (a shard down: 503 naming it; the transformer's key refused: 502)."""
        router, host = self.router, self.router.hosts[k]
        forwarded = "authorization" in headers
        try:
            async with asyncio.timeout(router.timeout):
                if router.protocol == "grpc-v2":
                    return await _grpc_stores(GrpcShard(host, router.model, router.timeout).host, router.model,
                                              version, headers)
                return await _rest_stores(host, router.model, version, headers, router.timeout)
        except TimeoutError:
            raise ShardUnavailable(k, host, f"no store list within {router.timeout:g} s") from None
        except grpc.aio.AioRpcError as err:
            code, detail = err.code(), err.details() or ""
            if code in REFUSALS and not forwarded:
                raise ShardRefused(k, host, f"{code.name}: {detail[:300]}") from None
            if code in REFUSALS or code == grpc.StatusCode.NOT_FOUND:
                raise PredictorRejected(REFUSALS.get(code, 404), detail or code.name.lower()) from None
            raise ShardUnavailable(k, host, f"{code.name}: {detail[:300]}") from None
        except httpx.HTTPStatusError as err:
            status, text = err.response.status_code, err.response.text[:300]
            if status in (401, 403) and not forwarded:
                raise ShardRefused(k, host, f"HTTP {status}: {text}") from None
            if status in (401, 403, 404):
                raise PredictorRejected(status, text) from None
            raise ShardUnavailable(k, host, f"HTTP {status}: {text}") from None
        except (httpx.HTTPError, OSError, KeyError, ValueError, TypeError) as err:
            raise ShardUnavailable(k, host, f"{type(err).__name__}: {str(err)[:300]}") from None


async def _grpc_stores(target: str, model: str, version: str | None, headers: dict[str, str]
                       ) -> tuple[list[str], str, str | None]:
    """``list_stores`` over gRPC V2 on a channel of its own (a listing is rare; inference keeps its channels)."""
    async with grpc.aio.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        res = await GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name=model, model_version=version or "",
                                 parameters={LIST_STORES: pb.InferParameter(bool_param=True)}),
            metadata=tuple(headers.items()) or None)
    ids = read_grpc(res).get("store_id")
    if ids is None:
        raise KeyError("the answer has no store_id output")
    return [str(s) for s in ids.tolist()], res.model_version, res.parameters["data_end"].string_param or None


async def _rest_stores(host: str, model: str, version: str | None, headers: dict[str, str], timeout: float
                       ) -> tuple[list[str], str, str | None]:
    """``list_stores`` over REST V2 (JSON)."""
    base = host if host.startswith(("http://", "https://")) else f"http://{host}"
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    async with httpx.AsyncClient(timeout=timeout) as http:
        r = await http.post(base + path, json={"parameters": {LIST_STORES: True}, "inputs": []}, headers=headers)
    r.raise_for_status()
    doc = r.json()
    out = next((o for o in doc.get("outputs") or () if o.get("name") == "store_id"), None)
    if out is None:
        raise KeyError("the answer has no store_id output")
    return [str(s) for s in out["data"]], str(doc.get("model_version", "")), \
        (doc.get("parameters") or {}).get("data_end") or None


def _columns(request: InferRequest) -> dict[str, list[Any]]:
    """V2 inputs by name, as Python lists of str; errors name the input."""
    cols: dict[str, list[Any]] = {}
    for inp in request.inputs:
        if inp.name not in V2_INPUTS:
            raise BusinessRequestError(f"inputs.{inp.name[:64]}", f"unknown input; expected {', '.join(V2_INPUTS)}")
        if inp.name in cols:
            raise BusinessRequestError(f"inputs.{inp.name}", "given twice")
        if inp.datatype != "BYTES":
            raise BusinessRequestError(f"inputs.{inp.name}", f"datatype must be BYTES, got {inp.datatype[:20]}")
        values = inp.data if isinstance(inp.data, list) else inp.as_numpy().reshape(-1).tolist()
        try:
            cols[inp.name] = [v.decode() if isinstance(v, bytes) else v for v in values]
        except UnicodeDecodeError:
            raise BusinessRequestError(f"inputs.{inp.name}", "holds an element that is not UTF-8") from None
    if "store_id" not in cols:
        raise BusinessRequestError("inputs.store_id", "missing: one store id per requested store")
    return cols


def _outputs(request: InferRequest) -> tuple[str, ...]:
    if not request.request_outputs:
        return V2_DEFAULT
    wanted = tuple(o.name for o in request.request_outputs)
    unknown = [name for name in wanted if name not in V2_OUTPUTS]
    if unknown:
        raise BusinessRequestError(f"outputs.{unknown[0][:64]}",
                                   f"unknown output; the outputs are {', '.join(V2_OUTPUTS)}")
    return wanted


def _request_id(headers: dict[str, str] | None) -> str:
    rid = (headers or {}).get("x-request-id") or ""
    return rid[:128] if rid.isprintable() and rid else str(uuid.uuid4())


__all__ = ["ForecastTransformer", "Job"]
