"""The business API lists the stores its shards serve (issue 25): real processes on loopback, no MLflow.

Two predictor shards (``--shard 0/2`` and ``1/2`` of one parameter table in a folder) behind transformers
over gRPC (with an auth file: a planner key with ``forecast``, a key with only ``refresh``) and REST V2
(anonymous on loopback), and one whose second shard is a closed port.

- V1 ``{"list_stores": true}``, V2 parameter ``list_stores`` (REST and gRPC) answer every store of both
  shards, once, sorted as the contract sorts ids, with the version the shards serve and the data end.
- The listing is behind the forecast door: no key 401, a key without ``forecast`` 403, the planner 200.
- A listing mixed with a forecast is a 400 naming ``list_stores``; a shard down is a 503 naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipelines.stack import free_port
from serving.access.auth_file import hash_key
from serving.contract import store_sort_key
from tests.support import MODEL, Predictor, Transformer, random_table

PLANNER, REFRESHER = "sc_test-list-planner", "sc_test-list-refresher"
AUTH = f"""
tiers:
  planner: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
  refresher: {{requests_per_second: null, concurrent: null, permissions: [refresh]}}
identities:
  - {{name: planner, tier: planner, key_sha256: "{hash_key(PLANNER)}"}}
  - {{name: refresher, tier: refresher, key_sha256: "{hash_key(REFRESHER)}"}}
"""


@dataclass
class Fleet:
    stores: list[str]  # every store of the table, as the contract sorts them
    shards: list[Predictor]
    grpc: Transformer  # with the auth file
    rest: Transformer  # anonymous, loopback
    broken: Transformer  # shard 1 is a closed port


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("list-stores")
    table = random_table(12, seed=31)
    table.save(root / "version" / "params.npz")
    (root / "auth.yaml").write_text(AUTH)
    shards = [Predictor(root / f"p{k}.log", ["--model_uri", str(root / "version"), "--shard", f"{k}/2"])
              for k in range(2)]
    fronts: list[Transformer] = []
    try:
        for p in shards:
            p.wait_ready()
        grpc_hosts = ",".join(f"127.0.0.1:{p.grpc_port}" for p in shards)
        rest_hosts = ",".join(f"127.0.0.1:{p.http_port}" for p in shards)
        fronts.append(Transformer(root / "t-grpc.log", ["--shards", "2", "--predictor_hosts", grpc_hosts,
                                                        "--auth-file", str(root / "auth.yaml")]))
        fronts.append(Transformer(root / "t-rest.log", ["--shards", "2", "--predictor_hosts", rest_hosts,
                                                        "--predictor_protocol", "v2"]))
        fronts.append(Transformer(root / "t-broken.log", [
            "--shards", "2", "--predictor_hosts", f"127.0.0.1:{shards[0].grpc_port},127.0.0.1:{free_port()}",
            "--predictor_request_timeout_seconds", "3"]))
        for t in fronts[:2]:
            t.wait_ready()
        fronts[2].wait_live()
        yield Fleet(sorted(table.store_id.tolist(), key=store_sort_key), shards, *fronts)
    finally:
        for t in fronts:
            t.stop()
        for p in shards:
            p.stop()


def shard_lists(fleet: Fleet) -> list[list[str]]:
    return [p.http.post(f"/v1/models/{MODEL}:predict", json={"list_stores": True}).json()["stores"]
            for p in fleet.shards]


def served_version(fleet: Fleet) -> str:
    return fleet.shards[0].http.post(f"/v1/models/{MODEL}:predict", json={"list_stores": True}).json()["model_version"]


@pytest.mark.parametrize("front", ["grpc", "rest"])
def test_v1_lists_every_store_of_every_shard(fleet: Fleet, front: str) -> None:
    parts = shard_lists(fleet)
    assert all(parts) and not set(parts[0]) & set(parts[1])  # two real shards, each a part of the fleet
    t = getattr(fleet, front)
    headers = {"x-api-key": PLANNER} if front == "grpc" else {}
    r = t.http.post(f"/v1/models/{MODEL}:predict", json={"list_stores": True}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"stores": fleet.stores, "model_version": served_version(fleet)}
    assert sorted(parts[0] + parts[1], key=store_sort_key) == fleet.stores


def test_v2_rest_and_grpc_list_the_stores_with_count_and_data_end(fleet: Fleet) -> None:
    r = fleet.rest.http.post(f"/v2/models/{MODEL}/infer", json={"parameters": {"list_stores": True}, "inputs": []})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [o["name"] for o in doc["outputs"]] == ["store_id"]
    assert doc["outputs"][0]["data"] == fleet.stores and doc["outputs"][0]["shape"] == [len(fleet.stores)]
    assert doc["parameters"] == {"stores": len(fleet.stores), "data_end": "2015-07-31"}
    assert doc["model_version"] == served_version(fleet)

    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

    with grpc.insecure_channel(f"127.0.0.1:{fleet.grpc.grpc_port}") as channel:
        res = pbg.GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest(
            model_name=MODEL, parameters={"list_stores": pb.InferParameter(bool_param=True)}),
            metadata=(("x-api-key", PLANNER),), timeout=30)
    ids = [b.decode() for b in res.outputs[0].contents.bytes_contents] if not res.raw_output_contents else None
    if ids is None:  # raw contents: 4-byte little-endian length, then the bytes, per element
        raw, ids, i = res.raw_output_contents[0], [], 0
        while i < len(raw):
            n = int.from_bytes(raw[i:i + 4], "little")
            ids.append(raw[i + 4:i + 4 + n].decode())
            i += 4 + n
    assert ids == fleet.stores
    assert res.parameters["stores"].int64_param == len(fleet.stores)


def test_the_listing_is_behind_the_forecast_door(fleet: Fleet) -> None:
    path = f"/v1/models/{MODEL}:predict"
    assert fleet.grpc.http.post(path, json={"list_stores": True}).status_code == 401
    denied = fleet.grpc.http.post(path, json={"list_stores": True}, headers={"x-api-key": REFRESHER})
    assert denied.status_code == 403, denied.text
    ok = fleet.grpc.http.post(path, json={"list_stores": True}, headers={"x-api-key": PLANNER})
    assert ok.status_code == 200 and ok.json()["stores"] == fleet.stores


@pytest.mark.parametrize("body", [{"list_stores": True, "instances": [{"storeId": "1"}]}, {"list_stores": "yes"}])
def test_a_listing_mixed_with_a_forecast_is_a_400(fleet: Fleet, body: dict) -> None:
    r = fleet.rest.v1(body)
    assert r.status_code == 400 and "list_stores" in r.json()["error"], r.text


def test_a_shard_down_is_a_503_naming_it_never_a_partial_list(fleet: Fleet) -> None:
    r = fleet.broken.v1({"list_stores": True}, timeout=30)
    assert r.status_code == 503, r.text
    assert "predictor shard 1" in r.json()["error"] and "retry-after" in r.headers
