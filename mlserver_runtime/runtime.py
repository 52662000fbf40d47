"""``StorecastRuntime``: every store of one model version, forecast with numpy, as an MLServer model.

It is the KServe predictor's core under another server: the same version loader (``predictor.loader``: the
same checks before a version serves, an alias followed every ``refresh_seconds``), the same decoding
(``predictor.codec``), the same evaluation (``predictor.inference``), so the same request gets the same
numbers, to the bit, on both stacks. V2 only (MLServer speaks the Open Inference Protocol): the long
format, the windows form, what-ifs, the optional outputs and ``list_stores``, as ``serving.contract`` has them.

Adaptive batching (model-settings ``max_batch_size`` / ``max_batch_time``) merges requests by concatenating
their inputs: right for plain long-format requests (``store_id`` and ``ds`` only, the default outputs), wrong
for the windows form, what-ifs, named outputs or ``list_stores``. So the runtime keeps MLServer's batcher for
the plain requests, after checking each on its own (a bad request gets its own 400 and never fails the
requests it would have been merged with), and answers every other request at once. MLServer merges requests
before its parallel workers see them, so batching needs ``parallel_workers: 0``; the runtime refuses to load
otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, ResponseOutput
from mlserver.utils import get_model_uri

from mlserver_runtime.metrics import BATCH_ROWS
from mlserver_runtime.settings import RuntimeSettings, SettingsError
from mlserver_runtime.tensors import outputs, tensors
from predictor.codec import INPUTS, decode_v2
from predictor.inference import evaluate, list_stores, locate, metadata, requested_outputs
from predictor.loader import Loader
from predictor.request_values import RequestError
from predictor.snapshot import Snapshot
from serving.budget import SMALL_ROWS, offload
from serving.contract import LIST_STORES
from serving.errors import ClientError
from serving.logs import configure_logging

log = logging.getLogger("storecast.mlserver")

LOAD_TIMEOUT = 120.0  # seconds the first load retries an unreachable registry before the load fails
_BATCHER = "__adaptive_batching__"  # where mlserver.batching.load_batching keeps its AdaptiveBatcher


class StorecastRuntime(MLModel):
    """Per-store Prophet forecasts of one model version, evaluated vectorized from its parameter table."""

    def __setattr__(self, name: str, value: Any) -> None:
        # MLServer's adaptive batching replaces ``predict`` with its batcher: keep the batcher for the
        # requests that can be merged (``predict`` below decides), and the class's ``predict`` in place.
        if name == "predict" and hasattr(self, _BATCHER):
            object.__setattr__(self, "_batched", value)
            return
        super().__setattr__(name, value)

    async def load(self) -> bool:
        """Load the version the settings name (retrying an unreachable registry), then follow it."""
        configure_logging()
        params = self.settings.parameters
        try:
            uri = await get_model_uri(self.settings) if params is not None and params.uri else None
            self.options = RuntimeSettings.of(uri, params.extra if params is not None else None)
        except SettingsError as exc:
            raise MLServerError(str(exc), 422) from None
        batching = self.settings.max_batch_size > 1 and self.settings.max_batch_time > 0
        if batching and self.__dict__.get("_batched") is None:
            raise MLServerError("adaptive batching (max_batch_size > 1) needs inference in the server process: set "
                                "parallel_workers to 0 (MLSERVER_PARALLEL_WORKERS=0): MLServer merges requests "
                                "before a worker sees them, and only the server process can keep apart the requests "
                                "that must not be merged", 422)
        o = self.options
        self.loader = Loader(o.model_uri, o.shard, o.refresh_seconds, None, o.precompute_days, o.max_days_ahead)
        await self._first_version()
        self.loader.start()  # follows an alias (or latest) every refresh_seconds; a pinned URI stays put
        return True

    async def _first_version(self) -> None:
        deadline, backoff = time.monotonic() + LOAD_TIMEOUT, 0.5
        while True:
            try:
                await asyncio.to_thread(self.loader.refresh)
            except Exception as exc:  # the registry may be down or slow: retry until the deadline
                self.loader.last_error = f"{type(exc).__name__}: {exc}"
            if self.loader.current is not None:
                return
            if self.loader.refused or time.monotonic() + backoff > deadline:
                raise MLServerError(f"cannot serve {self.options.model_uri.uri}: {self.loader.last_error}", 503)
            log.warning("cannot load %s yet: %s; retrying in %.1f s", self.options.model_uri.uri,
                        self.loader.last_error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def metadata(self) -> MetadataModelResponse:
        """The KServe predictor's metadata: the contract's inputs and outputs, the version being served."""
        current = self.loader.current if hasattr(self, "loader") else None
        return MetadataModelResponse(**metadata(self.name, current.version if current else None))

    async def unload(self) -> bool:
        self.loader.stop()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        snapshot = self.loader.current
        assert snapshot is not None  # loaded before MLServer routes a request here
        try:
            batched = self.__dict__.get("_batched")
            if payload.id is None:  # the batcher's merged request: each part was checked on its own
                response = await self._answer(payload, snapshot, self.options.max_rows * self.settings.max_batch_size)
                BATCH_ROWS.labels(model=self.name).observe(response.outputs[0].shape[0])
                return response
            if batched is not None and _plain(payload):
                locate(decode_v2(tensors(payload.inputs), self.options.max_rows), snapshot,
                       self.options.max_days_ahead)
                return await batched(payload)
            return await self._answer(payload, snapshot, self.options.max_rows)
        except RequestError as exc:  # 400 / INVALID_ARGUMENT naming the input and the problem
            raise MLServerError(exc.reason, 400) from None
        except ClientError as exc:
            raise MLServerError(str(exc), 400) from None

    async def _answer(self, payload: InferenceRequest, snapshot: Snapshot, max_rows: int) -> InferenceResponse:
        if _asks(payload, LIST_STORES) and not payload.inputs:
            ids, parameters = list_stores(snapshot)
            store_ids = ResponseOutput(name="store_id", shape=[len(ids)], datatype="BYTES", data=ids)
            return self._response(snapshot, [store_ids], parameters)
        names = requested_outputs([o.name for o in payload.outputs or ()])
        rows = decode_v2(tensors(payload.inputs), max_rows)
        values = await offload(len(rows) > SMALL_ROWS, evaluate, rows, snapshot, names, self.options.max_days_ahead)
        return self._response(snapshot, outputs(names, values, len(rows)))

    def _response(self, snapshot: Snapshot, answer: list[ResponseOutput],
                  parameters: dict[str, Any] | None = None) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, model_version=snapshot.version, outputs=answer,
                                 parameters=parameters)


def _asks(payload: InferenceRequest, name: str) -> bool:
    params = payload.parameters
    return params is not None and (params.model_extra or {}).get(name) is True


def _plain(payload: InferenceRequest) -> bool:
    """A request the batcher may merge: the long format's two inputs, one row each, the default outputs."""
    if payload.outputs or _asks(payload, LIST_STORES) or len(payload.inputs) != len(INPUTS):
        return False
    return {i.name for i in payload.inputs} == set(INPUTS) and len({tuple(i.shape) for i in payload.inputs}) == 1
