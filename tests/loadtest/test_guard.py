"""Load tests cannot change production: Locust's retrain requests reach only a --dry-run retrain service.

Real processes: two retrain services (one --dry-run, one not) on an empty registry, and real Locust runs of
the Refresher users against each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pytest

from loadtest.guard import refusal
from loadtest.runner import run_locust
from tests.support import BIN, send, start_service, stop


@pytest.fixture(scope="module")
def services(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("loadguard")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    dry = start_service(synth_csv, uri, "storecast-load", root, "--dry-run", name="dry")
    real = start_service(synth_csv, uri, "storecast-load", root, name="real")
    assert send(dry.url, {"store_ids": ["1"]}, "warm-up").status_code == 200  # the registry's tables exist
    try:
        yield dry, real, root
    finally:
        stop(dry.proc)
        stop(real.proc)


def counts(out: Path) -> dict[str, int]:
    with open(out / "locust_stats.csv") as fh:
        return {r["Name"]: int(r["Request Count"]) for r in csv.DictReader(fh) if r["Name"] != "Aggregated"}


def test_retrain_requests_go_to_a_dry_run_service_only(services) -> None:
    dry, real, root = services
    assert refusal(dry.url) is None
    assert "not running with --dry-run" in refusal(real.url) and refusal(real.url, allow_writes=True) is None
    assert "cannot tell" in refusal("http://127.0.0.1:9")

    env = {"STORECAST_STORES": "1-3", "STORECAST_RETRAIN_URL": real.url}
    out = run_locust("http://127.0.0.1:9", root / "real", users=2, spawn_rate=2, duration="4s",
                     classes=["Refresher"], env=env, timeout=120)
    # each user checked, was refused (reported as a failure named "retrain refused") and stopped
    assert counts(root / "real") == {"retrain refused": 2} and out.failures == 2
    assert httpx.get(f"{real.url}/jobs").json()["jobs"] == []  # nothing reached it

    env["STORECAST_RETRAIN_URL"] = dry.url
    run_locust("http://127.0.0.1:9", root / "dry", users=2, spawn_rate=2, duration="4s", classes=["Refresher"],
               env=env, timeout=120)
    assert counts(root / "dry")["retrain request"] >= 2  # answered with what it would do
    assert httpx.get(f"{dry.url}/jobs").json()["jobs"] == []


def test_storecast_loadtest_refuses_a_service_that_would_write(services) -> None:
    import subprocess

    _, real, root = services
    proc = subprocess.run([str(BIN / "storecast"), "loadtest", "--host", "http://127.0.0.1:9", "--retrain-url",
                           real.url, "--duration", "2s", "--out", str(root / "refused")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "not running with --dry-run" in proc.stderr and "--allow-writes" in proc.stderr
    assert not (root / "refused").exists()
