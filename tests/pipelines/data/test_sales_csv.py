"""Tests for reading and writing Rossmann-format sales files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data.sales_csv import COLUMNS, open_days, read_sales, write_sales
from pipelines.data.synth import synthesize
from tests.support import shared_rossmann

SUFFIXES = ("csv", "csv.gz", "parquet")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthesize(4, seed=2, start="2014-11-20", end="2015-01-10")


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """What read_sales should return for a synthesized frame."""
    out = df.assign(Store=df["Store"].astype(str), Sales=df["Sales"].astype("float64"))
    out["Open"] = out["Open"].astype("int8")
    return out.sort_values(["Store", "Date"]).reset_index(drop=True)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip(frame: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = write_sales(frame, tmp_path / "nested" / f"sales.{suffix}")
    assert path.is_file()
    back = read_sales(path)
    pd.testing.assert_frame_equal(back, _typed(frame))
    assert tuple(back.columns) == COLUMNS
    # Writing what was read gives the same frame again.
    again = read_sales(write_sales(back, tmp_path / f"again.{suffix}"))
    pd.testing.assert_frame_equal(again, back)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_is_deterministic(frame: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    a = write_sales(frame, tmp_path / f"a.{suffix}").read_bytes()
    b = write_sales(frame.copy(), tmp_path / "other" / f"b.{suffix}").read_bytes()
    assert a == b
    if suffix == "csv.gz":
        assert a[3] == 0  # no FNAME/FEXTRA flags: the file name is not stored
        assert a[4:8] == b"\0\0\0\0"  # MTIME 0: no timestamp


def test_csv_layout(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = write_sales(frame[list(reversed(COLUMNS))], tmp_path / "sales.csv.gz")
    with gzip.open(path, "rt") as fh:
        header, first = fh.readline().strip(), fh.readline().strip()
    assert header == ",".join(COLUMNS)
    assert first.split(",")[2] == "2014-11-20"
    plain = write_sales(frame, tmp_path / "sales.csv").read_text()
    assert plain.splitlines()[0] == ",".join(COLUMNS)
    assert gzip.decompress(path.read_bytes()).decode() == plain


def test_unsupported_suffix(frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        write_sales(frame, tmp_path / "sales.xlsx")


def test_shuffled_rows_come_back_sorted(frame: pd.DataFrame, tmp_path: Path) -> None:
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert not shuffled["Date"].is_monotonic_increasing
    for suffix in ("csv", "parquet"):
        back = read_sales(write_sales(shuffled, tmp_path / f"shuffled.{suffix}"))
        pd.testing.assert_frame_equal(back, _typed(frame))
        assert back.index.equals(pd.RangeIndex(len(frame)))


def test_types_and_normalisation(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text(
        "Date,Store,Sales,Open,StateHoliday\n"
        "2015-01-02T00:00:00,4.0,10,1,0\n"
        "2015-01-01 13:45,4.0,0,0,a\n"
        "2015-01-01,12.0,7.5,,0\n"
    )
    df = read_sales(path)
    assert df["Store"].tolist() == ["12", "4", "4"]  # sorted as strings
    assert df["Date"].dtype == "datetime64[ns]"
    assert df["Date"].tolist() == [pd.Timestamp("2015-01-01"), pd.Timestamp("2015-01-01"), pd.Timestamp("2015-01-02")]
    assert df["Sales"].dtype == "float64"
    assert df["Open"].dtype == "int8"
    assert df["Open"].tolist() == [1, 0, 1]  # missing Open means open
    assert df["StateHoliday"].tolist() == ["0", "a", "0"]


def test_store_ids_are_stripped_strings(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text('Store,Date,Sales\n" 7 ",2015-01-01,1\nB12,2015-01-01,2\n7,2015-01-02,3\n')
    df = read_sales(path)
    assert df["Store"].tolist() == ["7", "7", "B12"]
    assert (df["Open"] == 1).all()


def test_state_holiday_stays_str(tmp_path: Path) -> None:
    frame = synthesize(2, seed=0, start="2013-12-20", end="2014-01-10")
    for suffix in SUFFIXES:
        df = read_sales(write_sales(frame, tmp_path / f"h.{suffix}"))
        assert df["StateHoliday"].map(type).eq(str).all()
        assert set(df["StateHoliday"]) == {"0", "a", "c"}


@pytest.mark.parametrize("column", ["Store", "Date", "Sales"])
def test_missing_required_column(frame: pd.DataFrame, tmp_path: Path, column: str) -> None:
    path = write_sales(frame.drop(columns=[column]), tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=column) as err:
        read_sales(path)
    assert "missing.csv" in str(err.value)


def test_duplicate_rows(frame: pd.DataFrame, tmp_path: Path) -> None:
    dup = pd.concat([frame, frame.iloc[[5]]])
    path = write_sales(dup, tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="duplicate") as err:
        read_sales(path)
    assert repr(str(frame.iloc[5]["Store"])) in str(err.value)


def test_unparsable_dates(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("Store,Date,Sales,Open\n1,2015-01-01,5,1\n1,not a date,6,1\n")
    with pytest.raises(ValueError, match="Date"):
        read_sales(path)


def test_open_days(frame: pd.DataFrame) -> None:
    df = _typed(frame)
    train = open_days(df)
    assert list(train.columns) == ["store_id", "ds", "y"]
    assert len(train) == int((df["Open"] == 1).sum()) < len(df)
    assert train["store_id"].map(type).eq(str).all()
    assert train["ds"].dtype == "datetime64[ns]"
    assert train["y"].dtype == "float64"
    assert (train["y"] > 0).all()
    closed = df.loc[df["Open"] == 0, ["Store", "Date"]].itertuples(index=False)
    kept = set(zip(train["store_id"], train["ds"], strict=True))
    assert not kept & set(closed)


def test_shared_rossmann_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORECAST_ROSSMANN", str(tmp_path / "nope.csv.gz"))
    assert shared_rossmann() is None
    target = tmp_path / "train.csv.gz"
    target.write_bytes(b"")
    monkeypatch.setenv("STORECAST_ROSSMANN", str(target))
    assert shared_rossmann() == target


def test_real_rossmann_file() -> None:
    path = shared_rossmann()
    if path is None:
        pytest.skip("real Rossmann train.csv.gz not found (../shared/data/rossmann or $STORECAST_ROSSMANN)")
    df = read_sales(path)
    assert len(df) == 1_017_209
    assert df["Store"].nunique() == 1_115
    assert df["Date"].min() == pd.Timestamp("2013-01-01")
    assert df["Date"].max() == pd.Timestamp("2015-07-31")
    assert set(df["StateHoliday"]) == {"0", "a", "b", "c"}
    assert df["Store"].is_monotonic_increasing
    assert (df.loc[df["Open"] == 0, "Sales"] == 0).all()
    sizes = df.groupby("Store").size()
    assert (sizes == 758).sum() == 180
    train = open_days(df)
    assert len(train) == int(np.sum(df["Open"].to_numpy() == 1))


def test_weekday_open_rate_follows_the_last_year_of_openings() -> None:
    from pipelines.data.sales_csv import weekday_open_rate

    days = pd.date_range("2014-01-06", "2015-07-26")  # Monday .. Sunday, 81 weeks
    weekday = days.dayofweek.to_numpy()
    rows = []
    # store A: closed on Sundays; store B: Sundays only in its last year; store C: its rows hold open days only
    for store, opened in (("A", weekday != 6), ("B", (weekday != 6) | (days >= "2014-07-28")),
                          ("C", weekday < 5)):
        frame = pd.DataFrame({"Store": store, "Date": days, "Sales": 1.0, "Open": opened.astype(int)})
        rows.append(frame[frame["Open"] == 1] if store == "C" else frame)
    rate = weekday_open_rate(pd.concat(rows, ignore_index=True))
    assert rate["A"].tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert rate["B"].tolist() == [1] * 7  # the last 52 weeks count, not the closed Sundays before
    assert rate["C"].tolist() == [1] * 7  # no row says it is closed on weekends


def test_weekday_open_rate_counts_occasional_closures() -> None:
    from pipelines.data.sales_csv import weekday_open_rate

    days = pd.date_range("2015-01-05", periods=28)  # four weeks from a Monday
    opened = np.ones(28, dtype=int)
    opened[[0, 7]] = 0  # two of the four Mondays closed (holidays)
    rate = weekday_open_rate(pd.DataFrame({"Store": "1", "Date": days, "Sales": 1.0, "Open": opened}))["1"]
    assert rate[0] == 0.5 and rate[1:].tolist() == [1] * 6


def test_store_ids_follow_the_serving_rule(tmp_path: Path) -> None:
    """Training accepts the ids the servers accept (printable, at most 64 characters), and names the others."""
    good = tmp_path / "good.csv"
    good.write_text("Store,Date,Sales,Open\n²,2015-01-01,5,1\nA-7,2015-01-01,6,1\n", encoding="utf-8")
    assert sorted(read_sales(good)["Store"].tolist()) == ["A-7", "²"]
    for bad, problem in (("ab\x01c", "non-printable"), ("x" * 65, "at most 64")):
        path = tmp_path / "bad.csv"
        path.write_text(f"Store,Date,Sales,Open\n{bad},2015-01-01,5,1\n", encoding="utf-8")
        with pytest.raises(ValueError, match=problem):
            read_sales(path)
