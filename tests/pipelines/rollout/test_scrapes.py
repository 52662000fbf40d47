"""A missed metrics scrape never rolls back a healthy canary; a sustained failure does.

The rollout runs as the retrain service runs it (``Rollout`` with a ``LocalTarget``, a sqlite MLflow
registry) against a real HTTP server on loopback standing in for the challenger predictor: it is
ready, serves version 2 and shows clean traffic on ``/metrics``, except for the reads told to fail.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from pipelines.rollout.controller import LocalTarget, Rollout, RolloutPolicy
from pipelines.versions.registry import Registry
from tests.support import LoopbackServer, QuietHandler


class CanaryPredictor(LoopbackServer):
    """``/v2/models/storecast/ready`` and ``/metrics`` (40 more clean requests each read); the reads whose
    number is in ``fail`` (1-based, counting every /metrics read) answer 503, as do all from ``fail_from``."""

    def __init__(self, fail: set[int] = frozenset(), fail_from: int | None = None) -> None:
        self.reads, self.failed = 0, 0
        me = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    me.reads += 1
                    if me.reads in fail or (fail_from is not None and me.reads >= fail_from):
                        me.failed += 1
                        return self._send(503, b"scrape failed")
                    n = 40 * me.reads
                    return self._send(200, (
                        f'storecast_requests_total{{component="predictor",outcome="ok",protocol="rest"}} {n}\n'
                        f'request_predict_seconds_bucket{{le="0.005",model_name="storecast"}} {n}\n'
                        f'request_predict_seconds_bucket{{le="+Inf",model_name="storecast"}} {n}\n'
                        'storecast_model_info{version="2"} 1\n').encode())
                return self._send(200 if self.path == "/v2/models/storecast/ready" else 404, b"{}")

            def do_POST(self) -> None:  # /v2/repository/models/storecast/load
                self._send(200, b"{}")

        self.serve(Handler)


def rollout(tmp_path: Path, predictor: CanaryPredictor) -> tuple[dict, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("storecast")
    client.create_model_version("storecast", source=str(tmp_path))
    client.create_model_version("storecast", source=str(tmp_path), tags={"parent_version": "1"})
    client.set_registered_model_alias("storecast", "champion", "1")
    client.set_registered_model_alias("storecast", "challenger", "2")
    policy = RolloutPolicy(steps=(10, 50), watch_seconds=1.0, poll_seconds=0.1, ready_timeout=10, min_requests=20,
                           max_missed_scrapes=3)
    try:
        return Rollout(Registry(uri), LocalTarget(predictor.url), policy).run("2", "job-1"), client
    finally:
        predictor.close()


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias("storecast", "champion").version)


def test_one_missed_scrape_is_retried_and_the_canary_promoted(tmp_path: Path) -> None:
    predictor = CanaryPredictor(fail={4, 9})  # one scrape in the first step, another later, never two in a row
    doc, client = rollout(tmp_path, predictor)
    assert predictor.failed == 2
    assert doc["status"] == "promoted", doc
    missed = [r for r in doc["timeline"] if r["event"] == "scrape_missed"]
    assert len(missed) == 2 and all(r["missed"] == 1 and "503" in r["error"] for r in missed)
    assert [r["percent"] for r in doc["timeline"] if r["event"] == "passed"] == [10, 50]
    assert champion(client) == "2" and client.get_model_version("storecast", "2").tags["rollout"] == "promoted"


def test_metrics_that_stay_unreadable_roll_the_canary_back(tmp_path: Path) -> None:
    predictor = CanaryPredictor(fail_from=3)  # ready, the step's first reading, then nothing
    doc, client = rollout(tmp_path, predictor)
    assert doc["status"] == "rolledback", doc
    assert doc["reason"].startswith("step 10%: the canary's metrics could not be read 3 times in a row"), doc
    assert [r["missed"] for r in doc["timeline"] if r["event"] == "scrape_missed"] == [1, 2, 3]
    assert champion(client) == "1"
    assert "could not be read" in client.get_model_version("storecast", "2").tags["rollout_reason"]
