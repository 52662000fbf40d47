"""A predictor shard that goes away and comes back, with real processes: while it is down the transformer
answers 503 / UNAVAILABLE naming it at once (never INTERNAL, never a hang); once it is ready again it is
used within about a second (the gRPC channel's reconnect backoff is capped at 1 s; KServe's default
left it unused for 27.6 s here). The measured delay is printed."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from pipelines.stack import LocalStack
from tests.support import MODEL, Predictor, random_table


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("recovery")
    table = random_table(6, seed=8)
    table.save(root / "version" / "params.npz")
    with LocalStack(str(root / "version"), log_dir=root / "logs",
                    transformer_args=["--predictor_request_timeout_seconds", "5"]) as s:
        yield s, table, root


def business(table) -> dict:
    day = str(np.datetime64(int(table.last_day.max()) + 1, "D"))
    return {"instances": [{"storeId": sid, "beginDate": day} for sid in table.store_id.tolist()[:3]]}


def grpc_infer(port: int, table) -> grpc.StatusCode:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

    day = str(np.datetime64(int(table.last_day.max()) + 1, "D")).encode()
    request = pb.ModelInferRequest(model_name=MODEL, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="store_id", datatype="BYTES", shape=[1],
                                              contents=pb.InferTensorContents(bytes_contents=[table.store_id[0].encode()])),
        pb.ModelInferRequest.InferInputTensor(name="begin_date", datatype="BYTES", shape=[1],
                                              contents=pb.InferTensorContents(bytes_contents=[day]))])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            pbg.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_a_shard_that_comes_back_is_used_again_within_about_a_second(stack) -> None:
    s, table, root = stack
    url = f"{s.transformer.url}/v1/models/{MODEL}:predict"
    assert httpx.post(url, json=business(table), timeout=30).status_code == 200
    victim = s.predictors[0]
    victim.proc.kill()
    victim.proc.wait(timeout=10)
    t0 = time.monotonic()
    r = httpx.post(url, json=business(table), timeout=30)
    assert time.monotonic() - t0 < 10  # refused at once, not after a hang
    assert r.status_code == 503 and "shard 0" in r.json()["error"] and r.headers["retry-after"]
    assert grpc_infer(s.transformer.grpc_port, table) == grpc.StatusCode.UNAVAILABLE
    time.sleep(3)  # long enough for the channel to back off, as in a real outage
    back = Predictor(root / "back.log", ["--model_uri", str(root / "version")],
                     ports=(victim.http_port, victim.grpc_port))
    try:
        back.wait_ready(timeout=120)
        ready = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            r = httpx.post(url, json=business(table), timeout=30)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            assert time.monotonic() - ready < 10, "the transformer did not use the shard again within 10 s"
            time.sleep(0.05)
        delay = time.monotonic() - ready
        print(f"\nshard used again {delay:.2f} s after it was ready ({attempts} attempts)")
        assert grpc_infer(s.transformer.grpc_port, table) == grpc.StatusCode.OK
        log = (Path(root) / "logs" / "transformer.log").read_text()
        assert "Traceback" not in log
    finally:
        back.stop()
