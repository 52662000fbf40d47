"""The sales store: unreadable files named (503, health, failed job), rows validated, MLflow's artifact proxy.

Real processes: the retrain service against a file that turns into garbage, a truncated gzip, nothing,
or a directory; the sales store over a real `mlflow server`'s artifact proxy (the cluster's path).
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.data.sales_csv import read_sales, write_sales
from pipelines.data.sales_store import BadSales, SalesStore, SalesUnavailable, sales_problems, validate_sales
from pipelines.data.synth import synthesize
from tests.support import BIN, send, start_service, stop, wait_job


def _garbage(p: Path, good: bytes) -> None:
    p.write_bytes(b"\x00\xff not a table \x13" * 50)


def _truncated(p: Path, good: bytes) -> None:
    p.write_bytes(good[: len(good) // 2])


def _deleted(p: Path, good: bytes) -> None:
    p.unlink()


def _directory(p: Path, good: bytes) -> None:
    p.unlink()
    p.mkdir()


FAULTS = {"garbage": (_garbage, "not a valid gzip file"), "truncated": (_truncated, "truncated gzip"),
          "deleted": (_deleted, "does not exist"), "directory": (_directory, "is a directory")}


def _restore(p: Path, good: bytes) -> None:
    if p.is_dir():
        p.rmdir()
    p.write_bytes(good)


@pytest.fixture(scope="module")
def sales_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("faults")
    path = write_sales(synthesize(3, seed=4), root / "sales.csv.gz")
    return path, path.read_bytes()


def test_an_unreadable_sales_file_is_a_503_naming_it_and_health_says_so(sales_file, tmp_path: Path) -> None:
    path, good = sales_file
    svc = start_service(path, f"sqlite:///{tmp_path / 'mlflow.db'}", "storecast-faults", tmp_path, "--dry-run")
    try:
        assert httpx.get(f"{svc.url}/healthz").json()["data_source"]["ok"] is True
        for i, (name, (fault, problem)) in enumerate(FAULTS.items()):
            fault(path, good)
            r = send(svc.url, {"store_ids": ["1"]}, f"fault-{name}")
            assert r.status_code == 503, (name, r.text)
            assert str(path) in r.json()["error"] and problem in r.json()["error"], (name, r.json())
            assert r.headers["retry-after"]
            ping = send(svc.url, None, f"ping-{name}", kind="dev.knative.sources.ping")
            assert ping.status_code == 503 and problem in ping.json()["error"]
            health = httpx.get(f"{svc.url}/healthz").json()
            assert health["status"] == "degraded" and health["data_source"]["ok"] is False
            assert problem in health["data_source"]["error"], health
            assert "storecast_sales_source_up 0.0" in httpx.get(f"{svc.url}/metrics").text
            _restore(path, good)
            ok = send(svc.url, {"store_ids": ["1"]}, f"after-{i}")
            assert ok.status_code == 200 and ok.json()["dry_run"] is True, ok.text
            assert httpx.get(f"{svc.url}/healthz").json()["status"] == "ok"
    finally:
        if not path.is_file():
            _restore(path, good)
        stop(svc.proc)


def test_a_file_that_breaks_under_a_job_fails_it_naming_the_file(sales_file, tmp_path: Path) -> None:
    _, good = sales_file
    copy = tmp_path / "sales.csv.gz"
    copy.write_bytes(good)
    svc = start_service(copy, f"sqlite:///{tmp_path / 'mlflow.db'}", "storecast-faults", tmp_path, "--retries", "2",
                        "--retry-seconds", "0.2", env={"STORECAST_FAULT_PAUSE": "fitting:1.5"})
    try:
        r = send(svc.url, {"store_ids": ["1"]}, "breaks-later")
        assert r.status_code == 202 and r.json()["kind"] == "bootstrap"  # no champion: a version of every store
        _truncated(copy, good)
        job = wait_job(svc.url, r.json()["job_id"], timeout=60)
        assert job["status"] == "failed" and str(copy) in job["error"] and "truncated gzip" in job["error"], job
        assert len(job["attempts"]) == 2 and job["attempts"][0]["error"].startswith("SalesUnavailable")
    finally:
        stop(svc.proc)


def test_validation_names_the_rows() -> None:
    df = read_sales_frame()
    assert sales_problems(df) == []
    bad = df.copy()
    open_rows = bad.index[bad["Open"] == 1]
    bad.loc[open_rows[5], "Sales"] = -1e12
    bad.loc[open_rows[6], "Sales"] = np.inf
    bad.loc[open_rows[7], "Sales"] = np.nan
    bad.loc[open_rows[8], "Sales"] = 1e9 + 1
    problems = sales_problems(bad)
    rows = bad.loc[open_rows[5:9]]
    named = [f"Store {s} on {d:%Y-%m-%d}" for s, d in zip(rows["Store"], rows["Date"], strict=True)]
    assert [p.split(":")[0] for p in problems] == named
    assert problems[0].endswith("-1e+12 is negative") and problems[1].endswith("inf is not finite")
    assert problems[2].endswith("missing on an open day") and "is absurd" in problems[3]
    with pytest.raises(BadSales, match="4 bad row"):
        validate_sales(bad)
    # a day after the store's last figure with no sales is a calendar row, not a missing figure
    future = pd.concat([df, df.tail(1).assign(Date=df["Date"].max() + pd.Timedelta(days=1), Sales=np.nan)])
    assert sales_problems(future) == []
    # appended rows are judged against the store's history: 60x its median is absurd
    new = df.tail(1).assign(Date=df["Date"].max() + pd.Timedelta(days=1), Sales=df["Sales"].median() * 60)
    assert "is absurd" in sales_problems(new, reference=df)[0]


def read_sales_frame() -> pd.DataFrame:
    sales = synthesize(2, seed=9)
    sales["Store"] = sales["Store"].astype(str)
    sales["Sales"] = sales["Sales"].astype(float)
    return sales


def test_train_rejects_a_sales_typo_naming_the_row(tmp_path: Path) -> None:
    sales = read_sales_frame()
    i = sales.index[(sales["Store"] == "2") & (sales["Open"] == 1)][-3]
    sales.loc[i, "Sales"] = -1e12
    write_sales(sales, tmp_path / "typo.csv.gz")
    day = f"{sales.loc[i, 'Date']:%Y-%m-%d}"
    proc = subprocess.run([str(BIN / "storecast"), "train", "--data", str(tmp_path / "typo.csv.gz"), "--tracking-uri",
                           f"sqlite:///{tmp_path / 'm.db'}", "--alias", "champion", "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and f"Store 2 on {day}: Sales -1e+12 is negative" in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns").exists()  # nothing fitted, nothing logged


def test_the_sales_store_behind_mlflows_artifact_proxy(mlflow_server: str, tmp_path: Path) -> None:
    """The cluster's sales store: a file behind the artifact proxy, days appended as parts (PUT), read back merged."""
    base = write_sales(read_sales_frame(), tmp_path / "train.csv.gz")
    url = f"{mlflow_server}/api/2.0/mlflow-artifacts/artifacts/sales-test/train.csv.gz"
    assert httpx.put(url, content=base.read_bytes(), timeout=30).status_code == 200
    store = SalesStore(url)
    first = store.load()
    pd.testing.assert_frame_equal(first.frame, read_sales(base))
    last_day = first.frame["Date"].max()
    new = first.frame[first.frame["Date"] == last_day].copy()
    new["Date"] = last_day + pd.Timedelta(days=1)
    correction = first.frame[first.frame["Date"] == last_day].copy()
    correction["Sales"] = correction["Sales"] + 1  # a later row for the same day wins
    part = store.append(pd.concat([new, correction], ignore_index=True))
    assert part.startswith(url + ".parts/part-")
    merged = SalesStore(url).load()
    assert len(merged.frame) == len(first.frame) + len(new)
    assert merged.frame["Date"].max() == last_day + pd.Timedelta(days=1)
    got = merged.frame[merged.frame["Date"] == last_day].set_index("Store")["Sales"]
    assert (got == correction.set_index("Store")["Sales"]).all()
    with pytest.raises(BadSales, match="is negative"):
        store.append(new.assign(Sales=-5.0))
    # a broken part names itself
    bad_part = f"{url}.parts/part-99999999T000000000000Z-broken.csv.gz"
    httpx.put(bad_part, content=gzip.compress(b"x")[:10], timeout=30)
    with pytest.raises(SalesUnavailable, match=r"part-99999999T000000000000Z-broken\.csv\.gz: truncated gzip"):
        SalesStore(url).load()
    with pytest.raises(SalesUnavailable, match="does not exist"):
        SalesStore(f"{mlflow_server}/api/2.0/mlflow-artifacts/artifacts/sales-test/missing.csv.gz").load()


# ---- what a store's messages and its parts folder may hold --------------------------------------------------
def test_a_store_url_is_never_shown_with_its_credentials_or_query(tmp_path: Path) -> None:
    from pipelines.stack import free_port

    url = f"http://planner:s3cret-pass@127.0.0.1:{free_port()}/api/2.0/mlflow-artifacts/artifacts/s.csv.gz?token=tok-77"
    store = SalesStore(url, timeout=2)
    with pytest.raises(SalesUnavailable) as info:
        store.load()
    health = store.health()
    for text in (str(info.value), str(health)):
        assert "s3cret-pass" not in text and "tok-77" not in text and "planner" not in text, text
    assert health["location"] == url.replace("planner:s3cret-pass@", "").split("?")[0]
    assert "127.0.0.1" in str(info.value) and "unreachable" in str(info.value)


def test_only_regular_files_are_parts_of_a_local_store(tmp_path: Path) -> None:
    """A FIFO (which would block a reader for good), a symlink out of the store and a folder in ``.parts/`` are
    left out; the store still loads, without their rows."""
    import os

    base = write_sales(synthesize(2, seed=3, start="2015-01-01", end="2015-03-31"), tmp_path / "s.csv.gz")
    store = SalesStore(str(base))
    rows = pd.DataFrame({"Store": ["1"], "Date": pd.to_datetime(["2015-04-01"]), "Sales": [5000.0], "Open": [1]})
    store.append(rows)
    parts = Path(f"{base}.parts")
    outside = write_sales(rows.assign(Store="2", Sales=6000.0), tmp_path / "outside.csv.gz")
    os.mkfifo(parts / "part-20990101T000000000000Z-fifo.csv.gz")
    (parts / "part-20990101T000000000001Z-link.csv.gz").symlink_to(outside)
    (parts / "part-20990101T000000000002Z-dir.csv.gz").mkdir()
    sales = SalesStore(str(base)).load()  # no hang on the FIFO
    assert len(sales.files) == 2  # the base and the one real part
    last = sales.frame[sales.frame["Date"] == "2015-04-01"]
    assert last["Store"].tolist() == ["1"]  # the symlink's row (store 2) never read
