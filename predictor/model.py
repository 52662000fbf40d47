"""The KServe model: every store of one model version, forecast with numpy.

``StorecastModel(name, loader)`` serves the snapshot its :class:`~predictor.loader.Loader` holds.
It is ready once a version is loaded; each request reads the snapshot reference once, so an alias
swap never mixes versions. Protocols (``serving.contract`` has the tensors, docs/architecture.md the rest):

- V2 REST / gRPC: inputs ``store_id``, ``ds`` (BYTES, [n]) and, for a what-if, ``promo`` / ``open``
  (INT32 1/0/-1 or BOOL) -> outputs ``yhat``, ``yhat_lower``, ``yhat_upper`` (FP64, [n]), and only
  when named in ``outputs``: ``open_rate`` (FP64), ``open``, ``promo`` (INT32), ``holiday``,
  ``calendar`` (BYTES), ``day_flags`` (INT32); the response's ``model_version`` is the version that
  answered. These are model-ready numbers: ``yhat`` and its bounds are Prophet's on every row, closed
  days included, beside the ``open`` flag; the business API (the transformer) answers closed days 0.
- V1: ``{"instances": [{"store_id": "4", "ds": "2015-08-01"}]}`` ->
  ``{"predictions": [{"store_id", "ds", "yhat", "yhat_lower", "yhat_upper", "open_rate", "open", ...}],
  "model_version"}``; CloudEvents to V1 are unwrapped and answered with a CloudEvent by KServe.
- Listing the stores served: V2 request parameter ``list_stores: true`` with no inputs -> one output
  ``store_id`` (BYTES) and parameters ``stores`` (count) and ``data_end``; V1 ``{"list_stores": true}``
  -> ``{"stores": [...], "model_version"}``.

Bad requests raise ``RequestError`` -> 400 / INVALID_ARGUMENT with a message naming the field and
the problem (unknown stores are listed by id); no version loaded -> 503 saying why.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from predictor.codec import INPUTS, OUTPUT_TYPES, V1_OUTPUTS, Rows, decode_v1, decode_v2, encode_v1, json_body
from predictor.inference import evaluate, list_stores, metadata, requested_outputs
from predictor.loader import Loader
from predictor.request_values import RequestError
from predictor.snapshot import Snapshot
from serving.budget import SMALL_ROWS, RowBudget, offload
from serving.contract import LIST_STORES, MAX_DAYS_AHEAD
from serving.errors import ClientError


class StorecastModel(Model):
    """Per-store Prophet forecasts of one model version, evaluated vectorized from its parameter table."""

    def __init__(self, name: str, loader: Loader, max_rows: int = 100_000,
                 max_days_ahead: int = MAX_DAYS_AHEAD, budget: RowBudget | None = None) -> None:
        super().__init__(name)
        self.loader = loader
        self.budget = budget or RowBudget(0)
        self.max_rows = int(max_rows)
        self.max_days_ahead = int(max_days_ahead)
        self.meter: Any = None
        loader.subscribe(self._on_swap)

    def _on_swap(self, snapshot: Snapshot) -> None:
        self.ready = True
        if self.meter is not None:
            self.meter.swapped()
            self.meter.serving([(snapshot.version, str(snapshot.table.meta.get("data_end", "")))], len(snapshot))

    def attach(self, meter: Any) -> None:
        """Report served version, data end, stores and refused versions to ``meter`` (serving.metrics)."""
        self.meter = meter
        for _ in self.loader.refused:  # refused before the server was built (the first version)
            meter.refused()
        self.loader.on_refused(self._on_refused)
        if self.loader.current is not None:
            self._on_swap(self.loader.current)

    def _on_refused(self, version: str, reason: str) -> None:
        if self.meter is not None:
            self.meter.refused()

    @property
    def version(self) -> str | None:
        """The version being served (None until loaded)."""
        snapshot = self.loader.current
        return snapshot.version if snapshot else None

    def served_versions(self) -> list[str]:
        return [self.version] if self.version else []

    def not_ready_reason(self) -> str | None:
        return self.loader.last_error

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
        return metadata(self.name, None)["inputs"]

    def get_output_types(self) -> list[dict[str, Any]]:
        return metadata(self.name, None)["outputs"]

    def metadata(self) -> dict[str, Any]:
        return metadata(self.name, self.version)

    # ---- inference -------------------------------------------------------------------------------
    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        snapshot = self.loader.current
        if snapshot is None:
            raise ModelNotReady(self.name, self.loader.last_error or "no model version is loaded yet")
        try:
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload, snapshot)
            return await self._predict_v1(payload, snapshot)
        except RequestError as exc:
            raise ClientError(exc.reason) from None

    async def _predict_v1(self, body: Any, snapshot: Snapshot) -> dict[str, Any]:
        body = json_body(body)
        if isinstance(body, dict) and body.get(LIST_STORES) is True:
            return {"stores": list_stores(snapshot)[0], "model_version": snapshot.version}
        rows = decode_v1(body, self.max_rows)
        return encode_v1(rows, await self._forecast(rows, snapshot, V1_OUTPUTS), snapshot.version)

    async def _predict_v2(self, request: InferRequest, snapshot: Snapshot) -> InferResponse:
        params = request.parameters or {}
        if params.get(LIST_STORES) is True and not request.inputs:
            ids, parameters = list_stores(snapshot)
            return self._response(request, snapshot, [InferOutput("store_id", [len(ids)], "BYTES", ids)], parameters)
        names = requested_outputs([o.name for o in request.request_outputs or ()])
        rows = decode_v2(request.inputs, self.max_rows)
        values = await self._forecast(rows, snapshot, names)
        outputs = [InferOutput(name, [len(rows)], OUTPUT_TYPES[name], values[name]) for name in names]
        return self._response(request, snapshot, outputs)

    def _response(self, request: InferRequest, snapshot: Snapshot, outputs: list[InferOutput],
                  parameters: dict[str, Any] | None = None) -> InferResponse:
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name,
                             model_version=snapshot.version, infer_outputs=outputs, parameters=parameters,
                             from_grpc=request.from_grpc)

    async def _forecast(self, rows: Rows, snapshot: Snapshot, names: Any) -> dict[str, np.ndarray]:
        async with self.budget.hold(len(rows)):  # large requests: in the bulk thread, in turn
            return await offload(len(rows) > SMALL_ROWS, evaluate, rows, snapshot, tuple(names),
                                 self.max_days_ahead)

__all__ = ["INPUTS", "StorecastModel"]
