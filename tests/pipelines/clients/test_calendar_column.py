"""Every table a client writes says where each day's calendar came from (``calendar``: the version's known-ahead
calendar, ``default`` beyond it, ``what-if``), beside ``open`` and ``holiday``."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.clients import batch
from pipelines.clients.forecast import table


def prediction(store: str) -> dict:
    """A business answer: a known calendar day, a default day and Christmas Day beyond the calendar (closed by the
    store's habit), a what-if day."""
    rows = [("2015-12-22", 5000.0, True, False, "0", "calendar"), ("2015-12-23", 6100.5, True, True, "0", "default"),
            ("2015-12-25", 0.0, False, False, "c", "default"), ("2015-12-26", 0.0, False, False, "c", "what-if")]
    return {"request": {"store_id": store, "begin_date": "2015-12-22", "end_date": "2015-12-26"},
            "forecast": [{"timestamp": f"{d}T00:00:00", "value": v, "lower": v * 0.8, "upper": v * 1.2, "open": o,
                          "promo": p, "holiday": h, "calendar": c} for d, v, o, p, h, c in rows]}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_batch_table_has_the_calendar_column(tmp_path: Path, suffix: str) -> None:
    cols = batch.to_columns(["1", "2"], {"1": (prediction("1"), "7"), "2": (prediction("2"), None)}, "6")
    out = batch.write_table(cols, tmp_path / f"fleet{suffix}")
    if suffix == ".csv":
        with out.open() as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == list(batch.COLUMNS)
        got = {k: [r[k] for r in rows] for k in rows[0]}
        assert got["open"][:4] == ["true", "true", "false", "false"]
    else:
        got = pq.read_table(out).to_pydict()
        assert list(got) == list(batch.COLUMNS) and got["date"][2] == dt.date(2015, 12, 25)
        assert got["open"][:4] == [True, True, False, False]
    assert "calendar" in batch.COLUMNS and batch.COLUMNS.index("calendar") == batch.COLUMNS.index("holiday") + 1
    assert got["calendar"] == ["calendar", "default", "default", "what-if"] * 2
    assert got["holiday"] == ["0", "0", "c", "c"] * 2
    assert got["model_version"] == ["7"] * 4 + ["6"] * 4


def test_an_answer_without_the_calendar_leaves_it_null(tmp_path: Path) -> None:
    old = prediction("1")
    for row in old["forecast"]:
        del row["calendar"]
    cols = batch.to_columns(["1"], {"1": (old, None)}, None)
    assert cols["calendar"] == [None] * 4
    with batch.write_table(cols, tmp_path / "t.csv").open() as fh:
        assert [r["calendar"] for r in csv.DictReader(fh)] == [""] * 4


def test_the_one_store_table_has_the_calendar_column() -> None:
    lines = table(prediction("4")).splitlines()
    assert lines[1].split() == ["date", "forecast", "lower", "upper", "calendar", "notes"]
    by_day = {line.split()[0]: line.split() for line in lines[2:]}
    assert by_day["2015-12-22"][5] == "calendar" and by_day["2015-12-23"][5:] == ["default", "promotion"]
    assert by_day["2015-12-25"][2:6] == ["0.0", "0.0", "0.0", "default"]
    assert "usually closed on this holiday" in lines[4] and "holiday c" in lines[4]
    assert by_day["2015-12-26"][5:7] == ["what-if", "closed,"]
