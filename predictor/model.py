"""The KServe model: every store of one model version, forecast with numpy.

``StorecastModel(name, loader)`` serves the snapshot its :class:`~predictor.loader.Loader` holds.
It is ready once a version is loaded; each request reads the snapshot reference once, so an alias
swap never mixes versions. Protocols (DESIGN.md, "Wire contracts"):

- V2 REST / gRPC: inputs ``store_id``, ``ds`` (BYTES, [n]) -> outputs ``yhat``, ``yhat_lower``,
  ``yhat_upper`` (FP64, [n]); ``open_rate`` too when the request's ``outputs`` name it (the share of that
  weekday the store was open in its last 52 weeks); the response's ``model_version`` is the version
  that answered.
- V1: ``{"instances": [{"store_id": "4", "ds": "2015-08-01"}]}`` ->
  ``{"predictions": [{"store_id", "ds", "yhat", "yhat_lower", "yhat_upper", "open_rate"}], "model_version"}``;
  CloudEvents to V1 are unwrapped and answered with a CloudEvent by KServe.
- Listing the stores served: V2 request parameter ``list_stores: true`` with no inputs -> one output
  ``store_id`` (BYTES) and parameters ``stores`` (count); V1 ``{"list_stores": true}`` ->
  ``{"stores": [...], "model_version"}``.

Bad requests raise KServe's ``InvalidInput``: HTTP 400 / gRPC INVALID_ARGUMENT, with a message that
names the field and the problem (unknown stores are listed by id).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from predictor.codec import (
    ALL_OUTPUTS,
    INPUTS,
    OPEN_RATE,
    OUTPUTS,
    RequestError,
    Rows,
    decode_v1,
    decode_v2,
    encode_v1,
    json_body,
)
from predictor.loader import Loader
from predictor.server import DEFAULT_MAX_ROWS
from predictor.snapshot import Snapshot
from predictor.table import UnknownStoresError

INLINE_ROWS = 4096  # larger requests are evaluated in a worker thread, off the event loop
LIST_STORES = "list_stores"


class StorecastModel(Model):
    """Per-store Prophet forecasts of one model version, evaluated vectorized from its parameter table."""

    def __init__(self, name: str, loader: Loader, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        super().__init__(name)
        self.loader = loader
        self.max_rows = int(max_rows)
        loader.subscribe(self._on_swap)

    def _on_swap(self, snapshot: Snapshot) -> None:
        self.ready = True

    @property
    def version(self) -> str | None:
        """The version being served (None until loaded)."""
        snapshot = self.loader.current
        return snapshot.version if snapshot else None

    # ---- lifecycle (KServe hooks) ----------------------------------------------------------------
    def start(self) -> None:
        """Start loading in the background: the server comes up at once, ready once loaded."""
        self.loader.start()

    def load(self) -> bool:
        """Load now, or reload if the URI points at another version (repository load endpoint)."""
        self.loader.refresh()
        self.ready = self.loader.current is not None
        return self.ready

    def stop(self) -> None:
        self.ready = False

    # ---- metadata --------------------------------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in INPUTS]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": name, "datatype": "FP64", "shape": [-1]} for name in ALL_OUTPUTS]

    # ---- inference -------------------------------------------------------------------------------
    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        snapshot = self.loader.current
        if snapshot is None:
            raise ModelNotReady(self.name, "no model version is loaded yet")
        try:
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload, snapshot)
            return await self._predict_v1(payload, snapshot)
        except RequestError as exc:
            raise InvalidInput(exc.reason) from None

    async def _predict_v1(self, body: Any, snapshot: Snapshot) -> dict[str, Any]:
        body = json_body(body)
        if isinstance(body, dict) and body.get(LIST_STORES) is True:
            return {"stores": snapshot.table.store_id.tolist(), "model_version": snapshot.version}
        rows = decode_v1(body, self.max_rows)
        return encode_v1(rows, *await self._forecast(rows, snapshot, True), snapshot.version)

    async def _predict_v2(self, request: InferRequest, snapshot: Snapshot) -> InferResponse:
        params = to_http_parameters(request.parameters) if request.parameters else {}
        if params.get(LIST_STORES) is True and not request.inputs:
            ids = snapshot.table.store_id
            outputs = [InferOutput("store_id", [len(ids)], "BYTES", _tensor(np.array(ids.tolist(), dtype=object),
                                                                             request))]
            return self._response(request, snapshot, outputs, {"stores": len(ids)})
        names = [o.name for o in request.request_outputs] if request.request_outputs else list(OUTPUTS)
        unknown = [name for name in names if name not in ALL_OUTPUTS]
        if unknown:
            raise RequestError(f"unknown output {', '.join(map(repr, unknown))}: the outputs are "
                               f"{', '.join(ALL_OUTPUTS)}")
        rows = decode_v2(request.inputs, self.max_rows)
        values = dict(zip(ALL_OUTPUTS, await self._forecast(rows, snapshot, OPEN_RATE in names), strict=False))
        outputs = [InferOutput(name, [len(rows)], "FP64", _tensor(values[name], request)) for name in names]
        return self._response(request, snapshot, outputs)

    def _response(self, request: InferRequest, snapshot: Snapshot, outputs: list[InferOutput],
                  parameters: dict[str, Any] | None = None) -> InferResponse:
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),  # KServe cannot answer a request without an id
            model_name=self.name, model_version=snapshot.version, infer_outputs=outputs,
            parameters=parameters, use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs, from_grpc=request.from_grpc,
        )

    async def _forecast(self, rows: Rows, snapshot: Snapshot, open_rate: bool = False) -> tuple[np.ndarray, ...]:
        if len(rows) > INLINE_ROWS:
            return await asyncio.get_running_loop().run_in_executor(None, evaluate, rows, snapshot, open_rate)
        return evaluate(rows, snapshot, open_rate)


def _tensor(values: np.ndarray, request: InferRequest) -> np.ndarray | list[Any]:
    """Output data as KServe encodes it best: arrays for REST, lists for gRPC (its raw-output path
    cannot take an array)."""
    return values.tolist() if request.from_grpc else values


def evaluate(rows: Rows, snapshot: Snapshot, open_rate: bool = False) -> tuple[np.ndarray, ...]:
    """yhat, yhat_lower, yhat_upper (and the weekday open rate) of every row, in one vectorized evaluation."""
    try:
        return snapshot.evaluate(rows.store_id, rows.days, open_rate)
    except UnknownStoresError as exc:
        shard = f", shard {snapshot.shard}" if snapshot.shard else ""
        raise RequestError(f"{exc} (not among the {len(snapshot.table)} stores of model version "
                           f"{snapshot.version}{shard})") from None
