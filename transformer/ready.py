"""Are the predictors ready? One cached answer for the transformer's readiness, refreshed in the background.

The transformer's model-level readiness (V1 ``/v1/models/<name>``, V2 ``/v2/models/<name>/ready``, gRPC
``ModelReady`` and ``/v2/health/ready``) holds only while every shard's predictor says its model is ready
(gRPC ``ModelReady``, or REST ``GET /v2/models/<name>/ready``). A daemon thread (its own event loop) asks
every shard at once, each within ``ASK_SECONDS`` in all, every ``WAIT_SECONDS`` until all are ready, then
every ``READY_SECONDS``; a shard that stops answering (or trickles its answer) turns it false at the next
round. Each check carries the transformer's own credential (``transformer.settings.Credential``). A probe
reads the cached answer and costs nothing. Inference does not wait for it: a request goes to the shards,
and one that is down is named in its 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import grpc
import httpx
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from transformer.shards import GRPC_OPTIONS, GrpcShard, ShardRouter

READY_SECONDS = 1.0  # asked this often while every shard is ready
WAIT_SECONDS = 0.25  # and this often until then
ASK_SECONDS = 2.0  # at most this long for one shard's answer
log = logging.getLogger("storecast.transformer")

__all__ = ["PredictorsReady"]


class PredictorsReady:
    """Whether every predictor shard of ``router`` answers ready (``ready``), and why not (``reason``)."""

    def __init__(self, router: ShardRouter, ready_seconds: float = READY_SECONDS,
                 wait_seconds: float = WAIT_SECONDS) -> None:
        self.router = router
        self.ready_seconds, self.wait_seconds = ready_seconds, wait_seconds
        self.timeout = min(ASK_SECONDS, float(router.timeout))
        self.ready = False
        self.reason: str | None = "the predictors have not been asked yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._grpc: dict[str, tuple[grpc.aio.Channel, GRPCInferenceServiceStub]] = {}
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        """Ask in a daemon thread (its own event loop) from now on; idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="storecast-predictors-ready",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    async def check(self) -> bool:
        """Ask every shard now, all at once, each within ``timeout`` seconds in all (a predictor that trickles
        its answer is not ready); ``ready`` and ``reason`` say what they answered."""
        answers = await asyncio.gather(*(self._ask_within(host) for host in self.router.hosts))
        problems = [f"predictor shard {k} ({host}) {answer}"
                    for k, (host, answer) in enumerate(zip(self.router.hosts, answers, strict=True)) if answer]
        was = self.ready
        self.ready, self.reason = not problems, "; ".join(problems)[:500] or None
        if was != self.ready:
            log.info("predictors %s", "ready" if self.ready else f"not ready: {self.reason}")
        return self.ready

    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                await self.check()
                await asyncio.sleep(self.ready_seconds if self.ready else self.wait_seconds)
        finally:
            await asyncio.gather(*(channel.close() for channel, _ in self._grpc.values()), return_exceptions=True)
            if self._http is not None:
                await self._http.aclose()

    async def _ask_within(self, host: str) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._ask(host)
        except TimeoutError:
            return f"did not answer within {self.timeout:g} s"
        except Exception as exc:  # refused, reset, not a predictor: not ready, and why
            return f"is not reachable ({type(exc).__name__}: {_detail(exc)})"

    async def _ask(self, host: str) -> str | None:
        """None if the shard's model is ready, else what it said."""
        model = self.router.model
        if self.router.protocol == "grpc-v2":
            target = GrpcShard(host, model, self.timeout).host
            if target not in self._grpc:
                channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
                self._grpc[target] = (channel, GRPCInferenceServiceStub(channel))
            answer = await self._grpc[target][1].ModelReady(pb.ModelReadyRequest(name=model), timeout=self.timeout,
                                                            metadata=self.router.credential.metadata())
            return None if answer.ready else "answers not ready"
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
        base = host if host.startswith(("http://", "https://")) else f"http://{host}"
        r = await self._http.get(f"{base}/v2/models/{model}/ready", headers=self.router.credential.headers())
        if r.status_code == 200:
            return None
        said = ""
        with contextlib.suppress(ValueError, AttributeError):
            said = f": {str(r.json().get('error', ''))[:200]}"
        return f"answers HTTP {r.status_code}{said}"


def _detail(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {(exc.details() or '')[:200]}".strip()
    return str(exc)[:200]
