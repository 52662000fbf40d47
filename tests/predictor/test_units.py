"""The predictor's pieces in process: request decoding, the snapshot's evaluation, sources and the loader."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from predictor.codec import decode_v1, decode_v2, json_body
from predictor.forecast import forecast
from predictor.loader import Loader, Shard
from predictor.request_values import RequestError, as_strings, parse_days
from predictor.snapshot import Snapshot
from predictor.source import ModelSource, SourceError, redact
from predictor.table import ParamTable, UnknownStoresError
from tests.support import evaluate, random_table


def where(i: int) -> str:
    return f"input 'ds' row {i}"


# ---- dates ------------------------------------------------------------------------------------------
GOOD = {
    "2015-08-01": "2015-08-01", "2016-02-29": "2016-02-29", " 2015-08-01 ": "2015-08-01",
    "2015-08-01T00:00:00Z": "2015-08-01", "2015-08-01T00:00:00": "2015-08-01", "2015-08-01 00:00:00": "2015-08-01",
    "2015-08-01T00:00:00.000+00:00": "2015-08-01", "1999-12-31": "1999-12-31", "2100-01-01": "2100-01-01",
}
BAD = ["2015-13-01", "2015-02-29", "2015-8-1", "01/08/2015", "20150801", "2015", "2015-08", "today", "", "NaT",
       "2015-08-01T10:00:00", "2015-08-01T00:00:00+02:00", "2015-W31-6", "２０１５-08-01", "2015-08-01x"]


@pytest.mark.parametrize("size", [1, 7, 200])  # small requests take a plain-Python path, large ones numpy's
def test_good_dates(size: int) -> None:
    texts = list(GOOD) * (size // len(GOOD) + 1)
    days = parse_days(texts[:size], where)
    want = np.array([GOOD[t] for t in texts[:size]], dtype="datetime64[D]").astype(np.int64)
    assert days.dtype == np.int64 and np.array_equal(days, want)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("size", [1, 200])
def test_bad_dates_are_named(bad: str, size: int) -> None:
    texts = ["2015-08-01"] * size
    texts[size // 2] = bad
    with pytest.raises(RequestError) as info:
        parse_days(texts, where)
    assert f"input 'ds' row {size // 2}: {bad.strip()!r}" in str(info.value)


def test_many_bad_dates_are_summarised() -> None:
    with pytest.raises(RequestError, match=r"and 15 more"):
        parse_days(["x"] * 20, where)


def test_strings() -> None:
    assert as_strings(["4", b"5", 6], where) == ["4", "5", "6"]
    for bad, word in ((4.0, "float"), (None, "NoneType"), (True, "bool"), (b"\xff", "UTF-8")):
        with pytest.raises(RequestError, match=word):
            as_strings(["1", bad], where)


# ---- V1 / V2 decoding -------------------------------------------------------------------------------
def test_decode_v1() -> None:
    rows = decode_v1({"instances": [{"store_id": "4", "ds": "2015-08-01"}, {"store_id": 5, "ds": "2015-08-02"}]}, 10)
    assert rows.store_id == ["4", "5"] and rows.days.tolist() == [16648, 16649]
    assert json_body(b'{"a": 1}') == {"a": 1}
    for body, word in (([], "JSON object"), ({"instances": {}}, "must be a list"), ({}, "'instances'"),
                       ({"instances": [{"ds": "2015-08-01"}]}, r"instances\[0\] has no 'store_id'"),
                       ({"instances": [{"store_id": "1", "ds": "2015-08-01"}] * 11}, "limit is 10"),
                       (b"{", "not JSON")):
        with pytest.raises(RequestError, match=word):
            decode_v1(body, 10)


class Tensor:
    """Quacks like KServe's InferInput."""

    def __init__(self, name: str, data: list, datatype: str = "BYTES", shape: list[int] | None = None) -> None:
        self.name, self.data, self.datatype = name, data, datatype
        self.shape = shape if shape is not None else [len(data)]

    def as_numpy(self) -> np.ndarray:
        return np.array(self.data, dtype=object).reshape(self.shape)


def test_decode_v2() -> None:
    rows = decode_v2([Tensor("ds", ["2015-08-01", "2015-08-02"]), Tensor("store_id", [b"4", b"4"])], 10)
    assert rows.store_id == ["4", "4"] and rows.days.tolist() == [16648, 16649]
    what_if = decode_v2([Tensor("store_id", ["4", "4"]), Tensor("ds", ["2015-08-01", "2015-08-02"]),
                         Tensor("promo", [1, -1], "INT32"), Tensor("open", [True, False], "BOOL")], 10)
    assert what_if.promo.tolist() == [1, -1] and what_if.open.tolist() == [1, 0]
    cases = {
        "missing input 'ds'": [Tensor("store_id", ["4"])],
        "unexpected input 'promotion'": [Tensor("store_id", ["4"]), Tensor("ds", ["2015-08-01"]),
                                         Tensor("promotion", ["1"])],
        "promo' must have datatype INT32 or BOOL": [Tensor("store_id", ["4"]), Tensor("ds", ["2015-08-01"]),
                                                    Tensor("promo", ["1"])],
        "expected 1, 0 or -1": [Tensor("store_id", ["4"]), Tensor("ds", ["2015-08-01"]), Tensor("open", [2], "INT32")],
        "one-dimensional": [Tensor("store_id", [["4"]], shape=[1, 1]), Tensor("ds", ["2015-08-01"])],
        "store id is 65 characters": [Tensor("store_id", ["x" * 65]), Tensor("ds", ["2015-08-01"])],
        "non-printable": [Tensor("store_id", ["4\x00"]), Tensor("ds", ["2015-08-01"])],
        "outside 1900-01-01": [Tensor("store_id", ["4"]), Tensor("ds", ["0001-01-01"])],
        "given twice": [Tensor("store_id", ["4"]), Tensor("store_id", ["4"]), Tensor("ds", ["2015-08-01"])],
        "datatype BYTES": [Tensor("store_id", [4], "INT64"), Tensor("ds", ["2015-08-01"])],
        "shape": [Tensor("store_id", ["4"], shape=[2, 2]), Tensor("ds", ["2015-08-01"])],
        "does not match shape": [Tensor("store_id", ["4"], shape=[3]), Tensor("ds", ["2015-08-01"])],
        "different lengths": [Tensor("store_id", ["4", "4"]), Tensor("ds", ["2015-08-01"])],
        "limit is 10": [Tensor("store_id", ["4"] * 11), Tensor("ds", ["2015-08-01"] * 11)],
    }
    for word, inputs in cases.items():
        with pytest.raises(RequestError, match=word):
            decode_v2(inputs, 10)


# ---- snapshot: horizon lookups equal the evaluation ------------------------------------------------
@pytest.fixture(scope="module")
def table() -> ParamTable:
    return random_table()


def test_horizon_lookup_equals_evaluation(table: ParamTable) -> None:
    snap = Snapshot.build("1", table, "test", None, 0.0, horizon_days=30)
    ids = table.store_id.tolist()
    rng = np.random.default_rng(1)
    for k in (1, 7, 64, 65, 500):  # dict lookups up to 64 rows, bisection beyond
        for low, high in ((0, 30), (-400, 800), (29, 31)):  # all in the horizon; mixed; at its edge
            rows = rng.integers(0, len(table), k)
            days = table.last_day[rows] + 1 + rng.integers(low, high, k)
            got = evaluate(snap, [ids[r] for r in rows], days)
            for a, b in zip(got, forecast(table, rows, days), strict=True):
                assert np.array_equal(a, b)


def test_unknown_stores_are_named(table: ParamTable) -> None:
    snap = Snapshot.build("1", table, "test", None, 0.0, horizon_days=5)
    days = np.full(3, int(table.last_day[0]) + 1)
    assert np.array_equal(evaluate(snap, [" 2 ", "2", "3"], days)[0][:2], evaluate(snap, ["2", "2"], days[:2])[0])
    with pytest.raises(UnknownStoresError) as info:
        evaluate(snap, ["2", "nope", "999"], days)
    assert info.value.stores == ["999", "nope"]


def test_no_horizon(table: ParamTable) -> None:
    snap = Snapshot.build("1", table, "test", None, 0.0, horizon_days=0)
    rows = np.arange(len(table))
    days = table.last_day + 3
    for a, b in zip(evaluate(snap, table.store_id.tolist(), days), forecast(table, rows, days), strict=True):
        assert np.array_equal(a, b)


# ---- sources and the loader -------------------------------------------------------------------------
def test_open_rate_round_trip_and_first_format_tables(table: ParamTable, tmp_path: Path) -> None:
    """The weekday open rates survive save/load, a merge and the shard split; a storecast-params/1 file (no
    open rates) loads with every weekday open."""
    import json
    from dataclasses import replace

    from predictor.table import FORMAT as TABLE_FORMAT

    rates = np.random.default_rng(3).uniform(0, 1, (len(table), 7))
    rated = replace(table, open_rate=rates)
    back = ParamTable.load(rated.save(tmp_path / "v2.npz"))
    assert np.array_equal(back.open_rate, rates) and back.meta["format"] == TABLE_FORMAT
    snap = Snapshot.build("1", back, "test", None, 0.0, horizon_days=10)
    monday = int(np.datetime64("2015-08-03", "D").astype(np.int64))
    week = np.arange(monday, monday + 7)
    assert np.array_equal(evaluate(snap, [back.store_id[5]] * 7, week, open_rate=True)[3], rates[5])
    shard = back.shard(1, 3)
    assert np.array_equal(shard.open_rate, rates[np.isin(back.store_id, shard.store_id)])

    with np.load(tmp_path / "v2.npz") as z:
        later = ("open_rate", "reg_names", "reg_beta", "calendar", "cal_start", "transform", "iv_scale")
        arrays = {k: z[k] for k in z.files if k not in later}
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "format": "storecast-params/1"}))
    np.savez(tmp_path / "v1.npz", **arrays)
    old = ParamTable.load(tmp_path / "v1.npz")
    assert old.open_rate.shape == (len(table), 7) and (old.open_rate == 1).all()
    merged = old.merged_with(back.take(np.arange(3)))  # a retrain on top of a first-format parent
    by_id = dict(zip(merged.store_id.tolist(), merged.open_rate, strict=True))
    assert np.array_equal(by_id[back.store_id[0]], rates[0]) and (by_id[back.store_id[10]] == 1).all()


def test_model_uris() -> None:
    assert ModelSource.parse("models:/storecast@champion").kind == "alias"
    assert ModelSource.parse("models:/storecast/7") == ModelSource("models:/storecast/7", "version", "storecast", "7")
    assert ModelSource.parse("models:/storecast/latest").follows
    assert not ModelSource.parse("models:/storecast/7").follows
    assert ModelSource.parse("some/folder").kind == "folder"
    for bad in ("models:/storecast", "models:/storecast/Production", "s3://bucket/model", "models:/a/b/c"):
        with pytest.raises(SourceError):
            ModelSource.parse(bad)
    assert redact("http://user:secret@mlflow:5000") == "http://user:***@mlflow:5000"
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


def test_loader_from_a_folder(table: ParamTable, tmp_path: Path) -> None:
    table.save(tmp_path / "v" / "artifacts" / "params.npz")
    loader = Loader(ModelSource.parse(str(tmp_path / "v")), Shard(0, 3), refresh_seconds=0, horizon_days=10)
    swaps = []
    loader.subscribe(swaps.append)
    assert loader.refresh() and not loader.refresh()
    first = loader.current
    assert first.version.startswith("sha256:") and [s.version for s in swaps] == [first.version]
    assert first.horizon_days == 10 and swaps[0].horizon_days == 0  # served at once, then with its horizon
    assert all(zlib.crc32(s.encode()) % 3 == 0 for s in first.table.store_id.tolist())
    ParamTable.load(tmp_path / "v" / "artifacts" / "params.npz").take(np.arange(5)).save(
        tmp_path / "v" / "artifacts" / "params.npz")
    assert loader.refresh() and loader.current.version != first.version and len(swaps) == 2
    clone = pickle.loads(pickle.dumps(loader))  # what KServe does for --workers > 1
    assert clone.current.version == loader.current.version and clone._thread is None
    with pytest.raises(SourceError):
        Loader(ModelSource.parse(str(tmp_path / "missing"))).refresh()
