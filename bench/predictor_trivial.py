"""The baseline of the predictor benchmarks: a trivial KServe model with a constant answer.

``python bench/predictor_trivial.py --http_port 8090 --grpc_port 8091 [--workers N ...]`` takes the
same ModelServer flags as ``python -m predictor`` and answers the same requests with the same
shapes (three FP64 outputs of zeros, one per row): what KServe itself costs per request.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import numpy as np
from kserve import Model, ModelServer, model_server
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serving import eventloop

OUTPUTS = ("yhat", "yhat_lower", "yhat_upper")


class ConstantModel(Model):
    """Answers every request with zeros: no decoding, no evaluation."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            n = int(payload.inputs[0].shape[0]) if payload.inputs else 0
            zeros = np.zeros(n)
            outputs = [InferOutput(name, [n], "FP64", zeros) for name in OUTPUTS]
            return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                                 model_version="0", infer_outputs=outputs)
        n = len(payload.get("instances", [])) if isinstance(payload, dict) else 0
        return {"predictions": [dict.fromkeys(OUTPUTS, 0.0)] * n}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.set_defaults(model_name="storecast")
    args, _ = parser.parse_known_args()
    eventloop.install(args.event_loop)  # as the storecast servers do with the same flags
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers,
                enable_latency_logging=args.enable_latency_logging).start([ConstantModel(args.model_name)])


if __name__ == "__main__":
    main()
