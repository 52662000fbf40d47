"""A naive per-request Prophet predictor: the reference point of the predictor benchmarks.

``python bench/predictor_naive.py --models prophet_models.zip --params params.npz --stores 100 ...``
loads the first N stock Prophet models of a version (``prophet_models.zip``: gzip JSON per store) and
answers V2 requests (``store_id``, ``ds`` -> ``yhat``, ``yhat_lower``, ``yhat_upper``) by calling
``Prophet.predict`` per store of the request, as a straightforward KServe custom model would: the
future frame with the version's calendar regressors (``pipelines.training.export.future_frame``, from
``params.npz``), ``expm1`` of the answer for a version fitted on ``log1p(sales)``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import uuid
import zipfile
from typing import Any

import numpy as np
import pandas as pd
from kserve import Model, ModelServer, model_server
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prophet.serialize import model_from_json

from pipelines.training.export import future_frame
from predictor.table import ParamTable
from serving import eventloop

OUTPUTS = ("yhat", "yhat_lower", "yhat_upper")


class NaiveProphetModel(Model):
    """Stock Prophet objects in memory, one ``predict`` call per store and request."""

    def __init__(self, name: str, models_zip: str, params: str, stores: int) -> None:
        super().__init__(name)
        self.models_zip, self.params, self.stores = models_zip, params, stores
        self.models: dict[str, Any] = {}
        self.table: Any = None

    def load(self) -> bool:
        with zipfile.ZipFile(self.models_zip) as zf:
            names = sorted(zf.namelist(), key=lambda n: (len(n), n))[: self.stores]
            for name in names:
                self.models[name.removesuffix(".json.gz")] = model_from_json(gzip.decompress(zf.read(name)).decode())
        self.table = ParamTable.load(self.params)
        self.ready = True
        return True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        assert isinstance(payload, InferRequest)
        inputs = {i.name: i.as_numpy().reshape(-1) for i in payload.inputs}
        ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in inputs["store_id"]])
        ds = pd.to_datetime([v.decode() if isinstance(v, bytes) else str(v) for v in inputs["ds"]])
        days = (ds.values.astype("datetime64[D]").astype(np.int64))
        out = np.zeros((3, len(ids)))
        for sid in np.unique(ids):
            rows = np.flatnonzero(ids == sid)
            fc = self.models[sid].predict(future_frame(self.table, sid, days[rows]))
            out[:, rows] = fc[list(OUTPUTS)].to_numpy().T
        if self.table.transform == "log1p":
            out = np.expm1(out)
        outputs = [InferOutput(name, [len(ids)], "FP64", out[i]) for i, name in enumerate(OUTPUTS)]
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.set_defaults(model_name="storecast")
    parser.add_argument("--models", required=True, help="prophet_models.zip of a version")
    parser.add_argument("--params", required=True, help="params.npz of the same version (its calendar)")
    parser.add_argument("--stores", type=int, default=100)
    args, _ = parser.parse_known_args()
    eventloop.install(args.event_loop)  # as the storecast servers do with the same flags
    logging.getLogger("cmdstanpy").disabled = True
    logging.getLogger("prophet").setLevel(logging.WARNING)
    model = NaiveProphetModel(args.model_name, args.models, args.params, args.stores)
    model.load()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers,
                enable_latency_logging=args.enable_latency_logging).start([model])


if __name__ == "__main__":
    main()
