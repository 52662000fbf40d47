"""Hostile input, table-driven: every request below gets a 4xx (gRPC: a client status) naming the field,
never a 5xx or ``INTERNAL``, over REST, gRPC and CloudEvents, to the predictor and the transformer; the
servers serve normally afterwards. The tally (requests, 5xx / INTERNAL seen) is printed at the end."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support import MODEL, Served, served

BIG = "x" * 1_000_000
DIGITS = "7" * 20_000
SEEN: dict[str, int] = {"requests": 0, "5xx": 0}


@dataclass
class Case:
    """One hostile request: where it goes, what it sends, which words the error must contain."""

    name: str
    kind: str  # predictor | transformer
    send: Callable[[Served], tuple[int, str]]  # -> (HTTP status or gRPC-as-HTTP status, error message)
    words: tuple[str, ...] = ()
    statuses: tuple[int, ...] = field(default=(400,))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served(tmp_path_factory)


# ---- senders --------------------------------------------------------------------------------------------
def rest(kind: str, path: str, body: bytes | str | Any, headers: dict[str, str] | None = None
         ) -> Callable[[Served], tuple[int, str]]:
    def send(s: Served) -> tuple[int, str]:
        content = body(s) if callable(body) else body
        if not isinstance(content, bytes | str):
            content = json.dumps(content)
        r = httpx.post(s.server(kind).url + path, content=content, headers=headers or {}, timeout=60)
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str), (r.status_code, r.text[:300])
        return r.status_code, doc["error"]
    return send


def v2(kind: str, inputs: Any, **extra: Any) -> Callable[[Served], tuple[int, str]]:
    return rest(kind, f"/v2/models/{MODEL}/infer", lambda s: {"inputs": inputs(s) if callable(inputs) else inputs,
                                                               **extra}, {"content-type": "application/json"})


def v1(kind: str, body: Any, headers: dict[str, str] | None = None) -> Callable[[Served], tuple[int, str]]:
    return rest(kind, f"/v1/models/{MODEL}:predict", body, {"content-type": "application/json", **(headers or {})})


def t(name: str, data: list, datatype: str = "BYTES", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape if shape is not None else [len(data)], "data": data}


def pred(ids: list[Any], ds: list[Any], *more: dict[str, Any]) -> list[dict[str, Any]]:
    return [t("store_id", ids), t("ds", ds), *more]


GRPC_HTTP = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413, "UNAUTHENTICATED": 401,
             "PERMISSION_DENIED": 403, "UNAVAILABLE": 503, "INTERNAL": 500, "UNKNOWN": 500, "UNIMPLEMENTED": 501}


def grpc_call(kind: str, build: Callable[[Served, Any], Any]) -> Callable[[Served], tuple[int, str]]:
    def send(s: Served) -> tuple[int, str]:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

        opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(f"127.0.0.1:{s.server(kind).grpc_port}", options=opts) as channel:
            try:
                pbg.GRPCInferenceServiceStub(channel).ModelInfer(build(s, pb), timeout=60)
            except grpc.RpcError as err:
                return GRPC_HTTP.get(err.code().name, 500), err.details() or ""
        return 200, ""
    return send


def tensor(pb: Any, name: str, values: list, datatype: str = "BYTES", shape: list[int] | None = None) -> Any:
    field_name = {"BYTES": "bytes_contents", "INT32": "int_contents", "FP64": "fp64_contents"}[datatype]
    contents = pb.InferTensorContents(**{field_name: values})
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape or [len(values)],
                                                 contents=contents)


def grpc_pred(ids: list[bytes], ds: list[bytes], **kw: Any) -> Callable[[Served, Any], Any]:
    return lambda s, pb: pb.ModelInferRequest(model_name=MODEL, inputs=[tensor(pb, "store_id", ids),
                                                                        tensor(pb, "ds", ds)], **kw)


def ce(kind: str, headers: dict[str, str], body: Any = None) -> Callable[[Served], tuple[int, str]]:
    base = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "tests",
            "ce-type": "com.storecast.forecast.requested"}
    merged = {k: v for k, v in {**base, **headers}.items() if v is not None}
    return v1(kind, body if body is not None else good_v1(kind), merged)


def structured(kind: str, event: dict[str, Any] | bytes) -> Callable[[Served], tuple[int, str]]:
    def body(s: Served) -> Any:
        if isinstance(event, bytes):
            return event
        doc = {"specversion": "1.0", "id": "e-2", "source": "tests", "type": "com.storecast.forecast.requested",
               "data": good_v1(kind)(s)}
        doc.update(event)
        return {k: v for k, v in doc.items() if v is not None}
    return rest(kind, f"/v1/models/{MODEL}:predict", body, {"content-type": "application/cloudevents+json"})


def good_v1(kind: str) -> Callable[[Served], dict[str, Any]]:
    def body(s: Served) -> dict[str, Any]:
        if kind == "predictor":
            return {"instances": [{"store_id": s.stores[0], "ds": s.day(1)}]}
        return {"instances": [{"storeId": s.stores[0], "beginDate": s.day(1), "endDate": s.day(2)}]}
    return body


def biz(**instance: Any) -> Callable[[Served], dict[str, Any]]:
    def body(s: Served) -> dict[str, Any]:
        inst = {"storeId": s.stores[0], "beginDate": s.day(1), "endDate": s.day(3)}
        inst.update({k: (v(s) if callable(v) else v) for k, v in instance.items()})
        return {"instances": [{k: v for k, v in inst.items() if v is not None}]}
    return body


def good_pred(s: Served) -> list[dict[str, Any]]:
    return pred([s.stores[0]], [s.day(1)])


def good_tr(s: Served) -> list[dict[str, Any]]:
    return [t("store_id", [s.stores[0]]), t("begin_date", [s.day(1)]), t("end_date", [s.day(2)])]


def good_inputs(kind: str) -> Callable[[Served], list[dict[str, Any]]]:
    return good_pred if kind == "predictor" else good_tr


def binary_body(kind: str, blob: bytes, header: str | None = None, size: int | None = None
                ) -> Callable[[Served], tuple[int, str]]:
    def send(s: Served) -> tuple[int, str]:
        inputs = good_inputs(kind)(s)
        first = dict(inputs[0])
        del first["data"]
        first["parameters"] = {"binary_data_size": len(blob) if size is None else size}
        doc = json.dumps({"inputs": [first, *inputs[1:]]}).encode()
        length = str(len(doc)) if header is None else header
        return rest(kind, f"/v2/models/{MODEL}/infer", doc + blob,
                    {"content-type": "application/octet-stream", "inference-header-content-length": length})(s)
    return send


# years numpy reads and Python's dates cannot hold (0, -1), past 9999, at the end of Python's range, and a
# date-time: each a 400 naming the field on both servers and every protocol (a year 0 once gave a 500)
EXTREME_DATES = ("0000-01-01", "-001-01-01", "-0001-01-01", "9999-12-31", "10000-01-01", "0000-01-01T00:00:00Z")


def extreme_date(date: str) -> list[Case]:
    d = date.encode()
    return [
        Case(f"ds {date} V2", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [date])),
             ("input 'ds' row 0",)),
        Case(f"ds {date} V2, 100 rows", "predictor", v2("predictor", lambda s: pred([s.stores[0]] * 100, [date] * 100)),
             ("input 'ds' row 0",)),
        Case(f"ds {date} V1", "predictor", v1("predictor", lambda s: {"instances": [
            {"store_id": s.stores[0], "ds": date}]}), ("instances[0].ds",)),
        Case(f"ds {date} CloudEvent", "predictor", ce("predictor", {}, lambda s: {"instances": [
            {"store_id": s.stores[0], "ds": date}]}), ("instances[0].ds",)),
        Case(f"ds {date} gRPC", "predictor", grpc_call("predictor", lambda s, pb: grpc_pred(
            [s.stores[0].encode()], [d])(s, pb)), ("input 'ds' row 0",)),
        Case(f"beginDate {date}", "transformer", v1("transformer", biz(beginDate=date, endDate=None)),
             ("instances[0].beginDate",)),
        Case(f"closedDays {date}", "transformer", v1("transformer", biz(closedDays=[date])),
             ("instances[0].closedDays[0]",)),
        Case(f"endDate {date} CloudEvent", "transformer", ce("transformer", {}, biz(endDate=date)),
             ("instances[0].endDate",)),
        Case(f"begin_date {date} V2", "transformer", v2("transformer", lambda s: [t("store_id", [s.stores[0]]), t(
            "begin_date", [date])]), ("begin_date[0]",)),
        Case(f"begin_date {date} gRPC", "transformer", grpc_call("transformer", lambda s, pb: pb.ModelInferRequest(
            model_name=MODEL, inputs=[tensor(pb, "store_id", [s.stores[0].encode()]), tensor(pb, "begin_date", [d])])),
             ("begin_date[0]",)),
    ]


# ---- the table ------------------------------------------------------------------------------------------
def both(name: str, make: Callable[[str], Callable[[Served], tuple[int, str]]], words: tuple[str, ...] = (),
         statuses: tuple[int, ...] = (400,)) -> list[Case]:
    return [Case(f"{name} [{kind}]", kind, make(kind), words, statuses) for kind in ("predictor", "transformer")]


INFER = f"/v2/models/{MODEL}/infer"
CASES: list[Case] = [
    # the V2 wire, both servers
    *both("JSON nested 100,000 deep", lambda k: rest(k, INFER, "[" * 100_000 + "]" * 100_000), ("JSON",)),
    *both("body not JSON", lambda k: rest(k, INFER, b"\x00\xffnot json"), ("JSON",)),
    *both("body a JSON array", lambda k: rest(k, INFER, [1, 2]), ("JSON object",)),
    *both("body null", lambda k: rest(k, INFER, "null"), ("JSON object",)),
    *both("inputs not a list", lambda k: v2(k, 5), ("inputs",)),
    *both("input without a name", lambda k: v2(k, [{"datatype": "BYTES", "shape": [1], "data": ["1"]}]), ("name",)),
    *both("input name of 1 MB", lambda k: v2(k, [t(BIG, ["1"])]), ("name", "characters)")),
    *both("datatype FP128", lambda k: v2(k, [t("store_id", ["1"], "FP128")]), ("FP128", "datatype")),
    *both("negative shape", lambda k: v2(k, [t("store_id", ["1"], shape=[-1])]), ("shape",)),
    *both("shape not a list", lambda k: v2(k, [t("store_id", ["1"], shape="abc")]), ("shape",)),
    *both("shape [1, 2]", lambda k: v2(k, lambda s: [t("store_id", s.stores[:2], shape=[1, 2])]),
          ("one-dimensional",)),
    *both("shape [3], one element", lambda k: v2(k, [t("store_id", ["1"], shape=[3])]), ("3 elements", "1 were")),
    *both("nested data", lambda k: v2(k, [t("store_id", [["1"]], shape=[1])]), ("flat",)),
    *both("number in BYTES", lambda k: v2(k, [t("store_id", [4])]), ("store_id", "BYTES")),
    *both("binary header length 'abc'", lambda k: binary_body(k, b"\x01\x00\x00\x001", header="abc"),
          ("Inference-Header-Content-Length",)),
    *both("binary header length past the body", lambda k: binary_body(k, b"", header="999999"), ("999999",)),
    *both("binary BYTES truncated", lambda k: binary_body(k, b"\x09\x00\x00\x001"), ("store_id", "claims 9 bytes")),
    *both("binary_data_size negative", lambda k: binary_body(k, b"", size=-3), ("binary_data_size",)),
    *both("binary store id not UTF-8", lambda k: binary_body(k, b"\x02\x00\x00\x00\xff\xfe"), ("UTF-8",)),
    *both("input given twice", lambda k: v2(k, lambda s: good_inputs(k)(s) + good_inputs(k)(s)[:1]), ("twice",)),
    *both("unknown request key", lambda k: v2(k, good_inputs(k), priority=1), ("priority", "the keys are")),
    *both("outputs not a list", lambda k: v2(k, good_inputs(k), outputs={"name": "yhat"}), ("outputs",)),
    *both("unknown output", lambda k: v2(k, good_inputs(k), outputs=[{"name": "yhat_median"}]), ("yhat_median",)),
    *both("binary_data 'yes'", lambda k: v2(k, good_inputs(k), outputs=[{"name": "yhat", "parameters": {
        "binary_data": "yes"}}]), ("binary_data",)),
    *both("id a number", lambda k: v2(k, good_inputs(k), id=12), ("id",)),
    *both("parameters a list", lambda k: v2(k, good_inputs(k), parameters=[1]), ("parameters",)),
    *both("gzip garbage", lambda k: rest(k, INFER, b"\x1f\x8b\x08garbage", {"content-encoding": "gzip"}),
          ("gzip",)),
    *both("gzip bomb", lambda k: rest(k, INFER, lambda s: gzip.compress(b"[" + b" " * (40 << 20) + b"]", 1),
                                      {"content-encoding": "gzip"}), ("limit",), (413,)),
    *both("Content-Encoding br", lambda k: rest(k, INFER, b"{}", {"content-encoding": "br"}), ("br",), (415,)),
    *both("charset latin-1", lambda k: rest(k, INFER, b"{}", {"content-type": "application/json; charset=latin-1"}),
          ("latin-1",), (415,)),
    *both("body over the limit", lambda k: rest(k, INFER, lambda s: b" " * (33 << 20)), ("limit",), (413,)),
    *both("version 999 by path", lambda k: rest(k, f"/v2/models/{MODEL}/versions/999/infer", lambda s: {
        "inputs": good_inputs(k)(s)}), ("999",), (404,)),
    *both("unknown model", lambda k: rest(k, "/v2/models/nope/infer", b"{}"), ("nope",), (404,)),
    # the predictor's long format
    Case("store id of 20,000 digits", "predictor", v2("predictor", lambda s: pred([DIGITS], [s.day(1)])),
         ("store_id", "20000 characters")),
    Case("store id of 1 MB", "predictor", v2("predictor", lambda s: pred([BIG], [s.day(1)])), ("store_id",)),
    Case("store id '²'", "predictor", v2("predictor", lambda s: pred(["²"], [s.day(1)])), ("unknown store_id",)),
    Case("store id with NUL", "predictor", v2("predictor", lambda s: pred(["4\x00"], [s.day(1)])), ("non-printable",)),
    Case("store id with a newline", "predictor", v2("predictor", lambda s: pred(["4\n5"], [s.day(1)])),
         ("non-printable",)),
    Case("empty store id", "predictor", v2("predictor", lambda s: pred([""], [s.day(1)])), ("empty",)),
    Case("ds 0001-01-01", "predictor", v2("predictor", lambda s: pred([s.stores[0]], ["0001-01-01"])),
         ("ds", "1900-01-01")),
    Case("ds of 1 MB", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [BIG])), ("ds", "characters)")),
    Case("ds 2015-13-45", "predictor", v2("predictor", lambda s: pred([s.stores[0]], ["2015-13-45"])), ("ds",)),
    Case("ds a number", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [20150801])), ("ds",)),
    Case("ds beyond the horizon", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [s.day(2000)])),
         ("--max-days-ahead", "1096")),
    Case("promo 5", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [s.day(1)], t("promo", [5], "INT32"))),
         ("promo", "1, 0 or -1")),
    Case("promo as BYTES", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [s.day(1)], t("promo", ["1"]))),
         ("promo", "INT32")),
    Case("INT32 overflow", "predictor", v2("predictor", lambda s: pred([s.stores[0]], [s.day(1)], t(
        "open", [2**40], "INT32"))), ("open", "INT32")),
    Case("100,001 rows", "predictor", v2("predictor", lambda s: pred([s.stores[0]] * 100_001, [s.day(1)] * 100_001)),
         ("100001 rows", "--max-rows")),
    Case("V1 instances not a list", "predictor", v1("predictor", {"instances": {"store_id": "1"}}), ("instances",)),
    Case("V1 instance without ds", "predictor", v1("predictor", lambda s: {"instances": [{"store_id": s.stores[0]}]}),
         ("ds",)),
    Case("V1 unknown key", "predictor", v1("predictor", lambda s: {"instances": [
        {"store_id": s.stores[0], "ds": s.day(1), "date": s.day(1)}]}), ("date", "the keys are")),
    Case("V1 store id an object", "predictor", v1("predictor", lambda s: {"instances": [
        {"store_id": {}, "ds": s.day(1)}]}), ("store_id",)),
    # the business API
    Case("unknown key 'begin'", "transformer", v1("transformer", biz(begin="2015-08-01")),
         ("instances[0].begin", "beginDate")),
    Case("typo storeID", "transformer", v1("transformer", biz(storeId=None, storeID="4")), ("storeID", "storeId")),
    Case("storeId of 20,000 digits", "transformer", v1("transformer", biz(storeId=DIGITS)),
         ("storeId", "20000 characters")),
    Case("storeId of 1 MB", "transformer", v1("transformer", biz(storeId=BIG)), ("storeId",)),
    Case("storeId '²'", "transformer", v1("transformer", biz(storeId="²")), ("'²'",)),
    Case("storeId with NUL", "transformer", v1("transformer", biz(storeId="4\x00")), ("storeId", "non-printable")),
    Case("storeId 4.5", "transformer", v1("transformer", biz(storeId=4.5)), ("storeId",)),
    Case("storeId true", "transformer", v1("transformer", biz(storeId=True)), ("storeId",)),
    Case("endDate 0001-01-01", "transformer", v1("transformer", biz(endDate="0001-01-01")), ("endDate", "1900")),
    Case("beginDate of 1 MB", "transformer", v1("transformer", biz(beginDate=BIG)), ("beginDate",)),
    Case("beginDate beyond the horizon", "transformer", v1("transformer", biz(beginDate=lambda s: s.day(2000),
                                                                              endDate=lambda s: s.day(2001))),
         ("beginDate", "--max-days-ahead")),
    Case("endDate before beginDate", "transformer", v1("transformer", biz(endDate=lambda s: s.day(-3))),
         ("endDate", "before")),
    Case("window over 366 days", "transformer", v1("transformer", biz(endDate=lambda s: s.day(500))),
         ("endDate", "366")),
    Case("2,001 stores", "transformer", v1("transformer", {"instances": [{"storeId": "1"}] * 2001}), ("2000",)),
    Case("promoDays outside the window", "transformer", v1("transformer", biz(promoDays=lambda s: [s.day(30)])),
         ("promoDays[0]", "outside")),
    Case("promoDays not a list", "transformer", v1("transformer", biz(promoDays="2015-08-01")), ("promoDays",)),
    Case("closedDays bad date", "transformer", v1("transformer", biz(closedDays=["yesterday"])), ("closedDays[0]",)),
    Case("instances empty", "transformer", v1("transformer", {"instances": []}), ("instances",)),
    Case("body an array", "transformer", v1("transformer", [{"storeId": "4"}]), ("body",)),
    Case("unknown body key", "transformer", v1("transformer", lambda s: {**biz()(s), "limit": 5}), ("limit",)),
    Case("V2 unknown input", "transformer", v2("transformer", [t("store", ["1"])]), ("store",)),
    Case("V2 begin_date length", "transformer", v2("transformer", lambda s: [t("store_id", s.stores[:2]), t(
        "begin_date", [s.day(1)])]), ("begin_date", "elements")),
    Case("V2 store_id INT32", "transformer", v2("transformer", [t("store_id", [4], "INT32")]), ("store_id", "BYTES")),
    # CloudEvents: binary and structured
    *both("ce-specversion 0.3", lambda k: ce(k, {"ce-specversion": "0.3"}), ("specversion",)),
    *both("ce-id missing", lambda k: ce(k, {"ce-id": None}), ("ce-id",)),
    *both("ce-source with blanks", lambda k: ce(k, {"ce-source": "not a uri"}), ("source",)),
    *both("ce-time 'yesterday'", lambda k: ce(k, {"ce-time": "yesterday"}), ("time",)),
    *both("ce-id of 1,000 characters", lambda k: ce(k, {"ce-id": "i" * 1000}), ("ce-id",)),
    *both("binary event, data not JSON", lambda k: ce(k, {}, b"\x00\x01"), ("JSON",)),
    Case("ce-type not answered", "transformer", ce("transformer", {"ce-type": "com.storecast.retrain.requested"}),
         ("type", "com.storecast.forecast.requested")),
    *both("structured: no specversion", lambda k: structured(k, {"specversion": None}), ("specversion",)),
    *both("structured: no data", lambda k: structured(k, {"data": None}), ("data",)),
    *both("structured: not JSON", lambda k: structured(k, b"{nope"), ("JSON",)),
    *both("structured: bad time", lambda k: structured(k, {"time": "2015-13-45T99:00:00Z"}), ("time",)),
    *both("structured: no type", lambda k: structured(k, {"type": None}), ("type",)),
    *both("structured: data a string", lambda k: structured(k, {"data": "forecast please"}), ("instances",)),
    # gRPC, both servers
    *both("gRPC model_version 999", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, model_version="999", inputs=[tensor(pb, "store_id", [s.stores[0].encode()]), tensor(
            pb, "ds" if k == "predictor" else "begin_date", [s.day(1).encode()])])), ("999",), (404,)),
    *both("gRPC unknown model", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(model_name="nope")),
          ("nope",), (404,)),
    *both("gRPC raw contents count", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(name="store_id", datatype="BYTES", shape=[1])],
        raw_input_contents=[b"", b""])), ("raw_input_contents",)),
    *both("gRPC raw BYTES truncated", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(name="store_id", datatype="BYTES", shape=[1])],
        raw_input_contents=[b"\x05\x00\x00\x00ab"])), ("store_id", "claims 5 bytes")),
    *both("gRPC contents in the wrong field", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="store_id", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(int_contents=[4]))])),
          ("bytes_contents",)),
    *both("gRPC shape [2], one element", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [b"1"], shape=[2])])), ("2 elements",)),
    *both("gRPC shape [1, 1]", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [b"1"], shape=[1, 1])])), ("one-dimensional",)),
    *both("gRPC store id not UTF-8", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [b"\xff"]), *(
            [tensor(pb, "ds", [s.day(1).encode()])] if k == "predictor" else [])])), ("UTF-8",)),
    *both("gRPC store id of 1 MB", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [BIG.encode()]), *(
            [tensor(pb, "ds", [s.day(1).encode()])] if k == "predictor" else [])])), ("store",)),
    *both("gRPC datatype 'STRING'", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(name="store_id", datatype="STRING",
                                                                        shape=[0])])), ("STRING",)),
    *both("gRPC unknown output", lambda k: grpc_call(k, lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [s.stores[0].encode()]), *(
            [tensor(pb, "ds", [s.day(1).encode()])] if k == "predictor" else [])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")])), ("nope",)),
    Case("gRPC unknown store", "transformer", grpc_call("transformer", lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [b"4242"]), tensor(pb, "begin_date", [
            s.day(1).encode()])])), ("4242",)),
    Case("gRPC bad begin_date", "transformer", grpc_call("transformer", lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [s.stores[0].encode()]),
                                  tensor(pb, "begin_date", [b"2015-02-30"])])), ("begin_date",)),
    Case("gRPC promo 7", "predictor", grpc_call("predictor", lambda s, pb: pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor(pb, "store_id", [s.stores[0].encode()]), tensor(pb, "ds", [
            s.day(1).encode()]), tensor(pb, "promo", [7], "INT32")])), ("promo",)),
    Case("gRPC ds beyond 2199", "predictor", grpc_call("predictor", grpc_pred([b"1"], [b"2999-01-01"])), ("2199",)),
    *(case for date in EXTREME_DATES for case in extreme_date(date)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_a_4xx_naming_the_field(srv: Served, case: Case) -> None:
    status, message = case.send(srv)
    SEEN["requests"] += 1
    SEEN["5xx"] += status >= 500
    assert status in case.statuses, (status, message[:500])
    assert len(message) < 3000, "an error echoes at most a bounded part of what was sent"
    for word in case.words:
        assert word in message, (word, message[:500])


def test_servers_serve_normally_afterwards(srv: Served) -> None:
    assert len(CASES) >= 80
    assert srv.healthy()
    print(f"\nhostile requests: {SEEN['requests']} of {len(CASES)} run, 5xx / INTERNAL answers: {SEEN['5xx']}")
    log = (srv.root / "logs" / "predictor.log").read_text() + (srv.root / "logs" / "transformer.log").read_text()
    assert "Traceback" not in log, log[log.find("Traceback"):][:3000]
