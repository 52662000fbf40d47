"""Closed means zero on every business path, with real processes: a predictor on a crafted version and a
transformer in front of it.

The version's first store has a 14-day calendar (its Sundays closed, a Wednesday closed for a public
holiday, a promotion); every store is closed on Sundays by its weekday pattern beyond the calendar; the
requests add what-if closures. Every day the business API marks closed (``open`` false, whatever closed
it) is answered value, lower and upper 0 on V1, V2 JSON, V2 binary (tritonclient HTTP), gRPC,
CloudEvents (binary and structured), by ``storecast forecast --stores`` (the file it writes) and in
``storecast forecast --store``'s printed table; open days are the predictor's numbers. The predictor's
own (model-ready) V2 keeps Prophet's numbers on closed days, beside the open flag.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from predictor.table import ParamTable
from serving.contract import to_day
from tests.support import MODEL, Predictor, Transformer, random_table, run_cli

DATA_END = "2015-07-31"  # a Friday
BEGIN, END = "2015-08-01", "2015-08-21"  # the calendar holds 08-01 .. 08-14; the rest follows the weekday pattern
HOLIDAY = "2015-08-05"  # a Wednesday, closed for a public holiday (calendar)
PROMO = "2015-08-06"
WHAT_IF = ("2015-08-04", "2015-08-18")  # closed by the request: one day inside the calendar, one beyond it
CALENDAR_SUNDAYS = ("2015-08-02", "2015-08-09")
PATTERN_SUNDAY = "2015-08-16"  # beyond the calendar: closed by the weekday pattern


def crafted() -> ParamTable:
    """Four stores closed on Sundays; the first with a calendar of 14 days (Sundays and a holiday closed)."""
    t = random_table(4, seed=21)
    n, last = len(t), to_day(DATA_END)
    open_rate = np.ones((n, 7))
    open_rate[:, 6] = 0.0  # Sunday: closed in the last 52 weeks
    calendar = np.full((n, 14, 4), -1, dtype=np.int8)
    for d in range(14):
        day = last + 1 + d
        calendar[0, d] = (0 if (day + 3) % 7 == 6 else 1, 0, 0, 0)
    calendar[0, to_day(HOLIDAY) - last - 1] = (0, 0, 1, 0)  # closed, public holiday ("a")
    calendar[0, to_day(PROMO) - last - 1] = (1, 1, 0, 0)
    return replace(t, last_day=np.full(n, last, dtype=np.int64), open_rate=open_rate, calendar=calendar,
                   cal_start=last + 1, k=np.zeros(n), delta=np.zeros_like(t.delta))  # a flat trend: sales > 0


@dataclass
class Stack:
    predictor: Predictor
    transformer: Transformer
    table: ParamTable
    root: Path

    @property
    def stores(self) -> list[str]:
        return self.table.store_id.tolist()[:2]  # the one with a calendar, one without


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("closed-days")
    table = crafted()
    table.save(root / "version" / "params.npz")
    p = Predictor(root / "predictor.log", ["--model_uri", str(root / "version")])
    t = None
    try:
        p.wait_ready()
        t = Transformer(root / "transformer.log", ["--predictor_hosts", f"127.0.0.1:{p.grpc_port}"]).wait_ready()
        yield Stack(p, t, table, root)
    finally:
        if t is not None:
            t.stop()
        p.stop()


def closed_days(stack: Stack, what_if: bool) -> dict[str, set[str]]:
    """The days each store must be answered closed."""
    a, b = stack.stores
    extra = set(WHAT_IF) if what_if else set()
    return {a: {*CALENDAR_SUNDAYS, HOLIDAY, PATTERN_SUNDAY, *extra}, b: {*CALENDAR_SUNDAYS, PATTERN_SUNDAY, *extra}}


def v1_body(stack: Stack) -> dict:
    return {"instances": [{"storeId": s, "beginDate": BEGIN, "endDate": END, "closedDays": list(WHAT_IF)}
                          for s in stack.stores]}


def predictor_rows(stack: Stack) -> dict[str, dict[str, tuple[float, float, float, int]]]:
    """The predictor's own answer (no what-if): yhat, bounds and the open flag of each store-day."""
    days = [str(np.datetime64(BEGIN) + i) for i in range(to_day(END) - to_day(BEGIN) + 1)]
    ids = [s for s in stack.stores for _ in days]
    r = stack.predictor.infer(ids, days * 2, outputs=[{"name": n} for n in ("yhat", "yhat_lower", "yhat_upper",
                                                                             "open")])
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    rows: dict[str, dict] = {s: {} for s in stack.stores}
    for i, (s, d) in enumerate(zip(ids, days * 2, strict=True)):
        rows[s][d] = (out["yhat"][i], out["yhat_lower"][i], out["yhat_upper"][i], out["open"][i])
    return rows


def check_business(stack: Stack, rows: dict[str, dict[str, tuple[float, float, float]]], what_if: bool) -> None:
    """Closed days 0/0/0; open days exactly the predictor's numbers (what-if days aside)."""
    model = predictor_rows(stack)
    for store, closed in closed_days(stack, what_if).items():
        got = rows[store]
        assert len(got) == 21
        for day, numbers in got.items():
            if day in closed:
                assert numbers == (0.0, 0.0, 0.0), (store, day, numbers)
            else:
                assert numbers == model[store][day][:3] and numbers[0] > 0, (store, day, numbers)


def test_the_predictor_keeps_prophets_numbers_beside_the_open_flag(stack: Stack) -> None:
    model = predictor_rows(stack)
    for store, closed in closed_days(stack, what_if=False).items():
        for day in closed:
            yhat, lower, upper, is_open = model[store][day]
            assert is_open == 0 and yhat != 0 and lower < yhat < upper  # model-ready: not zeroed
        assert sum(v[3] for v in model[store].values()) == 21 - len(closed)


def test_v1_answers_every_closed_day_zero(stack: Stack) -> None:
    r = stack.transformer.v1(v1_body(stack))
    assert r.status_code == 200, r.text
    rows, flags = {}, {}
    for p in r.json()["predictions"]:
        store = p["request"]["store_id"]
        rows[store] = {f["timestamp"][:10]: (f["value"], f["lower"], f["upper"]) for f in p["forecast"]}
        flags[store] = {f["timestamp"][:10]: f for f in p["forecast"]}
    check_business(stack, rows, what_if=True)
    a, b = stack.stores
    for store, closed in closed_days(stack, what_if=True).items():
        assert {d for d, f in flags[store].items() if not f["open"]} == closed
    # each way of closing a day is there: the calendar (a holiday), the weekday pattern, a what-if
    assert (flags[a][HOLIDAY]["calendar"], flags[a][HOLIDAY]["holiday"]) == ("calendar", "a")
    assert flags[a][CALENDAR_SUNDAYS[0]]["calendar"] == "calendar"
    assert flags[a][PATTERN_SUNDAY]["calendar"] == flags[b][PATTERN_SUNDAY]["calendar"] == "default"
    assert flags[a][WHAT_IF[0]]["calendar"] == flags[b][WHAT_IF[1]]["calendar"] == "what-if"
    assert flags[a][PROMO]["promo"] and flags[a][PROMO]["value"] > 0


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_cloudevents_answers_every_closed_day_zero(stack: Stack, mode: str) -> None:
    event = {"specversion": "1.0", "id": f"closed-{mode}", "source": "tests",
             "type": "com.storecast.forecast.requested"}
    url = f"{stack.transformer.url}/v1/models/{MODEL}:predict"
    if mode == "binary":
        r = httpx.post(url, content=json.dumps(v1_body(stack)), timeout=30,
                       headers={"content-type": "application/json", **{f"ce-{k}": v for k, v in event.items()}})
    else:
        r = httpx.post(url, content=json.dumps({**event, "time": "2015-08-01T00:00:00Z", "data": v1_body(stack)}),
                       headers={"content-type": "application/cloudevents+json"}, timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    answer = doc["data"] if mode == "structured" else doc
    if mode == "binary":
        assert r.headers["ce-type"] == "com.storecast.forecast.completed"
    rows = {p["request"]["store_id"]: {f["timestamp"][:10]: (f["value"], f["lower"], f["upper"])
                                        for f in p["forecast"]} for p in answer["predictions"]}
    check_business(stack, rows, what_if=True)


def v2_inputs(stack: Stack) -> list[dict]:
    n = len(stack.stores)
    return [{"name": "store_id", "datatype": "BYTES", "shape": [n], "data": stack.stores},
            {"name": "begin_date", "datatype": "BYTES", "shape": [n], "data": [BEGIN] * n},
            {"name": "end_date", "datatype": "BYTES", "shape": [n], "data": [END] * n}]


def long_rows(store_ids: list, days: list, yhat: list, lower: list, upper: list) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for s, d, v, lo, up in zip(store_ids, days, yhat, lower, upper, strict=True):
        s, d = (x.decode() if isinstance(x, bytes) else str(x) for x in (s, d))
        rows.setdefault(s, {})[d] = (float(v), float(lo), float(up))
    return rows


@pytest.mark.parametrize("outputs", [None, ["store_id", "ds", "yhat", "yhat_lower", "yhat_upper"],
                                     ["yhat_upper", "ds", "store_id", "yhat_lower", "yhat", "open", "calendar"]],
                         ids=["default", "forecast-only", "with-calendar"])
def test_v2_json_answers_every_closed_day_zero(stack: Stack, outputs: list[str] | None) -> None:
    body: dict = {"inputs": v2_inputs(stack)}
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    r = httpx.post(f"{stack.transformer.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    check_business(stack, long_rows(out["store_id"], out["ds"], out["yhat"], out["yhat_lower"], out["yhat_upper"]),
                   what_if=False)
    if "open" in out:
        assert all((v == 0) == (not o) for v, o in zip(out["yhat"], out["open"], strict=True))


def test_v2_binary_answers_every_closed_day_zero(stack: Stack) -> None:
    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{stack.transformer.http_port}")
    inputs = []
    for spec in v2_inputs(stack):
        tensor = th.InferInput(spec["name"], spec["shape"], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in spec["data"]], dtype=object), binary_data=True)
        inputs.append(tensor)
    names = ("store_id", "ds", "yhat", "yhat_lower", "yhat_upper")
    result = client.infer(MODEL, inputs, outputs=[th.InferRequestedOutput(n, binary_data=True) for n in names])
    assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
    check_business(stack, long_rows(*(result.as_numpy(n).tolist() for n in names)), what_if=False)


def test_grpc_answers_every_closed_day_zero(stack: Stack) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

    from serving.tensors import from_bytes

    request = pb.ModelInferRequest(model_name=MODEL, inputs=[
        pb.ModelInferRequest.InferInputTensor(name=s["name"], datatype="BYTES", shape=s["shape"],
                                              contents=pb.InferTensorContents(
                                                  bytes_contents=[v.encode() for v in s["data"]]))
        for s in v2_inputs(stack)])
    with grpc.insecure_channel(f"127.0.0.1:{stack.transformer.grpc_port}") as channel:
        response = pbg.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    out = {o.name: from_bytes(response.raw_output_contents[i], o.datatype).tolist()
           for i, o in enumerate(response.outputs)}
    check_business(stack, long_rows(out["store_id"], out["ds"], out["yhat"], out["yhat_lower"], out["yhat_upper"]),
                   what_if=False)


def test_the_batch_client_writes_closed_days_zero(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "forecast.csv"
    run_cli("forecast", "--stores", ",".join(stack.stores), "--begin", BEGIN, "--end", END, "--url",
            stack.transformer.url, "--out", str(out), "--no-progress")
    rows: dict[str, dict] = {}
    with out.open() as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["store"], {})[row["date"]] = tuple(float(row[k]) for k in ("value", "lower", "upper"))
            assert (row["open"] == "false") == (float(row["value"]) == 0.0)
    check_business(stack, rows, what_if=False)


def test_the_cli_table_prints_closed_days_zero(stack: Stack) -> None:
    a = stack.stores[0]
    text = run_cli("forecast", "--store", a, "--begin", BEGIN, "--end", END, "--url", stack.transformer.url).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("2015-08-")}
    assert len(lines) == 21
    for day, line in lines.items():
        numbers = [float(x) for x in line.split()[2:5]]
        if day in closed_days(stack, what_if=False)[a]:
            assert numbers == [0.0, 0.0, 0.0] and "closed" in line, line
        else:
            assert numbers[0] > 0, line
    assert "usually closed" in lines[PATTERN_SUNDAY] and "holiday a" in lines[HOLIDAY]
