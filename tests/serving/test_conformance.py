"""Open Inference Protocol conformance of both servers, as real clients speak it.

NVIDIA's ``tritonclient`` (HTTP with ``binary_data`` False and True, gRPC) and KServe's own
``InferenceRESTClient`` / ``InferenceGRPCClient`` against the predictor and the transformer of one
local stack; plus the details clients rely on: JSON without a content type or with a charset,
gzip bodies, metadata, requested and binary outputs, versions by path and ``model_version``,
``model_version`` in every answer, optional fields omitted, shapes checked, ``{"error": ...}`` bodies.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import MODEL, Served, metric, served

KINDS = ["predictor", "transformer"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served(tmp_path_factory)


def host(s: Served, kind: str, grpc: bool = False) -> str:
    service = s.server(kind)
    return f"127.0.0.1:{service.grpc_port if grpc else service.http_port}"


def request_arrays(s: Served, kind: str) -> dict[str, np.ndarray]:
    """Inputs of a small request: three store-days (predictor) or two stores' windows (transformer)."""
    a, b = s.stores[:2]
    if kind == "predictor":
        return {"store_id": np.array([a.encode(), a.encode(), b.encode()], dtype=object),
                "ds": np.array([d.encode() for d in (s.day(1), s.day(2), s.day(5))], dtype=object)}
    return {"store_id": np.array([a.encode(), b.encode()], dtype=object),
            "begin_date": np.array([s.day(1).encode(), s.day(3).encode()], dtype=object),
            "end_date": np.array([s.day(2).encode(), s.day(5).encode()], dtype=object)}


def reference(s: Served, kind: str) -> dict[str, list]:
    """The same request as plain JSON over httpx: the numbers every client must see."""
    arrays = request_arrays(s, kind)
    body = {"inputs": [{"name": k, "datatype": "BYTES", "shape": [len(v)], "data": [x.decode() for x in v]}
                       for k, v in arrays.items()],
            "outputs": [{"name": "yhat"}, {"name": "yhat_upper"}]}
    r = httpx.post(f"http://{host(s, kind)}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return {o["name"]: o["data"] for o in r.json()["outputs"]}


def no_nulls(doc: Any, where: str = "") -> None:
    if isinstance(doc, dict):
        for k, v in doc.items():
            assert v is not None, f"{where}.{k} is null"
            no_nulls(v, f"{where}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            no_nulls(v, f"{where}[{i}]")


# ---- tritonclient over HTTP: JSON (no content type) and binary ------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http(srv: Served, kind: str, binary: bool) -> None:
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(host(srv, kind))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] and meta["inputs"] and meta["outputs"]
    assert meta["versions"] == [srv.version]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    inputs = []
    for name, values in request_arrays(srv, kind).items():
        tensor = th.InferInput(name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("yhat_upper", "yhat")]
    result = client.infer(MODEL, inputs, outputs=outputs, request_id="r-1")
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["yhat_upper", "yhat"]  # only those, in that order
    assert response["model_version"] == srv.version and response["id"] == "r-1"
    want = reference(srv, kind)
    assert result.as_numpy("yhat").tolist() == want["yhat"] and result.as_numpy("yhat_upper").tolist() == want[
        "yhat_upper"]
    # the same version by number; any other is 404 naming the served one; an unknown output is 400
    assert client.infer(MODEL, inputs, model_version=srv.version).get_response()["model_version"] == srv.version
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, inputs, model_version="999")
    assert info.value.status() == "404" and "999" in info.value.message() and srv.version in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, inputs, outputs=[th.InferRequestedOutput("yhat_median", binary_data=binary)])
    assert info.value.status() == "400" and "yhat_median" in info.value.message()


# ---- tritonclient over gRPC -----------------------------------------------------------------------------
TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

host, version, arrays = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
client = tg.InferenceServerClient(host)
out["live"] = client.is_server_live() and client.is_server_ready() and client.is_model_ready("storecast")
out["ready_version"] = client.is_model_ready("storecast", model_version=version)
meta = client.get_model_metadata("storecast")
out["meta"] = {"platform": meta.platform, "versions": list(meta.versions), "inputs": [t.name for t in meta.inputs],
               "outputs": [t.name for t in meta.outputs]}
out["extensions"] = list(client.get_server_metadata().extensions)
inputs = []
for name, values in arrays.items():
    tensor = tg.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
    inputs.append(tensor)
result = client.infer("storecast", inputs, outputs=[tg.InferRequestedOutput("yhat"),
                                                    tg.InferRequestedOutput("yhat_upper")])
out["version"] = result.get_response().model_version
out["names"] = [o.name for o in result.get_response().outputs]
out["yhat"], out["yhat_upper"] = result.as_numpy("yhat").tolist(), result.as_numpy("yhat_upper").tolist()
out["same_version"] = client.infer("storecast", inputs, model_version=version).get_response().model_version
errors = {}
for label, call in (("version", lambda: client.infer("storecast", inputs, model_version="999")),
                    ("output", lambda: client.infer("storecast", inputs, outputs=[tg.InferRequestedOutput("nope")])),
                    ("metadata", lambda: client.get_model_metadata("storecast", model_version="999"))):
    try:
        call()
        errors[label] = None
    except InferenceServerException as exc:
        errors[label] = [exc.status(), exc.message()]
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_tritonclient_grpc(srv: Served, kind: str) -> None:
    """tritonclient.grpc (in its own process: its gRPC modules and KServe's define the same protobuf symbols)."""
    out = run_client(TRITON_GRPC, host(srv, kind, grpc=True), srv.version, request_arrays(srv, kind))
    assert out["live"] and out["ready_version"]
    assert out["meta"]["platform"] and out["meta"]["versions"] == [srv.version] and out["meta"]["inputs"]
    assert "binary_tensor_data" in out["extensions"]
    want = reference(srv, kind)
    assert out["version"] == out["same_version"] == srv.version and out["names"] == ["yhat", "yhat_upper"]
    assert out["yhat"] == want["yhat"] and out["yhat_upper"] == want["yhat_upper"]  # raw_output_contents
    status, message = out["errors"]["version"]
    assert status == "StatusCode.NOT_FOUND" and "999" in message and srv.version in message
    status, message = out["errors"]["output"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "nope" in message
    assert out["errors"]["metadata"][0] == "StatusCode.NOT_FOUND"


def run_client(script: str, *args: Any) -> dict[str, Any]:
    import subprocess
    import sys

    arrays = args[-1]
    text = {k: [x.decode() for x in v] for k, v in arrays.items()} if isinstance(arrays, dict) else arrays
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args[:-1]), json.dumps(text)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- KServe's own clients -------------------------------------------------------------------------------
KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

protocol, host, arrays = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
inputs = []
for name, values in arrays.items():
    tensor = InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object), binary_data=protocol == "grpc")
    inputs.append(tensor)
request = InferRequest("storecast", inputs, request_id="k-1", request_outputs=[RequestedOutput("yhat")])

async def call():
    if protocol == "rest":
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30)) as client:
            return await client.infer("http://" + host, request, model_name="storecast")
    client = InferenceGRPCClient(host, timeout=30)
    try:
        return await client.infer(request)
    finally:
        await client.close()

response = asyncio.run(call())
print(json.dumps({"version": response.model_version, "names": [o.name for o in response.outputs],
                  "yhat": response.outputs[0].as_numpy().tolist()}))
"""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_kserve_clients(srv: Served, kind: str, protocol: str) -> None:
    """KServe's InferenceRESTClient / InferenceGRPCClient (in their own process, like tritonclient.grpc)."""
    out = run_client(KSERVE_CLIENT, protocol, host(srv, kind, grpc=protocol == "grpc"), request_arrays(srv, kind))
    # KServe's REST client drops model_version (its InferResponse.from_bytes never reads it); the answer has it
    assert out["version"] == (srv.version if protocol == "grpc" else None) and out["names"] == ["yhat"]
    assert out["yhat"] == reference(srv, kind)["yhat"]


# ---- what clients rely on beyond the happy path -----------------------------------------------------------
def v2_body(srv: Served, kind: str, **extra: Any) -> dict[str, Any]:
    arrays = request_arrays(srv, kind)
    return {"inputs": [{"name": k, "datatype": "BYTES", "shape": [len(v)], "data": [x.decode() for x in v]}
                       for k, v in arrays.items()], **extra}


@pytest.mark.parametrize("kind", KINDS)
def test_content_types_charset_and_gzip(srv: Served, kind: str) -> None:
    url = f"{srv.server(kind).url}/v2/models/{MODEL}/infer"
    raw = json.dumps(v2_body(srv, kind)).encode()
    want = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=30).json()["outputs"]
    for headers in ({}, {"content-type": "application/json; charset=utf-8"}, {"content-type": "text/plain"},
                    {"content-type": "application/json", "content-encoding": "gzip"}):
        body = gzip.compress(raw) if headers.get("content-encoding") else raw
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"] == want, (headers, r.text)
    r = httpx.post(url, content=raw, headers={"content-type": "application/json", "content-encoding": "br"})
    assert r.status_code == 415 and "br" in r.json()["error"]
    r = httpx.post(url, content=raw, headers={"content-type": "application/json; charset=latin-1"})
    assert r.status_code == 415 and "latin-1" in r.json()["error"]
    v1 = f"{srv.server(kind).url}/v1/models/{MODEL}:predict"
    instance = ({"store_id": srv.stores[0], "ds": srv.day(1)} if kind == "predictor"
                else {"storeId": srv.stores[0], "beginDate": srv.day(1), "endDate": srv.day(2)})
    for headers in ({}, {"content-type": "application/json; charset=utf-8"}):
        r = httpx.post(v1, content=json.dumps({"instances": [instance]}), headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == srv.version, r.text


@pytest.mark.parametrize("kind", KINDS)
def test_versions_by_path_metadata_and_no_nulls(srv: Served, kind: str) -> None:
    base = f"{srv.server(kind).url}/v2/models/{MODEL}"
    for path in ("", "/ready"):
        assert httpx.get(f"{base}/versions/{srv.version}{path}").status_code == 200
        r = httpx.get(f"{base}/versions/999{path}")
        assert r.status_code == 404 and srv.version in r.json()["error"], r.text
    r = httpx.post(f"{base}/versions/{srv.version}/infer", json=v2_body(srv, kind), timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == srv.version
    no_nulls(r.json())
    assert "parameters" not in r.json()  # optional fields omitted, not null
    r = httpx.post(f"{base}/versions/999/infer", json=v2_body(srv, kind), timeout=30)
    assert r.status_code == 404 and "999" in r.json()["error"] and srv.version in r.json()["error"]
    meta = httpx.get(base).json()
    no_nulls(meta)
    assert meta["versions"] == [srv.version] and meta["platform"]
    assert [t["name"] for t in meta["inputs"]][:1] == ["store_id"] and len(meta["outputs"]) >= 4


@pytest.mark.parametrize("kind", KINDS)
def test_binary_outputs_when_asked(srv: Served, kind: str) -> None:
    url = f"{srv.server(kind).url}/v2/models/{MODEL}/infer"
    plain = httpx.post(url, json=v2_body(srv, kind), timeout=30).json()
    r = httpx.post(url, json=v2_body(srv, kind, parameters={"binary_data_output": True}), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    offset = n
    for out, ref in zip(head["outputs"], plain["outputs"], strict=True):
        size = out["parameters"]["binary_data_size"]
        blob = r.content[offset: offset + size]
        offset += size
        if out["datatype"] == "FP64":
            assert np.frombuffer(blob, "<f8").tolist() == ref["data"]
    assert offset == len(r.content)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_are_checked(srv: Served, kind: str) -> None:
    url = f"{srv.server(kind).url}/v2/models/{MODEL}/infer"
    body = v2_body(srv, kind)
    body["inputs"][0]["shape"] = [1, len(body["inputs"][0]["data"])]
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 400 and "one-dimensional" in r.json()["error"]
    body = v2_body(srv, kind)
    body["inputs"][0]["shape"] = [len(body["inputs"][0]["data"]) + 1]
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 400 and "elements" in r.json()["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_error_body_is_error(srv: Served, kind: str) -> None:
    base = srv.server(kind).url
    cases = [("GET", "/nowhere", None), ("POST", "/v2/models/other/infer", b"{}"), ("GET", "/v2/models/other", None),
             ("DELETE", f"/v2/models/{MODEL}/infer", None), ("POST", f"/v2/models/{MODEL}/infer", b"not json"),
             ("POST", f"/v1/models/{MODEL}:predict", b"[1, 2"), ("GET", f"/v2/models/{MODEL}/versions/x/ready", None),
             ("POST", "/v2/repository/models/other/load", None), ("PUT", "/v2", None)]
    for method, path, body in cases:
        r = httpx.request(method, base + path, content=body, timeout=30)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        doc = r.json()
        assert isinstance(doc.get("error"), str) and doc["error"] and "detail" not in doc, (method, path, doc)


def test_transformer_answers_carry_the_predictor_version(srv: Served) -> None:
    body = {"instances": [{"storeId": s, "beginDate": srv.day(1), "endDate": srv.day(3)} for s in srv.stores]}
    r = httpx.post(f"{srv.transformer.url}/v1/models/{MODEL}:predict", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == srv.version
    direct = httpx.post(f"{srv.predictor.url}/v2/models/{MODEL}/infer", json={"inputs": []} | {
        "parameters": {"list_stores": True}}, timeout=30).json()
    assert direct["model_version"] == srv.version and direct["parameters"]["stores"] == len(srv.stores)


def test_transformer_metrics(srv: Served) -> None:
    """The transformer's /metrics: the predictor version it serves with its data end, all stores of all
    shards, its requests by outcome."""
    url = f"{srv.transformer.url}/v1/models/{MODEL}:predict"
    httpx.post(url, json={"instances": [{"storeId": srv.stores[0], "beginDate": srv.day(1)}]}, timeout=30)
    httpx.post(url, json={"instances": [{"storeId": "nope", "beginDate": srv.day(1)}]}, timeout=30)
    text = httpx.get(f"{srv.transformer.url}/metrics").text
    assert metric(text, "storecast_model_info", component="transformer", version=srv.version,
                  data_end=srv.data_end) == 1
    assert metric(text, "storecast_stores_served", component="transformer") == len(srv.stores)
    assert metric(text, "storecast_requests_total", component="transformer", protocol="http", outcome="ok") >= 1
    assert metric(text, "storecast_requests_total", component="transformer", protocol="http", outcome="4xx") >= 1
    assert metric(text, "storecast_requests_total", component="transformer", protocol="http", outcome="5xx") == 0
