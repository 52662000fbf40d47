"""The baseline of the end-to-end benchmark: KServe's stock transformer path, doing nothing of ours.

``python bench/trivial_transformer.py --predictor_host 127.0.0.1:8091 --predictor_protocol grpc-v2
--http_port 8090 --grpc_port 0`` turns a business V1 body into the same 7-row V2 request
(``store_id``, ``ds``) without validation, sends it with KServe's own predictor client
(``Model.predict``), and answers the outputs as they come: what the framework's hop costs.
"""

from __future__ import annotations

import argparse
from typing import Any

from kserve import InferInput, InferRequest, Model, ModelServer, model_server

from serving import eventloop

DAYS = [f"2015-08-0{d}" for d in range(1, 8)]


class PassThrough(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> InferRequest:
        store = str(payload["instances"][0].get("storeId", "1"))
        inputs = [InferInput("store_id", [7], "BYTES", [store] * 7), InferInput("ds", [7], "BYTES", DAYS)]
        return InferRequest(model_name=self.name, infer_inputs=inputs, request_id="bench")

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> dict[str, Any]:
        return {"predictions": [{o.name: o.data for o in result.outputs}]}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.set_defaults(model_name="storecast")
    args, _ = parser.parse_known_args()
    eventloop.install(args.event_loop)  # as the storecast servers do with the same flags
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers).start(
        [PassThrough(args.model_name)])


if __name__ == "__main__":
    main()
