"""The bulk path with real processes on loopback: the predictor's windows form, the transformer over two
predictor shards (gRPC V2 and REST V2) in small batches, and the row budget through the stack.

One module builds a parameter table of 8 stores with the calendar regressors and a known-ahead calendar
(no training: a few milliseconds), serves it from a folder with one predictor of every store (a small
``--max-rows``) and two shard predictors, and puts three transformers in front of the shards: gRPC V2 and
REST V2 with ``--batch-rows 7``, and one with a small ``--max-inflight-rows``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from predictor import calendar as cal
from serving.contract import CALENDAR_SOURCES, HOLIDAY_CODES, MAX_DAY, iso, unpack_day_flags
from tests.support import MODEL, REPO, Predictor, Transformer, metric, random_table

STORES = 8
MAX_ROWS = 2000  # --max-rows of the predictor of every store
HORIZON = 366  # the predictor's default --precompute-days
BATCH_ROWS = 7
ALL_OUTPUTS = ("yhat", "yhat_lower", "yhat_upper", "open_rate", "open", "promo", "holiday", "calendar", "day_flags")
CALENDAR_OUTPUTS = ("open", "promo", "holiday", "calendar")


# ---- the version: 8 stores, calendar regressors, a calendar around each store's last day -------------------
def calendar_table(seed: int = 21) -> Any:
    """A random parameter table (``tests.support.random_table``) with the calendar model: every
    regressor of ``predictor.calendar``, a calendar from 60 days before to 45 days after each store's last
    day (Sundays closed, promotion weeks, state holidays, a few unknown days), Sundays usually closed."""
    from predictor.table import ParamTable, _row

    base = random_table(STORES, seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(len(base)):
        row = _row(base, i)
        start, width = int(base.last_day[i]) - 60, 106
        days = start + np.arange(width)
        wd = cal.weekday(days)
        cells = np.zeros((width, 4), dtype=np.int8)
        cells[:, cal.OPEN] = (wd != cal.SUNDAY) & (rng.random(width) > 0.08)
        week = (days - days[0]) // 7
        cells[:, cal.PROMO] = (week % 2 == i % 2) & (wd < 5)
        cells[:, cal.HOLIDAY] = rng.choice([0] * 12 + [1, 2, 3], width)
        cells[:, cal.SCHOOL] = rng.random(width) < 0.2
        cells[70:74] = cal.UNKNOWN  # days the calendar says nothing about: defaults
        open_rate = np.ones(7)
        open_rate[cal.SUNDAY] = 0.0
        open_rate[5] = 0.3 if i % 3 == 0 else 0.9  # some stores are usually closed on Saturdays
        row.update(regressors=list(cal.REGRESSORS), reg_beta=rng.normal(0, 0.15, len(cal.REGRESSORS)),
                   reg_iv=np.ones(len(cal.REGRESSORS)),
                   cal_start=start, calendar=cells, open_rate=open_rate)
        rows.append(row)
    return ParamTable.from_rows(rows, base.iv_days, base.interval_width, base.meta, base.transform)


# ---- processes ---------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    table: Any
    folder: Path
    root: Path
    full: Predictor  # every store, --max-rows MAX_ROWS: the windows form and the long-format reference
    shards: list[Predictor]  # --shard 0/2 and 1/2
    grpc: Transformer  # gRPC V2 to the shards, --batch-rows 7
    rest: Transformer  # REST V2 (binary tensors) to the shards, --batch-rows 7
    budget: Transformer  # gRPC V2, --max-inflight-rows 3000, --row-wait-seconds 0.5, default --batch-rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("bulk")
    table = calendar_table()
    folder = root / "version"
    table.save(folder / "params.npz")
    assert {zlib.crc32(s.encode()) % 2 for s in table.store_id.tolist()} == {0, 1}  # both shards hold stores
    started: list[Any] = []
    try:
        full = Predictor(root / "full.log", ["--model_uri", str(folder), "--max-rows", str(MAX_ROWS)])
        started.append(full)
        shards = []
        for k in range(2):
            shards.append(Predictor(root / f"shard-{k}.log", ["--model_uri", str(folder), "--shard", f"{k}/2"]))
            started.append(shards[-1])
        grpc_hosts = ",".join(f"127.0.0.1:{p.grpc_port}" for p in shards)
        http_hosts = ",".join(f"127.0.0.1:{p.http_port}" for p in shards)
        small = ["--shards", "2", "--batch-rows", str(BATCH_ROWS)]
        transformers = [
            Transformer(root / "t-grpc.log", ["--predictor_hosts", grpc_hosts, *small]),
            Transformer(root / "t-rest.log", ["--predictor_hosts", http_hosts, "--predictor_protocol", "v2", *small]),
            Transformer(root / "t-budget.log", ["--predictor_hosts", grpc_hosts, "--shards", "2",
                                                "--max-inflight-rows", "3000", "--row-wait-seconds", "0.5"]),
        ]
        started += transformers
        for process in started:  # all started at once, then waited for
            process.wait_ready()
        yield Cluster(table, folder, root, full, shards, *transformers)
    finally:
        for process in started:
            process.stop()


# ---- requests ----------------------------------------------------------------------------------------------
Window = tuple[str, int, int]  # store id, first day (days since 1970-01-01), days


def tensor(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "data": data, **({"shape": shape} if shape else {})}


def row_days(windows: list[Window]) -> list[tuple[str, int]]:
    """(store id, day) of every answered row of ``windows``: window by window, day by day."""
    return [(sid, begin + j) for sid, begin, n in windows for j in range(n)]


def windows_inputs(windows: list[Window], what_if: dict[str, tuple[str, list[Any]]] | None = None,
                   datatype: str = "INT32") -> list[dict[str, Any]]:
    """The windows form: store_id, begin_day, days per window (and a what-if per answered row)."""
    return [tensor("store_id", "BYTES", [w[0] for w in windows]),
            tensor("begin_day", datatype, [w[1] for w in windows]),
            tensor("days", datatype, [w[2] for w in windows]),
            *(tensor(name, dt, values) for name, (dt, values) in (what_if or {}).items())]


def long_inputs(windows: list[Window], what_if: dict[str, tuple[str, list[Any]]] | None = None
                ) -> list[dict[str, Any]]:
    """The same rows in the long format: store_id and ds per row."""
    rows = row_days(windows)
    return [tensor("store_id", "BYTES", [sid for sid, _ in rows]), tensor("ds", "BYTES", [iso(d) for _, d in rows]),
            *(tensor(name, dt, values) for name, (dt, values) in (what_if or {}).items())]


def rest_json(port: int, inputs: list[dict[str, Any]], outputs: tuple[str, ...] = ALL_OUTPUTS) -> dict[str, Any]:
    """A V2 request as plain JSON: ``{"status": 200, "outputs": {name: list}}`` or the status and error."""
    body = {"inputs": [{"name": t["name"], "datatype": t["datatype"], "shape": t.get("shape", [len(t["data"])]),
                        "data": t["data"]} for t in inputs],
            "outputs": [{"name": name} for name in outputs]}
    r = httpx.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", json=body, timeout=60)
    if r.status_code != 200:
        return {"status": r.status_code, "message": r.json().get("error", r.text)}
    doc = r.json()
    return {"status": 200, "outputs": {o["name"]: o["data"] for o in doc["outputs"]}, "version": doc["model_version"]}


NUMPY = {"BYTES": object, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32}


def as_array(t: dict[str, Any]) -> np.ndarray:
    data = [v.encode() for v in t["data"]] if t["datatype"] == "BYTES" else t["data"]
    array = np.array(data, dtype=NUMPY[t["datatype"]])
    return array.reshape(t["shape"]) if "shape" in t else array


def plain(values: np.ndarray) -> list[Any]:
    """An output array as the JSON answer would hold it (BYTES decoded)."""
    return [v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1).tolist()]


def rest_binary(port: int, inputs: list[dict[str, Any]], outputs: tuple[str, ...] = ALL_OUTPUTS) -> dict[str, Any]:
    """The same request through tritonclient.http with the binary tensor extension both ways."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
    try:
        tensors = []
        for t in inputs:
            array = as_array(t)
            tensors.append(th.InferInput(t["name"], list(array.shape), t["datatype"]))
            tensors[-1].set_data_from_numpy(array, binary_data=True)
        try:
            result = client.infer(MODEL, tensors, outputs=[th.InferRequestedOutput(n, binary_data=True)
                                                           for n in outputs])
        except InferenceServerException as exc:
            return {"status": int(exc.status()), "message": exc.message()}
        response = result.get_response()
        assert all(o["parameters"]["binary_data_size"] > 0 or not o["shape"][0] for o in response["outputs"])
        return {"status": 200, "outputs": {n: plain(result.as_numpy(n)) for n in outputs},
                "version": response["model_version"]}
    finally:
        client.close()


# tritonclient.grpc in its own process (its protobuf modules and KServe's define the same symbols), every
# request of the module in one run
TRITON_GRPC = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

host, path = sys.argv[1], sys.argv[2]
requests = json.load(open(path))
NUMPY = {"BYTES": object, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32}
client = tg.InferenceServerClient(host)
answers = {}
for label, request in requests.items():
    tensors = []
    for t in request["inputs"]:
        data = [v.encode() for v in t["data"]] if t["datatype"] == "BYTES" else t["data"]
        array = np.array(data, dtype=NUMPY[t["datatype"]])
        if "shape" in t:
            array = array.reshape(t["shape"])
        tensors.append(tg.InferInput(t["name"], list(array.shape), t["datatype"]))
        tensors[-1].set_data_from_numpy(array)
    try:
        result = client.infer("storecast", tensors, client_timeout=60,
                              outputs=[tg.InferRequestedOutput(n) for n in request["outputs"]])
    except InferenceServerException as exc:
        answers[label] = {"status": exc.status(), "message": exc.message()}
        continue
    outputs = {}
    for name in request["outputs"]:
        values = result.as_numpy(name).reshape(-1).tolist()
        outputs[name] = [v.decode() if isinstance(v, bytes) else v for v in values]
    answers[label] = {"status": "OK", "outputs": outputs, "version": result.get_response().model_version}
print(json.dumps(answers))
"""


def grpc_all(port: int, requests: dict[str, dict[str, Any]], folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "grpc-requests.json"
    path.write_text(json.dumps(requests))
    proc = subprocess.run([sys.executable, "-c", TRITON_GRPC, f"127.0.0.1:{port}", str(path)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- 1. the windows form is the long format, bit for bit ---------------------------------------------------
@dataclass
class Case:
    windows: list[Window]
    what_if: dict[str, tuple[str, list[Any]]] | None = None
    datatype: str = "INT32"  # of begin_day and days

    @property
    def rows(self) -> int:
        return sum(n for _, _, n in self.windows)


CASES = ("in-the-horizon", "in-the-horizon-int64", "history", "around-the-last-day", "beyond-the-horizon",
         "mixed-with-duplicates", "one-day", "what-if", "what-if-bool", "what-if-in-the-horizon")


def make_cases(table: Any) -> dict[str, Case]:
    """Random windows by where they fall relative to each store's last day of data (``first`` = last + 1):
    all inside the precomputed horizon (a lookup), all in history, across the last day (calendar and
    defaults), beyond the horizon (evaluated), a mix; what-ifs per answered row."""
    rng = np.random.default_rng(5)
    ids = table.store_id.tolist()
    last = dict(zip(ids, table.last_day.tolist(), strict=True))

    def windows(count: int, low: int, high: int, longest: int = 60, store: str | None = None) -> list[Window]:
        out = []
        for _ in range(count):
            sid = store or ids[int(rng.integers(len(ids)))]
            out.append((sid, last[sid] + int(rng.integers(low, high + 1)), int(rng.integers(1, longest + 1))))
        return out

    def what_if(rows: int, promo_type: str = "INT32") -> dict[str, tuple[str, list[Any]]]:
        promo = rng.choice([-1, -1, -1, 1, 0], rows).tolist()
        if promo_type == "BOOL":
            promo = [bool(v == 1) for v in promo]
        return {"promo": (promo_type, promo), "open": ("INT32", rng.choice([-1, -1, -1, -1, 0, 1], rows).tolist())}

    horizon = HORIZON - 60  # a window starting at last + horizon ends before the horizon's end
    mixed = windows(10, -500, 1030) + windows(2, -3, 3, longest=10, store=ids[0])
    mixed += [mixed[0], (ids[0], mixed[-1][1] + 1, 1)]  # the same window twice, and overlapping ones
    cases = {
        "in-the-horizon": Case(windows(12, 1, horizon)),
        "in-the-horizon-int64": Case(windows(12, 1, horizon), datatype="INT64"),
        "history": Case(windows(10, -500, -61)),
        "around-the-last-day": Case(windows(12, -70, 40, longest=30)),
        "beyond-the-horizon": Case(windows(10, HORIZON - 40, 1030)),
        "mixed-with-duplicates": Case(mixed),
        "one-day": Case([(ids[3], last[ids[3]] + 2, 1)]),
    }
    for name, (low, high), promo_type in (("what-if", (-70, 40), "INT32"), ("what-if-bool", (-70, 40), "BOOL"),
                                          ("what-if-in-the-horizon", (1, horizon), "INT32")):
        # one window per store: the long format's what-if reaches the store's rows, the windows form's its window
        w = [windows(1, low, high, longest=30, store=sid)[0] for sid in ids]
        cases[name] = Case(w, what_if(sum(n for _, _, n in w), promo_type))
    assert list(cases) == list(CASES) and all(c.rows <= MAX_ROWS for c in cases.values())

    def ahead(case: str) -> np.ndarray:  # days after each store's first unseen day, per row
        return np.array([day - last[sid] - 1 for sid, day in row_days(cases[case].windows)])

    for case in ("in-the-horizon", "in-the-horizon-int64", "what-if-in-the-horizon"):
        assert ((ahead(case) >= 0) & (ahead(case) < HORIZON)).all()  # every row a lookup
    assert (ahead("history") < -1).all() and (ahead("beyond-the-horizon") >= HORIZON).any()
    assert (ahead("around-the-last-day") < 0).any() and (ahead("around-the-last-day") >= 0).any()
    return cases


@pytest.fixture(scope="module")
def cases(cluster: Cluster) -> dict[str, Case]:
    return make_cases(cluster.table)


@pytest.fixture(scope="module")
def grpc_answers(cluster: Cluster, cases: dict[str, Case]) -> dict[str, dict[str, Any]]:
    """Every gRPC request of this module to the predictor of every store, in one tritonclient.grpc run."""
    requests = {}
    for name, case in cases.items():
        requests[f"windows:{name}"] = {"inputs": windows_inputs(case.windows, case.what_if, case.datatype),
                                       "outputs": ALL_OUTPUTS}
        requests[f"long:{name}"] = {"inputs": long_inputs(case.windows, case.what_if), "outputs": ALL_OUTPUTS}
    for name, (inputs, _) in BAD.items():
        requests[f"bad:{name}"] = {"inputs": inputs, "outputs": ("yhat",)}
    return grpc_all(cluster.full.grpc_port, requests, cluster.root)


@pytest.mark.parametrize("name", CASES)
def test_windows_form_equals_the_long_format_bit_for_bit(cluster: Cluster, cases: dict[str, Case],
                                                         grpc_answers: dict[str, dict[str, Any]], name: str) -> None:
    case = cases[name]
    port = cluster.full.http_port
    reference = rest_json(port, long_inputs(case.windows, case.what_if))
    assert reference["status"] == 200, reference
    want = reference["outputs"]
    assert all(len(want[o]) == case.rows for o in ALL_OUTPUTS)
    assert all(np.isfinite(want[o]).all() for o in ("yhat", "yhat_lower", "yhat_upper"))
    answers = {
        "rest-json": rest_json(port, windows_inputs(case.windows, case.what_if, case.datatype)),
        "rest-binary": rest_binary(port, windows_inputs(case.windows, case.what_if, case.datatype)),
        "rest-binary-long": rest_binary(port, long_inputs(case.windows, case.what_if)),
        "grpc": grpc_answers[f"windows:{name}"],
        "grpc-long": grpc_answers[f"long:{name}"],
    }
    for protocol, answer in answers.items():
        assert answer["status"] in (200, "OK"), (protocol, answer)
        assert answer["version"] == reference["version"]
        for output in ALL_OUTPUTS:
            assert answer["outputs"][output] == want[output], (protocol, output)
    # day_flags packs open, promo, holiday and the calendar source of each row
    open_, promo, holiday, source = (a.tolist() for a in unpack_day_flags(np.array(want["day_flags"])))
    assert open_ == want["open"] and promo == want["promo"]
    assert [HOLIDAY_CODES[h] for h in holiday] == want["holiday"]
    assert [CALENDAR_SOURCES[s] for s in source] == want["calendar"]
    assert set(want["calendar"]) <= set(CALENDAR_SOURCES) and set(want["holiday"]) <= set(HOLIDAY_CODES)
    if case.what_if:  # the what-if changes the answer, and the rows it set say so
        plain_answer = rest_json(port, windows_inputs(case.windows, None, case.datatype))["outputs"]
        assert plain_answer["yhat"] != want["yhat"]
        given = np.array(case.what_if["open"][1]) >= 0
        assert {want["calendar"][i] for i in np.flatnonzero(given)} == {"what-if"}
        assert [want["open"][i] for i in np.flatnonzero(given)] == np.array(case.what_if["open"][1])[given].tolist()


def test_the_cases_cover_every_calendar_source_and_holiday(cluster: Cluster, cases: dict[str, Case]) -> None:
    """The windows above are not all default days: the calendar, defaults, what-ifs, closed days, holidays."""
    seen: dict[str, set[Any]] = {"calendar": set(), "holiday": set(), "open": set(), "promo": set()}
    for case in cases.values():
        out = rest_json(cluster.full.http_port, windows_inputs(case.windows, case.what_if, case.datatype),
                        ("calendar", "holiday", "open", "promo"))["outputs"]
        for key in seen:
            seen[key] |= set(out[key])
    assert seen == {"calendar": set(CALENDAR_SOURCES), "holiday": set(HOLIDAY_CODES), "open": {0, 1},
                    "promo": {0, 1}}


# ---- 2. bad windows-form requests: 400 / INVALID_ARGUMENT naming the field ----------------------------------
DAY = 16300  # 2014-08-17: in every store's history
IDS = tensor("store_id", "BYTES", ["2", "4"])
BAD: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
    "ds with begin_day": ([IDS, tensor("ds", "BYTES", ["2014-08-17"] * 2), tensor("begin_day", "INT32", [DAY] * 2),
                           tensor("days", "INT32", [3, 3])], ["ds", "begin_day", "not both"]),
    "begin_day without days": ([IDS, tensor("begin_day", "INT32", [DAY] * 2)], ["missing input 'days'"]),
    "days without begin_day": ([IDS, tensor("days", "INT32", [3, 3])], ["missing input 'begin_day'"]),
    "days 0": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "INT32", [3, 0])],
               ["input 'days' window 1", "at least 1"]),
    "days negative": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "INT64", [-2, 3])],
                      ["input 'days' window 0", "-2", "at least 1"]),
    "begin_day before 1900": ([IDS, tensor("begin_day", "INT32", [DAY, -25568]), tensor("days", "INT32", [3, 3])],
                              ["input 'begin_day' window 1", "-25568", "1900-01-01"]),
    "begin_day after 2199": ([IDS, tensor("begin_day", "INT64", [MAX_DAY + 1, DAY]), tensor("days", "INT64", [1, 3])],
                             ["input 'begin_day' window 0", str(MAX_DAY + 1), "2199-12-31"]),
    "window past 2199": ([IDS, tensor("begin_day", "INT32", [DAY, MAX_DAY]), tensor("days", "INT32", [3, 2])],
                         ["input 'days' window 1", "run past 2199-12-31"]),
    "days shorter": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "INT32", [3])],
                     ["different lengths", "store_id has 2", "days has 1"]),
    "begin_day longer": ([IDS, tensor("begin_day", "INT32", [DAY] * 3), tensor("days", "INT32", [3, 3])],
                         ["different lengths", "begin_day has 3"]),
    "promo per window": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "INT32", [3, 4]),
                          tensor("promo", "INT32", [1, 0])], ["input 'promo'", "2 elements", "7 rows"]),
    "open one short": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "INT32", [3, 4]),
                        tensor("open", "BOOL", [True] * 6)], ["input 'open'", "6 elements", "7 rows"]),
    "promo 2": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "INT32", [1, 1]),
                 tensor("promo", "INT32", [1, 2])], ["input 'promo' row 1", "1, 0 or -1"]),
    "over --max-rows": ([IDS, tensor("begin_day", "INT32", [DAY] * 2),
                         tensor("days", "INT32", [1500, MAX_ROWS - 1499])],
                        [f"{MAX_ROWS + 1} rows", f"limit is {MAX_ROWS}", "--max-rows"]),
    "unknown store": ([tensor("store_id", "BYTES", ["2", "nope"]), tensor("begin_day", "INT32", [DAY] * 2),
                       tensor("days", "INT32", [3, 3])], ["unknown store_id", "'nope'"]),
    "blank store": ([tensor("store_id", "BYTES", ["2", " "]), tensor("begin_day", "INT32", [DAY] * 2),
                     tensor("days", "INT32", [3, 3])], ["input 'store_id' window 1", "empty"]),
    "FP32 begin_day": ([IDS, tensor("begin_day", "FP32", [float(DAY)] * 2), tensor("days", "INT32", [3, 3])],
                       ["input 'begin_day'", "INT32 or INT64", "FP32"]),
    "BYTES days": ([IDS, tensor("begin_day", "INT32", [DAY] * 2), tensor("days", "BYTES", ["3", "3"])],
                   ["input 'days'", "INT32 or INT64", "BYTES"]),
    "begin_day of shape [1, 2]": ([IDS, tensor("begin_day", "INT32", [[DAY, DAY]], shape=[1, 2]),
                                   tensor("days", "INT32", [3, 3])], ["input 'begin_day'", "one-dimensional"]),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_windows_requests_are_400_naming_the_field(cluster: Cluster, grpc_answers: dict[str, dict[str, Any]],
                                                        name: str) -> None:
    inputs, words = BAD[name]
    port = cluster.full.http_port
    answers = {"rest-json": rest_json(port, inputs, ("yhat",)), "rest-binary": rest_binary(port, inputs, ("yhat",))}
    for protocol, answer in answers.items():
        assert answer["status"] == 400, (protocol, answer)
        for word in words:
            assert word in answer["message"], (protocol, word, answer["message"])
    answer = grpc_answers[f"bad:{name}"]
    assert answer["status"] == "StatusCode.INVALID_ARGUMENT", answer
    for word in words:
        assert word in answer["message"], ("grpc", word, answer["message"])
    assert cluster.full.proc.poll() is None


def test_a_window_too_far_ahead_names_the_windows_inputs(cluster: Cluster) -> None:
    sid, last = "2", int(cluster.table.last_day[cluster.table.store_id.tolist().index("2")])
    answer = rest_json(cluster.full.http_port, windows_inputs([(sid, last + 1080, 30)]), ("yhat",))
    assert answer["status"] == 400 and "--max-days-ahead" in answer["message"]
    assert "'ds'" not in answer["message"] and ("begin_day" in answer["message"] or "days" in answer["message"])


def test_int64_days_that_overflow_are_refused_not_a_crash(cluster: Cluster) -> None:
    victim = Predictor(cluster.root / "victim.log", ["--model_uri", str(cluster.folder)])
    try:
        victim.wait_ready()
        huge = 2**63 - 1  # two of these and a 3 add up to 1 in int64
        inputs = [tensor("store_id", "BYTES", ["2", "2", "2"]), tensor("begin_day", "INT64", [DAY] * 3),
                  tensor("days", "INT64", [huge, huge, 3])]
        try:
            status = rest_json(victim.http_port, inputs, ("yhat",))["status"]
        except httpx.TransportError as exc:  # the server process died mid-request
            status = repr(exc)
        time.sleep(0.5)
        assert (status, victim.proc.poll()) == (400, None)
    finally:
        victim.stop()


# ---- 3. the transformer over both predictor protocols, two shards, batches of 7 rows -----------------------
@dataclass(frozen=True)
class Instance:
    store_id: str
    begin: int
    end: int
    promo_days: tuple[int, ...] = ()
    closed_days: tuple[int, ...] = ()

    @property
    def window(self) -> Window:
        return (self.store_id, self.begin, self.end - self.begin + 1)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"storeId": self.store_id, "beginDate": iso(self.begin), "endDate": iso(self.end)}
        if self.promo_days:
            out["promoDays"] = [iso(d) for d in self.promo_days]
        if self.closed_days:
            out["closedDays"] = [iso(d) for d in self.closed_days]
        return out

    def echo(self) -> dict[str, Any]:
        out: dict[str, Any] = {"store_id": self.store_id, "begin_date": iso(self.begin), "end_date": iso(self.end)}
        if self.promo_days:
            out["promo_days"] = [iso(d) for d in self.promo_days]
        if self.closed_days:
            out["closed_days"] = [iso(d) for d in self.closed_days]
        return out

    def what_if(self) -> dict[str, tuple[str, list[int]]] | None:
        if not (self.promo_days or self.closed_days):
            return None
        days = range(self.begin, self.end + 1)
        return {"promo": ("INT32", [1 if d in self.promo_days else -1 for d in days]),
                "open": ("INT32", [0 if d in self.closed_days else -1 for d in days])}


def business_instances(table: Any) -> list[Instance]:
    """Windows of 1 to 40 days around each store's last day (the calendar's closed days and holidays, the
    weekday defaults beyond it), every store more than once, what-ifs on windows of their own."""
    ids = table.store_id.tolist()
    last = dict(zip(ids, table.last_day.tolist(), strict=True))
    rng = np.random.default_rng(9)
    out = []
    for k, sid in enumerate(ids * 2):
        begin = last[sid] + int(rng.integers(-40, 40))
        out.append(Instance(sid, begin, begin + int(rng.integers(0, 7 if k % 4 else 12))))
    a, b = ids[1], ids[-1]  # duplicates of one store with overlapping windows, a long window, a one-day window
    out += [Instance(a, last[a] - 3, last[a] + 3), Instance(a, last[a], last[a] + 39), Instance(a, last[a], last[a]),
            Instance(b, last[b] + 44, last[b] + 47)]
    # what-ifs: a promotion on an ordinary day, closures on a calendar day and on a default day; the store's
    # other windows are far from these (a what-if reaches two days either side)
    for sid, offset in ((ids[0], -20), (ids[5], 100)):
        begin = last[sid] + offset
        out.append(Instance(sid, begin, begin + 9, promo_days=(begin + 2, begin + 5),
                            closed_days=(begin + 1, begin + 7)))
    perm = np.random.default_rng(2).permutation(len(out))
    return [out[i] for i in perm]


def expected_v1(cluster: Cluster, instances: list[Instance]) -> list[dict[str, Any]]:
    """The business answer of each instance from the predictor's long format (one request per window): a closed
    day (by the calendar, a what-if or the weekday pattern) is 0/0/0, open/promo as booleans, holiday and
    calendar strings."""
    out = []
    for inst in instances:
        answer = rest_json(cluster.full.http_port, long_inputs([inst.window], inst.what_if()))
        assert answer["status"] == 200, answer
        o = answer["outputs"]
        rows = []
        for j, (_, day) in enumerate(row_days([inst.window])):
            closed = o["open"][j] == 0
            rows.append({"timestamp": iso(day) + "T00:00:00",
                         **{key: 0.0 if closed else o[name][j]
                            for key, name in (("value", "yhat"), ("lower", "yhat_lower"), ("upper", "yhat_upper"))},
                         "open": bool(o["open"][j]), "promo": bool(o["promo"][j]), "holiday": o["holiday"][j],
                         "calendar": o["calendar"][j]})
        out.append({"request": inst.echo(), "forecast": rows})
    return out


def predictor_calls(cluster: Cluster) -> list[float]:
    """Inference requests each shard has answered (both protocols, every outcome)."""
    calls = []
    for p in cluster.shards:
        text = p.http.get("/metrics").text
        calls.append(sum(metric(text, "storecast_requests_total", component="predictor", protocol=proto,
                                outcome=outcome) or 0
                         for proto in ("http", "grpc") for outcome in ("ok", "4xx", "5xx")))
    return calls


def batches(windows: list[Window], limit: int = BATCH_ROWS) -> list[int]:
    """Predictor calls per shard: each shard's windows in request order, cut before a window that would take
    a batch over ``limit`` rows (a longer window goes alone)."""
    calls = [0, 0]
    for k in range(2):
        rows = 0
        mine = [n for sid, _, n in windows if zlib.crc32(sid.encode()) % 2 == k]
        for n in mine:
            if rows and rows + n > limit:
                calls[k] += 1
                rows = 0
            rows += n
        calls[k] += 1 if mine else 0
    return calls


def test_v1_over_both_protocols_and_two_shards_equals_the_predictors(cluster: Cluster) -> None:
    instances = business_instances(cluster.table)
    body = {"instances": [inst.body() for inst in instances]}
    want = expected_v1(cluster, instances)
    answers = {}
    for kind, transformer in (("grpc-v2", cluster.grpc), ("v2", cluster.rest)):
        before = predictor_calls(cluster)
        r = transformer.v1(body)
        assert r.status_code == 200, (kind, r.text)
        assert r.headers["content-type"].startswith("application/json")
        expected = batches([inst.window for inst in instances])
        deadline = time.monotonic() + 5  # a REST predictor counts a request once its answer is sent
        while True:
            calls = [now - was for now, was in zip(predictor_calls(cluster), before, strict=True)]
            if calls == expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert calls == expected, kind  # split by shard and into batches of at most 7 rows
        answers[kind] = r.json()
    assert answers["grpc-v2"] == answers["v2"]
    doc = answers["grpc-v2"]
    assert doc["model_version"].startswith("sha256:")
    assert len(doc["predictions"]) == len(instances)
    for i, (got, expected) in enumerate(zip(doc["predictions"], want, strict=True)):  # request order
        assert got == expected, (i, instances[i])
    rows = [(row, inst) for p, inst in zip(want, instances, strict=True) for row in p["forecast"]]
    # the request covers what the business answer distinguishes
    assert any(r["calendar"] == "calendar" and not r["open"] and r["value"] == 0 for r, _ in rows)
    assert any(r["calendar"] == "what-if" and not r["open"] and r["value"] == r["upper"] == 0 for r, _ in rows)
    assert any(r["calendar"] == "what-if" and r["promo"] and r["value"] > 0 for r, _ in rows)
    assert any(r["calendar"] == "default" and not r["open"] and r["value"] == r["lower"] == 0 for r, _ in rows)
    assert {r["holiday"] for r, _ in rows} > {"0"}
    assert min(batches([inst.window for inst in instances])) >= 4  # many predictor calls per shard


def test_v2_over_both_protocols_and_two_shards_equals_the_predictors(cluster: Cluster) -> None:
    instances = [inst for inst in business_instances(cluster.table) if inst.what_if() is None]
    outputs = ("store_id", "ds", "yhat", "yhat_lower", "yhat_upper", "open_rate", *CALENDAR_OUTPUTS)
    body = {"inputs": [tensor("store_id", "BYTES", [i.store_id for i in instances]) | {"shape": [len(instances)]},
                       tensor("begin_date", "BYTES", [iso(i.begin) for i in instances]) | {"shape": [len(instances)]},
                       tensor("end_date", "BYTES", [iso(i.end) for i in instances]) | {"shape": [len(instances)]}],
            "outputs": [{"name": name} for name in outputs]}
    answers = {}
    for kind, transformer in (("grpc-v2", cluster.grpc), ("v2", cluster.rest)):
        r = httpx.post(f"{transformer.url}/v2/models/{MODEL}/infer", json=body, timeout=60)
        assert r.status_code == 200, (kind, r.text)
        answers[kind] = r.json()
    assert answers["grpc-v2"]["outputs"] == answers["v2"]["outputs"]
    got = {o["name"]: o["data"] for o in answers["grpc-v2"]["outputs"]}
    assert list(got) == list(outputs)
    windows = [inst.window for inst in instances]
    reference = rest_json(cluster.full.http_port, long_inputs(windows))
    want = reference["outputs"]
    assert answers["grpc-v2"]["model_version"] == reference["version"]
    rows = row_days(windows)
    assert got["store_id"] == [sid for sid, _ in rows] and got["ds"] == [iso(d) for _, d in rows]
    closed = [o == 0 for o in want["open"]]
    assert any(closed) and not all(closed)
    for name in outputs[2:]:  # V2 answers the predictor's numbers, closed days 0
        zeroed = name in ("yhat", "yhat_lower", "yhat_upper")
        assert got[name] == [0.0 if zeroed and c else v for v, c in zip(want[name], closed, strict=True)], name


def test_a_bad_store_through_the_shards_is_a_400_naming_it(cluster: Cluster) -> None:
    ids = cluster.table.store_id.tolist()
    day = iso(int(cluster.table.last_day.min()))
    for transformer in (cluster.grpc, cluster.rest):
        r = transformer.v1({"instances": [{"storeId": s, "beginDate": day} for s in (ids[0], "9999", ids[1])]})
        assert r.status_code == 400 and "'9999'" in r.json()["error"], r.text


def test_a_what_if_stays_with_its_own_instance(cluster: Cluster) -> None:
    sid = cluster.table.store_id.tolist()[2]
    last = int(cluster.table.last_day[2])
    plain = Instance(sid, last + 100, last + 104)
    promoted = Instance(sid, last + 100, last + 104, promo_days=(last + 102,))
    body = {"instances": [promoted.body(), plain.body()]}
    alone = cluster.grpc.v1({"instances": [plain.body()]}).json()["predictions"][0]
    small, large = cluster.grpc.v1(body).json(), cluster.budget.v1(body).json()  # --batch-rows 7 and 50,000
    assert small["predictions"][1] == alone  # 5 + 5 rows: the two windows went in two predictor calls
    row, own = large["predictions"][1]["forecast"][2], alone["forecast"][2]  # the promoted day of the other one
    assert (row["promo"], row["calendar"]) == (own["promo"], own["calendar"]) == (False, "default")
    assert large["predictions"][1] == alone


# ---- 4. the row budget through the stack -------------------------------------------------------------------
LARGE = 16  # concurrent large requests: together more than --row-wait-seconds of work, so the last ones get a 503


def test_the_row_budget_keeps_one_store_requests_answered_while_large_ones_wait_or_get_503(cluster: Cluster) -> None:
    ids = cluster.table.store_id.tolist()
    begin = iso(int(cluster.table.last_day.min()) - 200)
    end = iso(int(cluster.table.last_day.min()) + 165)  # 366 days
    large = {"instances": [{"storeId": ids[i % len(ids)], "beginDate": begin, "endDate": end} for i in range(100)]}
    rows = 100 * 366  # each large request runs alone (over the 3,000 of the budget), each in about 0.05-0.1 s
    assert rows > 4096  # a large request for the budget
    reference = cluster.grpc.v1(large)  # no budget there (1,000,000 rows)
    assert reference.status_code == 200, reference.text
    small = [{"instances": [{"storeId": ids[i % len(ids)], "beginDate": begin}]} for i in range(16)]
    small_want = [cluster.grpc.v1(body).json() for body in small]

    async def burst() -> tuple[list[httpx.Response], list[httpx.Response]]:
        url = f"{cluster.budget.url}/v1/models/{MODEL}:predict"
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            big = [asyncio.ensure_future(client.post(url, json=large)) for _ in range(LARGE)]
            await asyncio.sleep(0.05)  # the large ones are in (one runs, the others wait for the budget)
            one = [asyncio.ensure_future(client.post(url, json=body)) for body in small]
            return list(await asyncio.gather(*big)), list(await asyncio.gather(*one))

    big, one = asyncio.run(burst())
    for r, want in zip(one, small_want, strict=True):
        assert r.status_code == 200, r.text
        assert r.json() == want
    outcomes = [r.status_code for r in big]
    print(f"\nlarge requests of {rows:,} rows with --max-inflight-rows 3000, --row-wait-seconds 0.5: {outcomes}")
    assert set(outcomes) <= {200, 503}, [r.text[:300] for r in big]
    assert 200 in outcomes
    for r in big:
        if r.status_code == 200:
            assert r.content == reference.content  # the full answer
        else:
            assert int(r.headers["retry-after"]) >= 1
            message = r.json()["error"]
            assert "--max-inflight-rows" in message and "3,000" in message and f"{rows:,}" in message, message
    # nothing stays held: a large request is answered again
    again = cluster.budget.v1(large)
    assert again.status_code == 200 and again.content == reference.content
    assert "Traceback" not in cluster.budget.output()
