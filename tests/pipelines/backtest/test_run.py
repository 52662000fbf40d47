"""``storecast backtest`` for real on a few stores: trained at each cutoff, served on loopback, asked through the
business API, scored against the references; the figures checked by hand from the recorded answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.backtest.reference import lightgbm_rows, read_store_facts
from pipelines.backtest.windows import Window, cut, first_stores
from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.data.synth import synthesize
from predictor.snapshot import Snapshot
from predictor.table import ParamTable
from tests.support import run_cli, shared_rossmann

WINDOWS = ("2014-12-15", "2015-06-20")
DAYS = 14
STORES = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Rossmann data when the team's copy is there, else eight synthetic stores."""
    real = shared_rossmann()
    if real is not None:
        return real
    return write_sales(synthesize(STORES, seed=5), tmp_path_factory.mktemp("data") / "sales.csv.gz")


@pytest.fixture(scope="module")
def sales(data: Path) -> pd.DataFrame:
    return first_stores(read_sales(data), STORES)


@pytest.fixture(scope="module")
def backtest(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("backtest")
    windows = [a for w in WINDOWS for a in ("--window", w)]
    proc = run_cli("backtest", "--data", str(data), "--stores", str(STORES), *windows, "--days", str(DAYS),
                   "--workers", "2", "--out", str(out), "--keep-versions", timeout=240)
    return out, json.loads((out / "results.json").read_text()), proc.stderr


def rows_of(out: Path, window: str) -> pd.DataFrame:
    rows = pd.read_csv(out / window / "rows.csv.gz", dtype={"Store": str, "why": str}, keep_default_na=False,
                       na_values={"served": [""], "lightgbm": [""], "naive": [""]}, parse_dates=["Date"])
    return rows


def test_the_report_the_json_the_plots_and_the_progress(backtest: tuple[Path, dict, str]) -> None:
    out, results, stderr = backtest
    assert [w["window"] for w in results["windows"]] == list(WINDOWS)
    assert results["config"]["stores"] == STORES and results["config"]["days"] == DAYS
    assert len(results["git"]["revision"]) == 40 and len(results["load_average"]["start"]) == 3
    report = (out / "report.md").read_text()
    assert "| window | served WAPE | RMSPE | bias | 95 % coverage | LightGBM WAPE |" in report
    for w in WINDOWS:
        assert f"| {w} .. " in report and f"![{w}]({w}.png)" in report
        assert (out / f"{w}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / w / "version" / "params.npz").is_file()
    assert report.count("**Worst 10 days") == 2 and report.count("**Worst 10 stores") == 2
    assert "[window 2015-06-20 2/2]" in stderr and "LightGBM done" in stderr and "asking the business API" in stderr


def test_the_scores_are_the_served_answers_scored_by_hand(backtest: tuple[Path, dict, str]) -> None:
    out, results, _ = backtest
    for w in results["windows"]:
        rows = rows_of(out, w["window"])
        n = 0
        sums = {m: [0.0, 0.0, 0.0] for m in ("served", "lightgbm", "naive")}  # |err|, err, squared pct err
        actual = covered = 0.0
        stores = set()
        for r in rows.itertuples():
            if not (r.Open == 1 and r.Sales > 0 and r.why == ""):
                continue
            n += 1
            actual += r.Sales
            stores.add(r.Store)
            covered += r.served_lower <= r.Sales <= r.served_upper
            for m in sums:
                p = getattr(r, m)
                sums[m][0] += abs(p - r.Sales)
                sums[m][1] += p - r.Sales
                sums[m][2] += ((p - r.Sales) / r.Sales) ** 2
        assert n == w["rows_scored"] > 0 and len(stores) == w["stores_scored"]
        for m, (abs_err, err, sq) in sums.items():
            got = w["methods"][m]
            assert got["wape"] == pytest.approx(abs_err / actual, rel=1e-3)
            assert got["bias"] == pytest.approx(err / actual, rel=1e-3, abs=1e-6)
            assert got["rmspe"] == pytest.approx((sq / n) ** 0.5, rel=1e-3)
        assert w["methods"]["served"]["coverage"] == pytest.approx(covered / n)
        assert 0.0 < w["methods"]["served"]["wape"] < 0.5
        assert 0.5 < w["methods"]["served"]["coverage"] <= 1.0


def test_the_recorded_answers_are_what_the_version_serves(backtest: tuple[Path, dict, str]) -> None:
    """Every open day's answer equals the version's forecast (the predictor's own numpy); closed days are 0."""
    out, results, _ = backtest
    for w in results["windows"]:
        rows = rows_of(out, w["window"])
        table = ParamTable.load(out / w["window"] / "version" / "params.npz")
        assert w["served"]["stores"] == len(table) == STORES and w["trainer"]["stores"] == STORES
        snap = Snapshot.build("t", table, "test", None, 0.0, horizon_days=0)
        days = rows["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
        want = snap.outputs(rows["Store"].tolist(), days, ("yhat", "yhat_lower", "yhat_upper"))
        is_open = rows["Open"].to_numpy() == 1
        assert is_open.any() and (~is_open).any()
        for col, name in (("served", "yhat"), ("served_lower", "yhat_lower"), ("served_upper", "yhat_upper")):
            np.testing.assert_allclose(rows[col].to_numpy()[is_open], want[name][is_open], rtol=1e-4)
            assert (rows[col].to_numpy()[~is_open] == 0).all()
        assert set(rows["calendar"][is_open]) == {"calendar"}  # the window's known-ahead days were served


def test_the_naive_reference_and_the_window_cut(backtest: tuple[Path, dict, str], sales: pd.DataFrame) -> None:
    out, results, _ = backtest
    for w in results["windows"]:
        rows = rows_of(out, w["window"])
        start = np.datetime64(w["window"])
        assert rows["Date"].min() == pd.Timestamp(start) and len(rows["Date"].unique()) == DAYS
        for r in rows[rows["Open"] == 1].head(20).itertuples():
            hist = sales[(sales["Store"] == r.Store) & (sales["Date"] < pd.Timestamp(start)) & (sales["Open"] == 1)
                         & (sales["Date"].dt.dayofweek == r.Date.dayofweek)]
            assert r.naive == pytest.approx(hist.sort_values("Date")["Sales"].iloc[-1])


def test_lightgbm_sees_no_window_sales(sales: pd.DataFrame, data: Path) -> None:
    """The same forecast when the window's sales change; a different one when the history's do (the check bites)."""
    facts_file = data.with_name("store.csv")
    facts = read_store_facts(facts_file) if facts_file.is_file() else None
    window = Window.parse(WINDOWS[0], DAYS)
    params = {"n_estimators": 60}
    base = lightgbm_rows(cut(sales, window), facts, 2, params)
    inside = (sales["Date"] >= pd.Timestamp(window.start)).to_numpy()
    changed = sales.copy()
    changed.loc[inside, "Sales"] = changed.loc[inside, "Sales"] * 3 + 1000
    changed.loc[inside, "Customers"] = 0
    np.testing.assert_array_equal(lightgbm_rows(cut(changed, window), facts, 2, params), base)
    recent = (sales["Date"] >= pd.Timestamp(window.start) - pd.Timedelta(days=120)).to_numpy() & ~inside
    history = sales.copy()
    history.loc[recent, "Sales"] = history.loc[recent, "Sales"] * 1.5
    moved = lightgbm_rows(cut(history, window), facts, 2, params)
    assert np.isfinite(base).all() and not np.allclose(moved, base)


def test_a_window_outside_the_data_is_one_line(data: Path, tmp_path: Path) -> None:
    import subprocess

    from tests.support import BIN

    proc = subprocess.run([str(BIN / "storecast"), "backtest", "--data", str(data), "--stores", "2", "--window",
                           "2015-07-20", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "window 2015-07-20 .. 2015-08-30 does not lie in the data" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results.json").exists()


def test_stores_the_predictor_would_refuse_are_found_and_dropped(backtest: tuple[Path, dict, str],
                                                                 tmp_path: Path) -> None:
    """The fallback when a predictor refuses a window's version: the refused stores found (its rule), then out."""
    import dataclasses

    from pipelines.backtest.served import drop_stores, implausible_stores

    out = backtest[0]
    table = ParamTable.load(out / WINDOWS[0] / "version" / "params.npz")
    assert implausible_stores(out / WINDOWS[0] / "version") == {}
    best = table.best_day.copy()
    best[2] = 1.0  # the third store's best day was 1: every forecast of it is far above 3x that
    dataclasses.replace(table, best_day=best).save(tmp_path / "params.npz")
    refused = implausible_stores(tmp_path)
    third = str(table.store_id[2])
    assert list(refused) == [third] and f"store {third!r}" in refused[third]
    drop_stores(tmp_path, list(refused))
    left = ParamTable.load(tmp_path / "params.npz")
    assert third not in left.store_id.tolist() and len(left) == len(table) - 1
