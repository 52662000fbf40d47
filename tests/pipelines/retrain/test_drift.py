"""Accuracy watched as actuals arrive: a few stores shift level, those and only those are refitted.

Real processes: a `mlflow server`, the retrain service, `storecast data append` sending the new days
as a com.storecast.sales.appended CloudEvent; the champion is scored on the days after its data. An
event sent first with the id the drift watch would have used (its source, the champion version and
the stores, as earlier releases made it) pre-empts nothing: ids are per sender and unguessable.
"""

from __future__ import annotations

import hashlib
import json
import re

import httpx
from mlflow import MlflowClient

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from tests.support import alias, run_cli, send, start_service, stop, train, versions, wait_job

MODEL = "storecast-drift"
SHIFTED = ("3", "6")


def test_shifted_stores_and_only_those_are_refitted(mlflow_server: str, tmp_path) -> None:
    sales = synthesize(8, seed=5)
    cut = "2015-07-03"
    old, new = sales[sales["Date"] <= cut], sales[sales["Date"] > cut].copy()
    new["Sales"] = new["Sales"].astype(float)
    new.loc[new["Store"].astype(str).isin(SHIFTED), "Sales"] *= 1.7  # a level shift the champion cannot know
    write_sales(old, tmp_path / "train.csv.gz")  # the sales store the service reads and appends to
    write_sales(old, tmp_path / "old.csv.gz")
    write_sales(new, tmp_path / "new.csv")
    first = train(tmp_path / "old.csv.gz", mlflow_server, MODEL, tmp_path)
    svc = start_service(tmp_path / "train.csv.gz", mlflow_server, MODEL, tmp_path)
    try:
        guess = f"drift-{first}-{hashlib.sha256(','.join(SHIFTED).encode()).hexdigest()[:16]}"
        early = send(svc.url, {"store_ids": ["1"]}, guess, source="storecast.drift")  # an up-to-date store
        assert early.status_code == 200 and early.json()["status"] == "up_to_date", early.text
        out = run_cli("data", "append", "--data", str(tmp_path / "new.csv"), "--url", svc.url, cwd=tmp_path)
        answer = json.loads(out.stdout)
        assert answer["appended"] == len(new)
        report = answer["drift"]
        for w in report["worst"]:
            print(f"store {w['store_id']}: {w['days']} days, WAPE {w['wape']:.3f} vs holdout {w['holdout_wape']:.3f}")
        assert sorted(report["drifting"]) == list(SHIFTED), report
        assert {w["store_id"] for w in report["worst"][:2]} == set(SHIFTED)
        assert all(w["days"] == 24 for w in report["worst"])  # open days of the 4 weeks after the champion
        job = wait_job(svc.url, answer["job"]["job_id"])
        assert job["job_id"] != early.json()["job_id"]  # the watch's own job, not the early event's
        assert job["status"] == "done" and job["kind"] == "drift", job
        assert job["result"]["store_ids"] == list(SHIFTED) and job["result"]["promoted"] == "champion"
        new_version = job["result"]["version"]
        assert alias(mlflow_server, MODEL) == new_version and job["result"]["parent_version"] == first
        tags = MlflowClient(mlflow_server).get_model_version(MODEL, new_version).tags
        assert tags["refitted"] == ",".join(SHIFTED) and tags["stores"] == "8"

        metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
        assert re.search(r'storecast_drift_wape\{group="all"\} 0\.\d+', metrics)
        assert re.search(r'storecast_drift_worst_wape\{rank="1",store="[36]"\}', metrics)
        assert 'storecast_retrain_jobs_total{outcome="done"} 1.0' in metrics
        assert re.search(r"storecast_retrain_fit_seconds_count 1\.0", metrics)

        # the refit covers those days: scored afresh, nothing drifts, no second job
        before = versions(mlflow_server, MODEL)
        again = send(svc.url, {"part": "already appended"}, "recheck", kind="com.storecast.sales.appended").json()
        assert again["drift"]["drifting"] == [] and "job" not in again
        assert again["drift"]["version"] == new_version
        assert versions(mlflow_server, MODEL) == before
        # the same event again is recognised (source + id), not appended twice
        dup = send(svc.url, {"part": "already appended"}, "recheck", kind="com.storecast.sales.appended").json()
        assert dup["duplicate"] is True
    finally:
        stop(svc.proc)
