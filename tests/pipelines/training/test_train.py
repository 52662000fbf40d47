"""Training: parallel fits, evaluation and gate, one MLflow version per snapshot, pyfunc and export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prophet.serialize import model_from_json

from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.training.evaluate import Gate, error_sums, scores, seasonal_naive
from pipelines.training.fitting import FitConfig
from pipelines.training.train import train
from predictor.forecast import forecast
from predictor.table import ParamTable
from tests.support import days_of, run_cli, shared_rossmann, stock_forecast


@pytest.fixture(scope="module")
def trained(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`storecast train --json` of the 20 synthetic stores plus one with too little data, into sqlite."""
    root = tmp_path_factory.mktemp("registry")
    sales = read_sales(synth_csv)
    tiny = sales[sales["Store"] == "1"].head(12).assign(Store="999")
    data = write_sales(pd.concat([sales, tiny]), root / "sales.csv")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = run_cli("train", "--data", str(data), "--tracking-uri", uri, "--alias", "champion", "--json",
                  "--workers", "2", cwd=root)
    return {"uri": uri, "root": root, "out": json.loads(out.stdout), "stderr": out.stderr}


@pytest.fixture(autouse=True)
def _tracking(trained: dict):
    """Every test here talks to the sqlite registry unless it sets another."""
    mlflow.set_tracking_uri(trained["uri"])
    yield
    mlflow.set_tracking_uri(None)


def test_json_summary_names_version_stores_and_failures(trained: dict) -> None:
    out = trained["out"]
    assert out["model_uri"] == f"models:/storecast/{out['version']}"
    assert out["stores"] == 20
    assert [f["store_id"] for f in out["failed"]] == ["999"]
    assert "too little data" in out["failed"][0]["reason"]
    assert set(out["seconds"]) >= {"fit", "register", "total"}
    assert out["metrics"]["stores_evaluated"] == 20
    # the model beats the seasonal-naive baseline on seasonal synthetic data
    assert out["metrics"]["holdout_wape"] < out["metrics"]["baseline_wape"]
    assert 0.85 < out["metrics"]["holdout_coverage"] <= 1.0
    assert "fit: 100%" in trained["stderr"]  # the progress bar ran to the end


def test_version_alias_tags_and_run(trained: dict) -> None:
    client = MlflowClient()
    version = trained["out"]["version"]
    mv = client.get_model_version_by_alias("storecast", "champion")
    assert str(mv.version) == version
    assert mv.tags["stores"] == "20"
    assert mv.tags["fitter"] == "prophet-batch"
    assert mv.tags["data_end"] == "2015-07-31"
    assert mv.tags["parent_version"] == ""
    run = client.get_run(trained["out"]["run_id"])
    assert run.data.params["holdout_days"] == "42"
    assert run.data.metrics["stores"] == 20
    assert abs(run.data.metrics["holdout_wape"] - trained["out"]["metrics"]["holdout_wape"]) < 1e-6
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"store_metrics.csv", "manifest.json"}


def test_version_holds_every_store(trained: dict, tmp_path: Path) -> None:
    from pipelines.versions.registry import download

    folder = download(trained["out"]["model_uri"], tmp_path)
    files = {p.name for p in (folder / "artifacts").iterdir()}
    assert files >= {"params.npz", "prophet_models.zip", "store_metrics.csv", "manifest.json"}
    table = ParamTable.load(folder / "artifacts" / "params.npz")
    assert sorted(table.store_id.tolist(), key=int) == [str(i) for i in range(1, 21)]
    with zipfile.ZipFile(folder / "artifacts" / "prophet_models.zip") as zf:
        assert len(zf.namelist()) == 20
    metrics = pd.read_csv(folder / "artifacts" / "store_metrics.csv", dtype={"store_id": str})
    assert set(metrics["store_id"]) == {*(str(i) for i in range(1, 21)), "999"}
    assert set(metrics["gate"].dropna()) <= {"pass", "fail", "n/a"}


def test_pyfunc_round_trip_matches_stock_prophet(trained: dict, tmp_path: Path) -> None:
    """The pyfunc flavour and `storecast export` agree with stock Prophet on the same model."""
    model = mlflow.pyfunc.load_model(trained["out"]["model_uri"])
    ds = pd.date_range("2015-06-01", "2015-09-30", freq="D")
    frame = pd.DataFrame({"store_id": ["7"] * len(ds), "ds": ds.strftime("%Y-%m-%d")})
    got = model.predict(frame)
    assert list(got.columns) == ["yhat", "yhat_lower", "yhat_upper", "open", "promo"]
    assert (got["yhat_lower"] < got["yhat"]).all() and (got["yhat"] < got["yhat_upper"]).all()

    out = tmp_path / "store7"
    run_cli("export", "--model-uri", trained["out"]["model_uri"], "--store", "7", "--begin", "2015-06-01",
            "--end", "2015-09-30", "--out", str(out), env={"MLFLOW_TRACKING_URI": trained["uri"]})
    stock = model_from_json((out / "7.json").read_text())
    about = json.loads((out / "7_export.json").read_text())
    want = stock.predict(pd.read_csv(out / "7_future.csv", parse_dates=["ds"]))["yhat"].to_numpy()
    want = np.expm1(want) if about["transform"] == "log1p" else want
    np.testing.assert_allclose(got["yhat"].to_numpy(), want, rtol=1e-6)
    served = pd.read_csv(out / "7_served.csv")
    np.testing.assert_allclose(served["yhat"].to_numpy(), want, rtol=1e-6)


def test_pyfunc_takes_a_what_if(trained: dict) -> None:
    model = mlflow.pyfunc.load_model(trained["out"]["model_uri"])
    frame = pd.DataFrame({"store_id": ["7"] * 3, "ds": ["2015-08-04", "2015-08-05", "2015-08-06"]})
    base = model.predict(frame)
    what_if = model.predict(frame.assign(promo=[1, 1, None], closed=[None, None, 1]))
    assert (what_if["yhat"][:2].to_numpy() > base["yhat"][:2].to_numpy()).all() and what_if["promo"][:2].all()
    assert not what_if["open"][2]
    with pytest.raises(ValueError, match="'promo' must hold 0, 1"):
        model.predict(frame.assign(promo=[2, 0, 0]))


def test_unknown_store_in_pyfunc_is_named(trained: dict) -> None:
    model = mlflow.pyfunc.load_model(trained["out"]["model_uri"])
    with pytest.raises(KeyError, match="'4242'"):
        model.predict(pd.DataFrame({"store_id": ["1", "4242"], "ds": ["2015-08-01", "2015-08-01"]}))


def test_training_through_a_real_mlflow_server(mlflow_server: str, synth_csv: Path, tmp_path: Path) -> None:
    out = json.loads(run_cli("train", "--data", str(synth_csv), "--tracking-uri", mlflow_server, "--limit", "4",
                             "--alias", "challenger", "--json", "--workers", "1", cwd=tmp_path).stdout)
    assert out["stores"] == 4
    client = MlflowClient(tracking_uri=mlflow_server)
    assert str(client.get_model_version_by_alias("storecast", "challenger").version) == out["version"]
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/storecast@challenger")
    got = model.predict(pd.DataFrame({"store_id": ["1", "4"], "ds": ["2015-08-03", "2015-08-03"]}))
    assert got["yhat"].notna().all()
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store


def test_stock_prophet_fitter_is_selectable(synth_sales: pd.DataFrame) -> None:
    cfg = FitConfig(fitter="prophet")
    result = train(synth_sales, cfg, limit=2, workers=1, progress=False)
    assert len(result.table) == 2 and result.config.fitter == "prophet"
    assert np.isfinite(result.summary["holdout_wape"])


def test_gate_and_baseline_arithmetic() -> None:
    # Mon..Sun of a training week, then the next Monday and Tuesday
    days = np.arange(16436, 16443)  # 2015-01-05 (Monday) .. 2015-01-11
    y = np.array([10.0, 20, 30, 40, 50, 60, 0])
    assert seasonal_naive(days, y, np.array([16443, 16444])).tolist() == [10.0, 20.0]
    s = scores(error_sums(np.array([100.0, 0.0, 50.0]), np.array([90.0, 5.0, 60.0])))
    assert s["wape"] == pytest.approx(25 / 150)
    assert s["mape"] == pytest.approx((0.1 + 0.2) / 2)  # zero actuals are left out of MAPE
    gate = Gate(margin=0.1)
    assert gate(0.20, 0.19) == "pass" and gate(0.22, 0.19) == "fail" and gate(float("nan"), 0.2) == "n/a"


@pytest.mark.skipif(shared_rossmann() is None, reason="real Rossmann data not found beside the repository")
def test_real_stores_export_reproduces_holdout_metrics() -> None:
    """Holdout metrics of the pipeline = stock Prophet on the exported JSON of a fit on the same history.

    Stores 1, 13 (2014 H2 gap) and 103 (closed 185 days in 2013).
    """
    sales = read_sales(shared_rossmann())
    stores = ["1", "13", "103"]
    sales = sales[sales["Store"].isin(stores)]
    cfg = FitConfig()
    first = train(sales, cfg, workers=1, progress=False)
    assert len(first.table) == 3
    # the evaluation fit saw each store's open days up to its last open day minus the holdout
    opened = sales[sales["Open"] == 1]
    cut = opened.groupby("Store")["Date"].transform("max") - pd.Timedelta(days=cfg.holdout_days)
    # the holdout's calendar stays known (Sales emptied: calendar rows), as it was for the evaluation fit
    history = sales.assign(Sales=sales["Sales"].where(
        sales["Date"] <= sales["Store"].map(opened.groupby("Store")["Date"].max()
                                            - pd.Timedelta(days=cfg.holdout_days))))
    second = train(history, cfg, workers=1, progress=False)
    for r in second.results:
        stock = model_from_json(_json(r.model_json_gz))
        test = opened[(opened["Store"] == r.store_id) & (opened["Date"] > cut)]
        pred = stock_forecast(stock, second.table, r.store_id, days_of(test["Date"]))["yhat"]
        want = scores(error_sums(test["Sales"].to_numpy(float), pred))
        got = first.metrics.set_index("store_id").loc[r.store_id]
        assert got["wape"] == pytest.approx(want["wape"], rel=1e-6)
        assert got["rmse"] == pytest.approx(want["rmse"], rel=1e-6)
    assert first.summary["holdout_wape"] < first.summary["baseline_wape"]


def _json(blob: bytes) -> str:
    import gzip

    return gzip.decompress(blob).decode()


def test_table_survives_save_load_and_shards(trained: dict, tmp_path: Path) -> None:
    from pipelines.versions.registry import download

    table = ParamTable.load(download(trained["out"]["model_uri"], tmp_path, "params.npz"))
    parts = [table.shard(k, 3) for k in range(3)]
    assert sum(len(p) for p in parts) == len(table)
    assert set().union(*(set(p.store_id.tolist()) for p in parts)) == set(table.store_id.tolist())
    rows = table.index(np.array(["5"] * 3))
    sub = parts[[("5" in p.store_id.tolist()) for p in parts].index(True)]
    days = np.array([16600, 16650, 16700])
    np.testing.assert_array_equal(forecast(table, rows, days)[0], forecast(sub, sub.index(np.array(["5"] * 3)),
                                                                            days)[0])


def test_a_header_only_sales_file_fails_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.support import BIN

    data = tmp_path / "header.csv"
    data.write_text("Store,DayOfWeek,Date,Sales,Customers,Open,Promo,StateHoliday,SchoolHoliday\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([str(BIN / "storecast"), "train", "--data", str(data), "--tracking-uri", uri, "--alias",
                           "champion", "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["train failed: nothing to train on: the sales data has no rows"]
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(uri).search_model_versions("name='storecast'")


def test_stores_without_open_day_sales_are_listed_not_dropped(tmp_path: Path) -> None:
    """A store whose sales are all empty (2), or empty on every open day (3): failed with the reason, in the
    CLI's answer, the version's tags and its manifest; the other stores are served."""
    from pipelines.data.synth import synthesize
    from pipelines.versions.registry import download

    sales = synthesize(3, seed=25, start="2014-06-01", end="2015-07-31")
    sales.loc[sales["Store"] == 2, "Sales"] = np.nan
    sales.loc[(sales["Store"] == 3) & (sales["Open"] == 1), "Sales"] = np.nan
    data = write_sales(sales, tmp_path / "sales.csv")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_cli("train", "--data", str(data), "--tracking-uri", uri, "--model", "seed", "--alias", "champion",
                  "--workers", "1", "--no-progress", cwd=tmp_path)
    assert "skipped store 2: no open-day sales" in out.stdout and "skipped store 3: no open-day sales" in out.stdout
    mv = MlflowClient(uri).get_model_version_by_alias("storecast", "champion")
    assert mv.tags["stores"] == "1" and "2: no open-day sales" in mv.tags["failed"]
    assert "3: no open-day sales" in mv.tags["failed"]
    manifest = json.loads(download(f"models:/storecast/{mv.version}", tmp_path / "v", "manifest.json", uri=uri)
                          .read_text())
    assert [f["store_id"] for f in manifest["failed"]] == ["2", "3"] and manifest["summary"]["stores_skipped"] == 2
