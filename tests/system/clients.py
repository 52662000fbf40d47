"""The system test's clients: one forecast asked on every protocol, canary traffic, and an alias watch.

``Answer`` is one protocol's answer in one shape (rows keyed by store and day), so the invariants compare
V1, V1 as a CloudEvent, V2 JSON, V2 binary (tritonclient.http) and gRPC (tritonclient.grpc, in its own
process: its protobuf modules clash with KServe's) without caring how each encodes it.
"""

from __future__ import annotations

import contextlib
import json
import random
import select
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
from mlflow import MlflowClient

from pipelines.versions.registry import is_missing

SERVED = "storecast"  # the KServe model name of predictors and transformer
V2_OUTPUTS = ("store_id", "ds", "yhat", "yhat_lower", "yhat_upper", "open", "promo", "holiday", "calendar")
GRPC_OUTPUTS = ("store_id", "ds", "yhat", "yhat_lower", "yhat_upper", "open", "promo")


@dataclass(frozen=True)
class Row:
    value: float
    lower: float
    upper: float
    open: bool
    promo: bool
    holiday: str | None = None
    calendar: str | None = None


@dataclass
class Answer:
    """One protocol's answer: the version it names and its rows by (store, ISO day); or the error."""

    protocol: str
    version: str | None = None
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)
    error: str | None = None


def windows(stores: tuple[str, ...], begin: str, end: str) -> dict[str, list[str]]:
    return {"store_id": list(stores), "begin_date": [begin] * len(stores), "end_date": [end] * len(stores)}


def v1(url: str, headers: dict[str, str], stores: tuple[str, ...], begin: str, end: str,
       event: bool = False) -> Answer:
    """The business API's V1 JSON; with ``event`` asked as a CloudEvent (binary mode, the streaming path)."""
    protocol = "CloudEvent" if event else "V1"
    if event:
        headers = {**headers, "ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": "tests.system",
                   "ce-type": "com.storecast.forecast.requested"}
    body = {"instances": [{"storeId": s, "beginDate": begin, "endDate": end} for s in stores]}
    try:
        r = httpx.post(f"{url}/v1/models/{SERVED}:predict", json=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        return Answer(protocol, error=f"{type(exc).__name__}: {exc}")
    if r.status_code != 200:
        return Answer(protocol, error=f"HTTP {r.status_code}: {r.text[:300]}")
    doc = r.json()
    out = Answer(protocol, doc.get("model_version"))
    for p in doc["predictions"]:
        store = p["request"]["store_id"]
        for f in p["forecast"]:
            out.rows[(store, f["timestamp"][:10])] = Row(f["value"], f["lower"], f["upper"], f["open"], f["promo"],
                                                         f.get("holiday"), f.get("calendar"))
    return out


def _columns(protocol: str, version: str | None, cols: dict[str, list]) -> Answer:
    out = Answer(protocol, version or None)
    n = len(cols["store_id"])
    for i in range(n):
        out.rows[(str(cols["store_id"][i]), str(cols["ds"][i])[:10])] = Row(
            float(cols["yhat"][i]), float(cols["yhat_lower"][i]), float(cols["yhat_upper"][i]), bool(cols["open"][i]),
            bool(cols["promo"][i]), cols["holiday"][i] if "holiday" in cols else None,
            cols["calendar"][i] if "calendar" in cols else None)
    return out


def v2_json(url: str, headers: dict[str, str], stores: tuple[str, ...], begin: str, end: str) -> Answer:
    """The business API's V2 over REST, JSON tensors."""
    body = {"inputs": [{"name": k, "datatype": "BYTES", "shape": [len(v)], "data": v}
                       for k, v in windows(stores, begin, end).items()],
            "outputs": [{"name": n} for n in V2_OUTPUTS]}
    try:
        r = httpx.post(f"{url}/v2/models/{SERVED}/infer", json=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        return Answer("V2 JSON", error=f"{type(exc).__name__}: {exc}")
    if r.status_code != 200:
        return Answer("V2 JSON", error=f"HTTP {r.status_code}: {r.text[:300]}")
    doc = r.json()
    return _columns("V2 JSON", doc.get("model_version"), {o["name"]: o["data"] for o in doc["outputs"]})


def v2_binary(host: str, headers: dict[str, str], stores: tuple[str, ...], begin: str, end: str) -> Answer:
    """The business API's V2 over REST with binary tensors (tritonclient.http, as Triton clients send it)."""
    import tritonclient.http as th

    try:
        client = th.InferenceServerClient(host, network_timeout=60.0)
        inputs = []
        for name, values in windows(stores, begin, end).items():
            t = th.InferInput(name, [len(values)], "BYTES")
            t.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object), binary_data=True)
            inputs.append(t)
        result = client.infer(SERVED, inputs, outputs=[th.InferRequestedOutput(n, binary_data=True)
                                                       for n in V2_OUTPUTS], headers=headers)
        cols = {n: [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy(n).tolist()]
                for n in V2_OUTPUTS}
        return _columns("V2 binary", result.get_response().get("model_version"), cols)
    except Exception as exc:  # tritonclient raises its own exception types for HTTP errors
        return Answer("V2 binary", error=f"{type(exc).__name__}: {str(exc)[:300]}")


GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tg

host, key, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = tg.InferenceServerClient(host)
for line in sys.stdin:
    ask = json.loads(line)
    try:
        inputs = []
        for name, values in ask.items():
            t = tg.InferInput(name, [len(values)], "BYTES")
            t.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
            inputs.append(t)
        r = client.infer("storecast", inputs, outputs=[tg.InferRequestedOutput(n) for n in names],
                         headers={"x-api-key": key}, client_timeout=60)
        cols = {n: [x.decode() if isinstance(x, bytes) else x for x in r.as_numpy(n).tolist()] for n in names}
        answer = {"model_version": r.get_response().model_version, "outputs": cols}
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(answer), flush=True)
"""


class GrpcClient:
    """tritonclient.grpc in a child process that answers one JSON line per request (started once)."""

    def __init__(self, host: str, key: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", GRPC_CLIENT, host, key, json.dumps(GRPC_OUTPUTS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)

    def ask(self, stores: tuple[str, ...], begin: str, end: str, timeout: float = 90.0) -> Answer:
        if self.proc.poll() is not None:
            return Answer("gRPC", error=f"the gRPC client process exited with {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(windows(stores, begin, end)) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return Answer("gRPC", error=f"no gRPC answer within {timeout:.0f} s")
        doc = json.loads(self.proc.stdout.readline())
        if "error" in doc:
            return Answer("gRPC", error=doc["error"])
        return _columns("gRPC", doc["model_version"], doc["outputs"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Traffic:
    """Steady V2 requests on the canary predictor (its /metrics judge a rollout); ``bad`` is the share of them
    naming a store no version holds (answered as errors: the canary looks bad)."""

    def __init__(self, url: str, stores: tuple[str, ...], day: str, pause: float = 0.04) -> None:
        self.url, self.stores, self.day, self.pause = url, stores, day, pause
        self.bad = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="canary-traffic", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                store = "7777" if random.random() < self.bad else random.choice(self.stores)
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"{self.url}/v2/models/{SERVED}/infer", json={"inputs": [
                        {"name": "store_id", "datatype": "BYTES", "shape": [1], "data": [store]},
                        {"name": "ds", "datatype": "BYTES", "shape": [1], "data": [self.day]}]})
                self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class AliasWatch:
    """Records every version ``champion`` and ``challenger`` point at, polled a few times a second."""

    def __init__(self, uri: str, model: str, every: float = 0.2) -> None:
        self.client, self.model, self.every = MlflowClient(uri, uri), model, every
        self.seen: dict[str, list[str]] = {"champion": [], "challenger": []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="alias-watch", daemon=True)
        self._thread.start()

    def current(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.model, alias).version)
        except Exception as exc:  # a missing alias is None; a registry hiccup is raised (polled again later)
            if is_missing(exc):
                return None
            raise

    def poll(self) -> None:
        for alias in self.seen:
            try:
                version = self.current(alias)
            except Exception:  # polled again in a moment
                continue
            with self._lock:
                if version is not None and (not self.seen[alias] or self.seen[alias][-1] != version):
                    self.seen[alias].append(version)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def history(self, alias: str) -> list[str]:
        self.poll()
        with self._lock:
            return list(self.seen[alias])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_for(what: str, probe, timeout: float, every: float = 0.3) -> object:
    """Poll ``probe() -> (done, detail)`` until done; an AssertionError naming ``what`` and the last detail if not."""
    deadline = time.monotonic() + timeout
    while True:
        done, detail = probe()
        if done:
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; last seen: {str(detail)[:1500]}")
        time.sleep(every)
