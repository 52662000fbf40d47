"""Load: a short real Locust run against the local stack, and load shedding past capacity."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.runner import run_locust
from pipelines.stack import LocalStack
from serving.shedding import LoadShedder
from tests.support import run_cli

REPO = Path(__file__).resolve().parents[2]
# Locust loads the locustfile by path, as the module "locustfile"; then the Refresher imports its guard
LOAD_BY_PATH = """
import json, sys
from locust.util.load_locustfile import load_locustfile
users, shapes = load_locustfile(sys.argv[1])
from loadtest.guard import refusal
print(json.dumps({"users": sorted(users), "guard": sys.modules[refusal.__module__].__file__,
                  "kserve": "kserve" in sys.modules}))
"""

@pytest.fixture(scope="module")
def registry(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("load")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_cli("train", "--data", str(synth_csv), "--tracking-uri", uri, "--limit", "5", "--alias", "champion",
            "--workers", "1", "--no-progress", cwd=root)
    return uri, root


@pytest.fixture(scope="module")
def stack(registry: tuple[str, Path]) -> Iterator[LocalStack]:
    far = ["--max-days-ahead", "10000"]  # Locust asks for the default window (today), years after the synthetic data
    with LocalStack("models:/storecast@champion", registry[0], log_dir=registry[1] / "logs",
                    predictor_args=far, transformer_args=far) as s:
        yield s


@pytest.fixture
def tight(registry: tuple[str, Path]) -> Iterator[LocalStack]:
    """A stack whose transformer serves at most two inference requests at once."""
    with LocalStack("models:/storecast@champion", registry[0], log_dir=registry[1] / "logs-tight",
                    predictor_args=["--max-days-ahead", "10000"],
                    transformer_args=["--max-inflight", "2", "--max-days-ahead", "10000"]) as s:
        yield s


def test_short_locust_run_writes_reports_and_plot(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "results"
    summary = run_locust(stack.transformer.url, out, users=6, spawn_rate=6, duration="6s",
                         classes=["Planner", "Service", "Event"],
                         env={"STORECAST_STORES": "1-5", "STORECAST_USER_RPS": "2",
                              "STORECAST_PREDICTOR_URL": stack.predictors[0].url}, timeout=120)
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html", "loadtest.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "locust_stats.csv") as fh:
        names = {r["Name"] for r in csv.DictReader(fh)}
    assert {"business one store", "predictor v2 week", "forecast cloudevent"} <= names
    assert summary.requests > 10 and summary.success_rps > 1
    assert summary.failures == 0 and summary.timeouts == 0  # 6 users at 2 req/s is far below capacity
    assert summary.p99_ms > summary.p50_ms > 0


def test_locust_runs_the_locustfile_of_a_checkout(tmp_path: Path) -> None:
    """``locust -f loadtest/locustfile.py`` in a checkout, and from any folder by its path: the users, the guard
    beside it, no KServe."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no help from the caller's path
    listed = subprocess.run([sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--list"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert {"Planner", "Service", "Event", "Refresher"} <= set(listed.stdout.split()), listed.stdout
    probe = subprocess.run([sys.executable, "-c", LOAD_BY_PATH, str(REPO / "loadtest" / "locustfile.py")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert {"Planner", "Service", "Event", "Refresher"} <= set(found["users"]) and not found["kserve"], found
    assert Path(found["guard"]).parent.name == "loadtest" and Path(found["guard"]).name == "guard.py", found


def test_past_max_inflight_requests_get_503_with_retry_after(tight: LocalStack) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as client:
            body = {"instances": [{"storeId": "3", "beginDate": "2015-01-01", "endDate": "2015-12-31"}]}
            return await asyncio.gather(*(client.post(f"{tight.transformer.url}/v1/models/storecast:predict",
                                                      json=body) for _ in range(40)))

    answers = asyncio.run(burst())
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 1, codes
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.headers["retry-after"] == "1" and "overloaded" in shed.json()["error"]
    # probes are never shed
    assert httpx.get(f"{tight.transformer.url}/v2/models/storecast/ready").status_code == 200


def test_shedder_bounds_in_flight_requests() -> None:
    """Deterministic: one request held inside the app, the limit 1 -> the next is shed, then served."""
    release = asyncio.Event()

    async def app(scope: dict, receive: object, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def call(shedder: LoadShedder, method: str = "POST", path: str = "/v1/models/m:predict") -> int:
        sent: list[dict] = []

        async def send(msg: dict) -> None:
            sent.append(msg)

        await shedder({"type": "http", "method": method, "path": path}, None, send)
        return sent[0]["status"]

    async def scenario() -> list[int]:
        shedder = LoadShedder(app, limit=1)
        held = asyncio.create_task(call(shedder))
        await asyncio.sleep(0.01)
        second = await call(shedder)
        release.set()
        return [await held, second, await call(shedder), shedder.shed, shedder.inflight]

    assert asyncio.run(scenario()) == [200, 503, 200, 1, 0]
