"""The storecast runtime under a real ``mlserver start``: the KServe predictor's answers, to the bit.

Every request goes to both servers, serving the same version from the same ``mlflow server``: the JSON
answers (outputs, ``model_version``, the 400s' messages) must be equal, as must what tritonclient (HTTP and
gRPC) and KServe's own clients read from them. Then what only a server of its own shows: the alias moved,
adaptive batching keeping each request's answer its own, the transformer in front of MLServer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import MODEL, MLServer, Predictor, TrainedRegistry, Transformer, day_after, metric, wait_until


def cases(table: Any) -> dict[str, dict[str, Any]]:
    """V2 requests of every form the contract has, and mistakes, on the version's own stores and days."""
    ids = table.store_id.tolist()
    a, b, c = ids[0], ids[1], ids[-1]
    d = [day_after(table, 0, k) for k in range(1, 15)]
    first = int(table.last_day[0]) + 1

    def long(stores: list[str], days: list[str], **extra: Any) -> dict[str, Any]:
        more = extra.pop("more", [])
        return {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [len(stores)], "data": stores},
                           {"name": "ds", "datatype": "BYTES", "shape": [len(days)], "data": days}, *more], **extra}

    return {
        "one store, a week": long([a] * 7, d[:7]),
        "three stores, history and future": long([a, b, c, c], ["2015-01-02", d[0], d[3], "2014-12-24"]),
        "optional outputs": long([a, b], d[:2], outputs=[{"name": n} for n in (
            "yhat", "open_rate", "open", "promo", "holiday", "calendar", "day_flags")]),
        "windows": {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [2], "data": [a, c]},
                               {"name": "begin_day", "datatype": "INT32", "shape": [2], "data": [first, first + 5]},
                               {"name": "days", "datatype": "INT32", "shape": [2], "data": [4, 3]}]},
        "what-if INT32": long([b] * 3, d[:3], more=[{"name": "promo", "datatype": "INT32", "shape": [3],
                                                     "data": [1, 0, -1]}]),
        "what-if BOOL": long([b] * 2, d[4:6], more=[{"name": "open", "datatype": "BOOL", "shape": [2],
                                                     "data": [False, True]}]),
        "list stores": {"inputs": [], "parameters": {"list_stores": True}},
        "unknown store": long(["no-such-store"], d[:1]),
        "not a date": long([a], ["2015-02-30"]),
        "wrong datatype": {"inputs": [{"name": "store_id", "datatype": "INT64", "shape": [1], "data": [1]},
                                      {"name": "ds", "datatype": "BYTES", "shape": [1], "data": [d[0]]}]},
        "lengths differ": long([a, b], d[:1]),
        "shape and data disagree": {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [2], "data": [a]},
                                               {"name": "ds", "datatype": "BYTES", "shape": [1], "data": [d[0]]}]},
        "two-dimensional": {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [1, 1], "data": [a]},
                                       {"name": "ds", "datatype": "BYTES", "shape": [1], "data": [d[0]]}]},
        "missing ds": {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [1], "data": [a]}]},
        "unknown input": long([a], d[:1], more=[{"name": "price", "datatype": "FP32", "shape": [1], "data": [1.5]}]),
        "unknown output": long([a], d[:1], outputs=[{"name": "yhat_median"}]),
        "bad what-if": long([a], d[:1], more=[{"name": "promo", "datatype": "INT32", "shape": [1], "data": [7]}]),
        "too far ahead": long([a], ["2031-01-01"]),
        "window of no days": {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [1], "data": [a]},
                                         {"name": "begin_day", "datatype": "INT32", "shape": [1], "data": [first]},
                                         {"name": "days", "datatype": "INT32", "shape": [1], "data": [0]}]},
    }


ACCEPTED = ("one store, a week", "three stores, history and future", "optional outputs", "windows", "what-if INT32",
            "what-if BOOL", "list stores")


def infer(server: Predictor, body: dict[str, Any]) -> httpx.Response:
    return server.http.post(f"/v2/models/{MODEL}/infer", json=body)


def answer(r: httpx.Response) -> tuple[int, Any]:
    """What must be equal on both stacks: the status, and the outputs and version, or the error."""
    body = r.json()
    if r.status_code != 200:
        return r.status_code, body.get("error")
    return 200, (body["outputs"], body["model_version"], {k: v for k, v in (body.get("parameters") or {}).items()
                                                          if k in ("stores", "data_end")})


@pytest.mark.parametrize("server", ["mls", "batched"])
def test_every_request_gets_the_kserve_predictors_answer(server: str, request: pytest.FixtureRequest,
                                                         kserve: Predictor, registry: TrainedRegistry) -> None:
    mls: MLServer = request.getfixturevalue(server)
    refused = 0
    for name, body in cases(registry.table).items():
        want, got = answer(infer(kserve, body)), answer(infer(mls, body))
        assert got == want, name
        assert (want[0] == 200) == (name in ACCEPTED), (name, want)
        if want[0] != 200:
            refused += 1
            assert want[0] == 400 and want[1], name  # a 4xx that says what is wrong
    assert refused == len([n for n in cases(registry.table) if n not in ACCEPTED]), refused
    meta = mls.http.get(f"/v2/models/{MODEL}").json()
    want = kserve.http.get(f"/v2/models/{MODEL}").json()
    assert {k: meta[k] for k in ("platform", "versions", "inputs", "outputs")} == \
           {k: want[k] for k in ("platform", "versions", "inputs", "outputs")}


def test_errors_name_the_field(mls: MLServer, registry: TrainedRegistry) -> None:
    c = cases(registry.table)
    for name, words in (("unknown store", ["no-such-store"]), ("not a date", ["'ds'", "2015-02-30"]),
                        ("wrong datatype", ["'store_id'", "INT64"]), ("shape and data disagree", ["'store_id'", "[2]"]),
                        ("lengths differ", ["store_id", "ds"]),
                        ("missing ds", ["'ds'"]), ("unknown output", ["yhat_median"]),
                        ("bad what-if", ["'promo'"]), ("too far ahead", ["2031-01-01", "--max-days-ahead"])):
        r = infer(mls, c[name])
        assert r.status_code == 400 and all(w in r.json()["error"] for w in words), (name, r.text)
    assert infer(mls, {"inputs": [{"name": "store_id"}]}).status_code == 422  # MLServer's own schema check


# ---- real third-party clients, each in its own process (their gRPC modules clash with KServe's) -------------
CLIENTS = r"""
import asyncio, json, sys
import numpy as np

host_http, host_grpc, stores, days = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
which = sys.argv[5]
ids = np.array([s.encode() for s in stores], dtype=object)
ds = np.array([d.encode() for d in days], dtype=object)
out = {}
if which == "triton":
    import tritonclient.http as th
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    for label, mod, host, binary in (("http", th, host_http, False), ("grpc", tg, host_grpc, True)):
        client = mod.InferenceServerClient(host)
        inputs = [mod.InferInput("store_id", [len(ids)], "BYTES"), mod.InferInput("ds", [len(ds)], "BYTES")]
        for tensor, values in zip(inputs, (ids, ds)):
            if label == "http":
                tensor.set_data_from_numpy(values, binary_data=binary)
            else:
                tensor.set_data_from_numpy(values)
        names = ("yhat", "yhat_lower", "yhat_upper", "open")
        outputs = [mod.InferRequestedOutput(n, binary_data=False) if label == "http" else mod.InferRequestedOutput(n)
                   for n in names]
        result = client.infer("storecast", inputs, outputs=outputs)
        out[label] = {n: result.as_numpy(n).tolist() for n in names}
        out[label]["ready"] = client.is_model_ready("storecast")
        bad = [mod.InferInput("store_id", [1], "BYTES"), mod.InferInput("ds", [1], "BYTES")]
        for tensor, values in zip(bad, ([b"no-such-store"], ds[:1])):
            if label == "http":
                tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=False)
            else:
                tensor.set_data_from_numpy(np.array(values, dtype=object))
        try:
            client.infer("storecast", bad)
            out[label]["error"] = None
        except InferenceServerException as exc:
            out[label]["error"] = [str(exc.status()), exc.message()]
else:
    from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    async def call(protocol):
        tensors = [InferInput("store_id", [len(ids)], "BYTES"), InferInput("ds", [len(ds)], "BYTES")]
        for tensor, values in zip(tensors, (ids, ds)):
            tensor.set_data_from_numpy(values, binary_data=protocol == "grpc")
        request = InferRequest("storecast", tensors, request_id="k-1",
                               request_outputs=[RequestedOutput("yhat"), RequestedOutput("yhat_upper")])
        if protocol == "rest":
            async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30)) as client:
                return await client.infer("http://" + host_http, request, model_name="storecast")
        client = InferenceGRPCClient(host_grpc, timeout=30)
        try:
            return await client.infer(request)
        finally:
            await client.close()

    for protocol in ("rest", "grpc"):
        response = asyncio.run(call(protocol))
        out[protocol] = {o.name: o.as_numpy().tolist() for o in response.outputs}
        out[protocol]["version"] = response.model_version
print(json.dumps(out))
"""


def run_clients(server: Predictor, which: str, stores: list[str], days: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CLIENTS, f"127.0.0.1:{server.http_port}",
                           f"127.0.0.1:{server.grpc_port}", json.dumps(stores), json.dumps(days), which],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tritonclient_http_and_grpc_read_the_same_numbers(mls: MLServer, kserve: Predictor,
                                                          registry: TrainedRegistry) -> None:
    stores = registry.table.store_id.tolist()[:3] * 3
    days = [day_after(registry.table, 0, k) for k in range(1, 10)]
    got, want = run_clients(mls, "triton", stores, days), run_clients(kserve, "triton", stores, days)
    for protocol in ("http", "grpc"):
        assert got[protocol]["ready"]
        for name in ("yhat", "yhat_lower", "yhat_upper", "open"):
            assert got[protocol][name] == want[protocol][name] == want["http"][name], (protocol, name)
    assert got["grpc"]["error"][0] == "StatusCode.INVALID_ARGUMENT" and "no-such-store" in got["grpc"]["error"][1]
    assert got["http"]["error"][0] == "400" and "no-such-store" in got["http"]["error"][1]


def test_kserve_clients_read_the_same_numbers(mls: MLServer, kserve: Predictor, registry: TrainedRegistry,
                                              champion: str) -> None:
    stores = registry.table.store_id.tolist()[-2:] * 2
    days = [day_after(registry.table, 0, k) for k in (1, 2, 30, 200)]
    got, want = run_clients(mls, "kserve", stores, days), run_clients(kserve, "kserve", stores, days)
    for protocol in ("rest", "grpc"):
        assert got[protocol]["yhat"] == want[protocol]["yhat"] and got[protocol]["yhat_upper"] == \
            want[protocol]["yhat_upper"]
    assert got["grpc"]["version"] == champion  # KServe's REST client drops model_version (see tests/serving)


# ---- what only a server of its own shows -------------------------------------------------------------------
def test_concurrent_requests_are_merged_yet_each_gets_its_own_answer(batched: MLServer, kserve: Predictor,
                                                                     registry: TrainedRegistry) -> None:
    """Plain requests are merged (the batcher's rows metric counts fewer evaluations than requests); windows,
    what-ifs, named outputs, list_stores and mistakes, sent at the same time, keep their own answers."""
    c = cases(registry.table)
    ids = registry.table.store_id.tolist()
    week = {k: [day_after(registry.table, 0, k + j) for j in range(7)] for k in (1, 9)}
    plain = {f"plain {s} {k}": {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [7], "data": [s] * 7},
                                           {"name": "ds", "datatype": "BYTES", "shape": [7], "data": week[k]}]}
             for s in ids for k in week}
    bodies = {**plain, **c}
    want = {name: answer(infer(kserve, body)) for name, body in bodies.items()}
    before = metric(batched.metrics(), "storecast_batch_rows_count") or 0
    got: dict[str, Any] = {}

    def send(name: str, body: dict[str, Any], rounds: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{batched.http_port}", timeout=30) as http:
            for _ in range(rounds):
                r = http.post(f"/v2/models/{MODEL}/infer", json=body)
                got.setdefault(name, []).append(answer(r))

    threads = [threading.Thread(target=send, args=(name, body, 5)) for name, body in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in bodies:
        assert got[name] == [want[name]] * 5, name
    evaluations = (metric(batched.metrics(), "storecast_batch_rows_count") or 0) - before
    assert 0 < evaluations < len(plain) * 5, evaluations  # merged: fewer evaluations than plain requests


def test_batching_with_parallel_workers_is_refused_saying_why(mlserver_env: Path, registry: TrainedRegistry,
                                                              tmp_path: Path) -> None:
    from mlserver_runtime import environment, launch
    from predictor.source import ModelSource

    folder = ModelSource.parse(str(registry.root)).uri  # a local folder: no registry needed
    options = launch.ServerOptions(folder, http_port=0, grpc_port=0, metrics_port=0, max_batch_size=8,
                                   max_batch_time=0.01)
    state = launch.write_folder(tmp_path / "state", options)
    settings = json.loads((state / "settings.json").read_text())
    (state / "settings.json").write_text(json.dumps({**settings, "parallel_workers": 1}))
    log = tmp_path / "mlserver.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(launch.command(environment.mlserver_bin(mlserver_env), state),
                                env=launch.environment(state, None), stdout=fh, stderr=subprocess.STDOUT)
    try:
        refused = wait_until(lambda: "parallel_workers to 0" in log.read_text(errors="replace"), 90)
        assert refused, log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_alias_move_is_followed(registry: TrainedRegistry, model_name: str, mlflow_server: str,
                                   mlserver_env: Path, tmp_path: Path) -> None:
    from pipelines.versions.registry import register

    name = f"{model_name}-follow"
    first = register(registry.result, uri=mlflow_server, model_name=name, alias="champion").version
    m = MLServer(tmp_path / "follow.log", f"models:/{name}@champion", mlflow_server,
                 env={"STORECAST_REFRESH_SECONDS": "1"})
    try:
        m.wait_ready(timeout=180)
        body = cases(registry.table)["one store, a week"]
        assert infer(m, body).json()["model_version"] == first
        moved = register(registry.result, uri=mlflow_server, model_name=name, alias="champion").version
        assert moved != first
        assert wait_until(lambda: infer(m, body).json()["model_version"] == moved, 30)
        assert f"swapped from version {first} to version {moved}" in m.output()
    finally:
        m.stop()


def test_the_transformer_serves_the_business_api_in_front_of_mlserver(mls: MLServer, kserve: Predictor,
                                                                       registry: TrainedRegistry,
                                                                       tmp_path: Path) -> None:
    ids = registry.table.store_id.tolist()
    begin, end = day_after(registry.table, 0, 1), day_after(registry.table, 0, 14)
    body = {"instances": [{"storeId": s, "beginDate": begin, "endDate": end} for s in ids[:4]]}
    answers = []
    for server in (mls, kserve):
        t = Transformer(tmp_path / f"t-{server.MODULE}.log", ["--predictor_hosts", f"127.0.0.1:{server.grpc_port}"])
        try:
            t.wait_ready()
            r = t.v1(body)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        finally:
            t.stop()
    assert answers[0] == answers[1]
    assert len(answers[0]["predictions"]) == 4
