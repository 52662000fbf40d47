"""The transformer is ready only while its predictors answer, and a predictor call is bounded in all by the
predictor timeout; real processes on loopback.

- Readiness: transformers (gRPC and REST to the predictor) started before their predictor are not ready
  on any probe (V1 ``/v1/models/<name>``, V2 ``/v2/models/<name>/ready``, gRPC ``ModelReady`` /
  ``ServerReady``, ``/v2/health/ready``), saying which shard; once the predictor is up they turn ready,
  and when it goes away not ready again. Inference is not held by it: a request meanwhile is a 503 naming
  the shard.
- Timeouts: a predictor that trickles its answer (one byte every 0.2 s, so no read ever times out, first
  in the body, then already in the status line) or never answers, and a gRPC predictor that never answers,
  get the business request a 503 with ``Retry-After`` naming the shard and
  ``--predictor_request_timeout_seconds`` (the business gRPC answer: UNAVAILABLE).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from pipelines.stack import free_port
from tests.support import MODEL, Predictor, Transformer, random_table, wait_until

TIMEOUT = 2  # --predictor_request_timeout_seconds of the transformers here


def probes(t: Transformer) -> dict[str, bool]:
    """Every readiness probe of a transformer: True where it says ready."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

    out = {path: t.http.get(path).status_code == 200
           for path in (f"/v1/models/{MODEL}", f"/v2/models/{MODEL}/ready", "/v2/health/ready")}
    with grpc.insecure_channel(f"127.0.0.1:{t.grpc_port}") as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        out["grpc ModelReady"] = stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready
        out["grpc ServerReady"] = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    return out


def business(table, day_ahead: int = 1) -> dict:
    day = str(np.datetime64(int(table.last_day.max()) + day_ahead, "D"))
    return {"instances": [{"storeId": table.store_id[0], "beginDate": day}]}


def test_ready_only_while_the_predictor_answers(tmp_path: Path) -> None:
    table = random_table(4, seed=12)
    table.save(tmp_path / "version" / "params.npz")
    http_port, grpc_port = free_port(), free_port()
    ts = {"grpc": Transformer(tmp_path / "t-grpc.log", ["--predictor_hosts", f"127.0.0.1:{grpc_port}"]),
          "rest": Transformer(tmp_path / "t-rest.log", ["--predictor_hosts", f"127.0.0.1:{http_port}",
                                                        "--predictor_protocol", "v2"])}
    p = None
    try:
        for t in ts.values():
            t.wait_live()
        for kind, t in ts.items():
            assert not any(probes(t).values()), (kind, probes(t))
            r = t.http.get(f"/v2/models/{MODEL}/ready")
            assert r.status_code == 503 and "predictor shard 0" in r.json()["error"] and r.headers["retry-after"]
            r = t.v1(business(table))  # inference is not held by readiness: the shard is named
            assert r.status_code == 503 and "shard 0" in r.json()["error"], r.text
        p = Predictor(tmp_path / "p.log", ["--model_uri", str(tmp_path / "version")], ports=(http_port, grpc_port))
        p.wait_ready()
        for kind, t in ts.items():
            assert wait_until(lambda t=t: all(probes(t).values())), (kind, probes(t))
            assert t.v1(business(table)).status_code == 200
        p.stop()
        p = None
        for kind, t in ts.items():
            assert wait_until(lambda t=t: not any(probes(t).values())), (kind, probes(t))
            assert "shard 0" in t.http.get(f"/v2/models/{MODEL}/ready").json()["error"]
        for t in ts.values():
            assert "Traceback" not in t.output()
    finally:
        for t in ts.values():
            t.stop()
        if p is not None:
            p.stop()


class Trickler:
    """A loopback TCP server that answers every request slowly: ``mode`` ``body`` sends an HTTP status line and
    headers at once, then one byte of the body every ``every`` seconds; ``status`` trickles from the status line
    on; ``silent`` reads and never answers. Each connection is served until the client goes away."""

    def __init__(self, mode: str, every: float = 0.2) -> None:
        self.mode, self.every = mode, every
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
        try:
            conn.settimeout(self.every)
            with contextlib.suppress(TimeoutError):
                conn.recv(1 << 20)  # the request (or a gRPC preface): not read further
            if self.mode == "body":
                conn.sendall(head)
            data = head if self.mode == "status" else b"{" + b" " * 100_000
            i = 0
            while not self._stop.is_set():
                if self.mode != "silent":
                    conn.sendall(data[i % len(data): i % len(data) + 1])
                    i += 1
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


class SlowGrpc:
    """A real gRPC V2 server on loopback whose ModelInfer never answers (until the caller gives up)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

        class Slow(pbg.GRPCInferenceServiceServicer):
            def ModelInfer(self, request, context):
                self.calls = getattr(self, "calls", 0) + 1
                while context.is_active():
                    time.sleep(0.05)
                return pb.ModelInferResponse()

        self.servicer = Slow()
        self.server = grpc.server(ThreadPoolExecutor(4))
        pbg.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def connections(self) -> int:
        return getattr(self.servicer, "calls", 0)

    def close(self) -> None:
        self.server.stop(0)


@pytest.mark.parametrize("protocol,mode", [("v2", "body"), ("v2", "status"), ("v2", "silent"), ("grpc-v2", "slow")])
def test_a_trickling_predictor_is_a_503_at_the_timeout(tmp_path: Path, protocol: str, mode: str) -> None:
    trickler = SlowGrpc() if mode == "slow" else Trickler(mode)
    t = Transformer(tmp_path / "t.log", ["--predictor_hosts", f"127.0.0.1:{trickler.port}", "--predictor_protocol",
                                         protocol, "--predictor_request_timeout_seconds", str(TIMEOUT)])
    table = random_table(2, seed=1)
    try:
        t.wait_live()
        t0 = time.monotonic()
        r = t.v1(business(table), timeout=60)  # unbounded, it would trickle on far past this
        elapsed = time.monotonic() - t0
        print(f"\n{protocol} / {mode}: {r.status_code} after {elapsed:.1f} s (timeout {TIMEOUT} s)")
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert "predictor shard 0" in error and f"within {TIMEOUT} s" in error, error
        assert "--predictor_request_timeout_seconds" in error and r.headers["retry-after"]
        assert trickler.connections >= 1
        if protocol == "v2":  # the gRPC business answer too
            from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
            from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

            request = pb.ModelInferRequest(model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
                name="store_id", datatype="BYTES", shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[table.store_id[0].encode()]))])
            with grpc.insecure_channel(f"127.0.0.1:{t.grpc_port}") as channel, pytest.raises(grpc.RpcError) as info:
                pbg.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and f"within {TIMEOUT} s" in info.value.details()
        assert "Traceback" not in t.output()
    finally:
        t.stop()
        trickler.close()
