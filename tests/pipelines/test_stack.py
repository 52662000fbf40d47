"""The business API end to end with real processes: `mlflow server`, predictor(s), transformer."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pipelines.stack import LocalStack
from tests.support import run_cli

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def registry(mlflow_server: str, synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six synthetic stores trained into the real MLflow server, alias champion."""
    run_cli("train", "--data", str(synth_csv), "--tracking-uri", mlflow_server, "--limit", "6", "--alias",
            "champion", "--workers", "1", "--no-progress", cwd=tmp_path_factory.mktemp("train"))
    return mlflow_server


@pytest.fixture(scope="module")
def stack(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    far = ["--max-days-ahead", "10000"]  # the default-dates test asks for today, years after the synthetic data
    with LocalStack("models:/storecast@champion", registry, log_dir=tmp_path_factory.mktemp("logs"),
                    predictor_args=far, transformer_args=far) as s:
        yield s


@pytest.fixture(scope="module")
def sharded(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    far = ["--max-days-ahead", "10000"]  # requests with default dates ask for today
    with LocalStack("models:/storecast@champion", registry, shards=2, log_dir=tmp_path_factory.mktemp("logs2"),
                    predictor_args=far, transformer_args=["--predictor_request_timeout_seconds", "3", *far]) as s:
        yield s


def predict(stack: LocalStack, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{stack.transformer.url}/v1/models/storecast:predict", content=json.dumps(body),
                      headers=headers or JSON, timeout=30)


def test_single_store_window(stack: LocalStack) -> None:
    r = predict(stack, {"instances": [{"storeId": "4", "beginDate": "2015-08-01T00:00:00Z",
                                       "endDate": "2015-08-07T00:00:00Z"}]})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["request"] == {"store_id": "4", "begin_date": "2015-08-01", "end_date": "2015-08-07"}
    assert [row["timestamp"] for row in p["forecast"]] == [f"2015-08-0{d}T00:00:00" for d in range(1, 8)]
    for row in p["forecast"]:  # 2015-08-02 is a Sunday: closed, 0
        assert row["lower"] < row["value"] < row["upper"] if row["open"] else row["value"] == row["upper"] == 0


def test_matches_the_predictor_v2_answer(stack: LocalStack) -> None:
    """What the transformer returns is exactly what the predictor computes for those rows, a closed day 0 (the
    predictor keeps Prophet's number there, beside its open flag)."""
    days = ["2015-08-01", "2015-08-02", "2015-08-03"]  # 08-02 is a Sunday: the synthetic stores are closed
    direct = httpx.post(f"{stack.predictors[0].url}/v2/models/storecast/infer", json={"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [3], "data": ["2", "2", "2"]},
        {"name": "ds", "datatype": "BYTES", "shape": [3], "data": days}], "outputs": [
        {"name": n} for n in ("yhat", "yhat_lower", "yhat_upper", "open")]}, timeout=30).json()
    out = {o["name"]: o["data"] for o in direct["outputs"]}
    assert out["open"] == [1, 0, 1] and out["yhat"][1] != 0
    (p,) = predict(stack, {"instances": [{"store_id": "2", "begin_date": days[0], "end_date": days[-1]}]}
                   ).json()["predictions"]
    for key, name in (("value", "yhat"), ("lower", "yhat_lower"), ("upper", "yhat_upper")):
        assert [r[key] for r in p["forecast"]] == [v if o else 0.0 for v, o in zip(out[name], out["open"],
                                                                                    strict=True)]


def test_days_the_store_is_usually_closed_are_marked(stack: LocalStack, synth_sales) -> None:
    """``open`` follows the store's recent weekday openings (the synthetic stores close on Sundays)."""
    from pipelines.data.sales_csv import weekday_open_rate

    rates = weekday_open_rate(synth_sales[synth_sales["Store"].isin([str(i) for i in range(1, 7)])])
    body = {"instances": [{"storeId": s, "beginDate": "2015-08-03", "endDate": "2015-08-09"} for s in rates]}
    r = predict(stack, body)
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:  # 2015-08-03 is a Monday
        assert [row["open"] for row in p["forecast"]] == (rates[p["request"]["store_id"]] >= 0.5).tolist()
    assert any(not row["open"] for p in r.json()["predictions"] for row in p["forecast"])
    v2 = httpx.post(f"{stack.transformer.url}/v2/models/storecast/infer", json={"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [1], "data": ["1"]},
        {"name": "begin_date", "datatype": "BYTES", "shape": [1], "data": ["2015-08-03"]},
        {"name": "end_date", "datatype": "BYTES", "shape": [1], "data": ["2015-08-09"]}]}, timeout=30).json()
    out = {o["name"]: o["data"] for o in v2["outputs"]}
    assert out["open_rate"] == rates["1"].tolist()


def test_forecast_table_marks_closed_days(stack: LocalStack, tmp_path: Path) -> None:
    out = run_cli("forecast", "--store", "1", "--begin", "2015-08-03", "--end", "2015-08-09", "--url",
                  stack.transformer.url, "--plot", str(tmp_path / "f.png")).stdout
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("2015-08-")}
    assert "usually closed" in lines["Sun"] and "usually closed" not in lines["Mon"]
    assert (tmp_path / "f.png").stat().st_size > 0


def test_many_stores_camel_and_snake_default_dates(stack: LocalStack) -> None:
    r = predict(stack, {"instances": [{"storeId": "3"}, {"store_id": "1", "end_date": "2015-08-02",
                                                         "begin_date": "2015-08-01"}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    today = datetime.now(UTC).date()
    assert first["request"]["begin_date"] == today.isoformat()
    assert first["request"]["end_date"] == (today + timedelta(days=6)).isoformat()
    assert len(first["forecast"]) == 7
    assert second["request"]["store_id"] == "1" and len(second["forecast"]) == 2


def test_v2_long_format(stack: LocalStack) -> None:
    r = httpx.post(f"{stack.transformer.url}/v2/models/storecast/infer", json={"inputs": [
        {"name": "store_id", "datatype": "BYTES", "shape": [2], "data": ["5", "6"]},
        {"name": "begin_date", "datatype": "BYTES", "shape": [2], "data": ["2015-08-01", "2015-09-01"]},
        {"name": "end_date", "datatype": "BYTES", "shape": [2], "data": ["2015-08-02", "2015-09-03"]}]}, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["store_id"]["data"] == ["5", "5", "6", "6", "6"]
    assert out["ds"]["data"] == ["2015-08-01", "2015-08-02", "2015-09-01", "2015-09-02", "2015-09-03"]
    assert out["yhat"]["datatype"] == "FP64" and len(out["yhat_upper"]["data"]) == 5
    assert r.json()["id"]


def test_binary_cloudevent_answered_with_completed_event(stack: LocalStack) -> None:
    headers = {**JSON, "ce-specversion": "1.0", "ce-id": "req-1", "ce-source": "planner",
               "ce-type": "com.storecast.forecast.requested"}
    r = predict(stack, {"instances": [{"storeId": "4", "beginDate": "2015-08-01", "endDate": "2015-08-02"}]},
                headers)
    assert r.status_code == 200, r.text
    assert r.headers["ce-type"] == "com.storecast.forecast.completed"
    assert len(r.json()["predictions"][0]["forecast"]) == 2


@pytest.mark.parametrize("with_time", [True, False])
def test_structured_cloudevent(stack: LocalStack, with_time: bool) -> None:
    """`time` is optional in CloudEvents 1.0 (KServe only unwraps events that carry it)."""
    from cloudevents.conversion import to_structured
    from cloudevents.http import CloudEvent

    event = CloudEvent({"id": "req-2", "source": "planner", "type": "com.storecast.forecast.requested"},
                       {"instances": [{"storeId": "4"}]})
    headers, body = to_structured(event)
    if not with_time:
        doc = json.loads(body)
        del doc["time"]
        body = json.dumps(doc).encode()
    r = httpx.post(f"{stack.transformer.url}/v1/models/storecast:predict", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "com.storecast.forecast.completed"
    assert len(answer["data"]["predictions"][0]["forecast"]) == 7


@pytest.mark.parametrize(("body", "words"), [
    ({"instances": [{"beginDate": "2015-08-01"}]}, "instances[0].storeId"),
    ({"instances": [{"storeId": ""}]}, "instances[0].storeId"),
    ({"instances": [{"storeId": "4", "beginDate": "yesterday"}]}, "instances[0].beginDate"),
    ({"instances": [{"storeId": "4", "beginDate": "2015-08-09", "endDate": "2015-08-01"}]}, "before beginDate"),
    ({"instances": [{"storeId": "4", "beginDate": "2015-01-01", "endDate": "2016-06-01"}]}, "over the limit of 366"),
    ({"instances": [{"storeId": str(i)} for i in range(2001)]}, "over the limit of 2000"),
    ({"instances": {"storeId": "4"}}, "instances"),
    ({"rows": []}, "instances"),
])
def test_bad_requests_get_400_naming_the_field(stack: LocalStack, body: object, words: str) -> None:
    r = predict(stack, body)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def test_unknown_stores_are_named(stack: LocalStack) -> None:
    r = predict(stack, {"instances": [{"storeId": "4"}, {"storeId": "4242"}, {"storeId": "77x"}]})
    assert 400 <= r.status_code < 500, r.text
    assert "4242" in r.json()["error"] and "77x" in r.json()["error"]


def test_two_shards_merge_in_request_order(stack: LocalStack, sharded: LocalStack) -> None:
    ids = ["6", "1", "5", "2", "4", "3"]
    assert len({zlib.crc32(i.encode()) % 2 for i in ids}) == 2  # both shards are involved
    body = {"instances": [{"storeId": i, "beginDate": "2015-07-30", "endDate": "2015-08-02"} for i in ids]}
    one, two = predict(stack, body), predict(sharded, body)
    assert one.status_code == two.status_code == 200, two.text
    assert one.json() == two.json()


def test_shard_down_gives_503_naming_it_not_a_partial_answer(sharded: LocalStack) -> None:
    """Runs last: it kills a shard of the sharded stack."""
    victim = sharded.predictors[1]
    victim.proc.kill()
    victim.proc.wait(timeout=10)
    ids = [i for i in ["1", "2", "3", "4", "5", "6"] if zlib.crc32(i.encode()) % 2 == 1]
    t0 = time.monotonic()
    r = predict(sharded, {"instances": [{"storeId": "1"}, {"storeId": "2"}, {"storeId": ids[0]}]})
    assert time.monotonic() - t0 < 20  # within the configured timeout, not a hang
    assert r.status_code == 503, r.text
    assert "shard 1" in r.json()["error"] and r.headers.get("retry-after")
    alive = [i for i in ["1", "2", "3", "4", "5", "6"] if zlib.crc32(i.encode()) % 2 == 0]
    assert predict(sharded, {"instances": [{"storeId": alive[0]}]}).status_code == 200


def test_cli_errors_are_one_line_without_traceback(stack: LocalStack, tmp_path: Path) -> None:
    """storecast forecast: an unknown store, a server that is down, a bad date: one line, exit 1; --debug shows
    the traceback."""
    import subprocess

    from pipelines.stack import free_port
    from tests.support import BIN

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "storecast"), *args], capture_output=True, text=True, timeout=120)

    down = f"http://127.0.0.1:{free_port()}"
    for args, words in ((["--store", "4242", "--begin", "2015-08-01", "--url", stack.transformer.url], "4242"),
                        (["--store", "4", "--url", down], "Connection refused"),
                        (["--store", "4", "--begin", "2015-02-30", "--url", stack.transformer.url], "beginDate")):
        proc = cli("forecast", *args)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    proc = cli("--debug", "forecast", "--store", "4", "--url", down)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
