"""The transformer: a ``kserve.Model`` turning business requests into predictor calls and back.

V1 ``{"instances": [{"storeId", "beginDate", "endDate"}]}`` -> per store: the request echoed and its
forecast rows (``timestamp``, ``value``, ``lower``, ``upper``, ``open``: whether the store is usually open
on that weekday; Prophet is fitted on open days, so on a usually closed day the value is an
extrapolation, not a sales figure). V2 inputs ``store_id``, ``begin_date``, ``end_date`` ->
long-format outputs ``store_id``, ``ds``, ``yhat``, ``yhat_lower``, ``yhat_upper``, ``open_rate``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from transformer.request import Limits, RequestError, StoreWindow, expand, parse_columns, parse_v1
from transformer.shards import Forecast, ShardRouter

V2_INPUTS = ("store_id", "begin_date", "end_date")
OPEN_THRESHOLD = 0.5  # "open": the store was open on at least half of that weekday in its last 52 weeks


@dataclass
class Job:
    """One request on its way through preprocess -> predict -> postprocess."""

    windows: list[StoreWindow]
    v2: bool
    request_id: str
    store_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    ds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U10"))
    forecast: Forecast | None = None


class ForecastTransformer(Model):
    """Business forecast API in front of one or more predictor shards."""

    def __init__(self, name: str, router: ShardRouter, limits: Limits) -> None:
        super().__init__(name)
        self.router = router
        self.limits = limits
        self.ready = False

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def preprocess(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> Job:
        try:
            if isinstance(payload, InferRequest):
                cols = _columns(payload)
                windows = parse_columns(cols["store_id"], cols.get("begin_date"), cols.get("end_date"), self.limits)
                return Job(windows, True, payload.id or str(uuid.uuid4()))
            if isinstance(payload, dict) and "specversion" in payload and "data" in payload:
                payload = payload["data"]  # a structured CloudEvent KServe did not unwrap (it requires `time`)
            return Job(parse_v1(payload, self.limits), False, _request_id(headers))
        except RequestError as err:
            raise InvalidInput(str(err)) from None

    def validate(self, payload: Job) -> Job:  # the base class checks dict payloads; ours is already checked
        return payload

    async def predict(self, job: Job, headers: dict[str, str] | None = None, response_headers: Any = None) -> Job:
        job.store_ids, days = expand(job.windows)
        job.ds = np.datetime_as_string(days.astype("datetime64[D]"), unit="D")
        job.forecast = await self.router.infer(job.store_ids, job.ds, job.request_id)
        return job

    async def postprocess(self, job: Job, headers: dict[str, str] | None = None,
                          response_headers: Any = None) -> dict | InferResponse:
        fc = job.forecast
        if job.v2:
            n = len(job.store_ids)
            outputs = [InferOutput("store_id", [n], "BYTES", job.store_ids.tolist()),
                       InferOutput("ds", [n], "BYTES", job.ds.tolist())]
            for name, values in (("yhat", fc.yhat), ("yhat_lower", fc.lower), ("yhat_upper", fc.upper),
                                 ("open_rate", fc.open_rate)):
                outputs.append(InferOutput(name, [n], "FP64", values.tolist()))
            return InferResponse(response_id=job.request_id, model_name=self.name, infer_outputs=outputs)
        stamps = np.char.add(job.ds.astype("<U10"), "T00:00:00").tolist()
        yhat, lower, upper = fc.yhat.tolist(), fc.lower.tolist(), fc.upper.tolist()
        usually_open = (fc.open_rate >= OPEN_THRESHOLD).tolist()
        predictions, start = [], 0
        for w in job.windows:
            stop = start + w.days
            rows = [{"timestamp": stamps[i], "value": yhat[i], "lower": lower[i], "upper": upper[i],
                     "open": usually_open[i]} for i in range(start, stop)]
            predictions.append({"request": w.echo(), "forecast": rows})
            start = stop
        return {"predictions": predictions}


def _columns(request: InferRequest) -> dict[str, list[Any]]:
    """V2 inputs by name, as Python lists of str; errors name the input."""
    cols: dict[str, list[Any]] = {}
    for inp in request.inputs:
        if inp.name not in V2_INPUTS:
            raise RequestError(f"inputs.{inp.name}", f"unknown input; expected {', '.join(V2_INPUTS)}")
        if inp.datatype != "BYTES":
            raise RequestError(f"inputs.{inp.name}", f"datatype must be BYTES, got {inp.datatype}")
        cols[inp.name] = [v.decode() if isinstance(v, bytes) else v for v in inp.as_numpy().reshape(-1).tolist()]
    if "store_id" not in cols:
        raise RequestError("inputs.store_id", "missing: one store id per requested store")
    return cols


def _request_id(headers: dict[str, str] | None) -> str:
    return (headers or {}).get("x-request-id") or str(uuid.uuid4())
