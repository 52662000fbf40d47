"""Reloading a protected predictor (issue 23): ``reload_predictors`` and the local rollout's ``LocalTarget`` send
their key as ``x-api-key``; a real predictor with an auth file (no anonymous tier) answers the repository load
only for a key with ``admin``; without a key no header is sent (refused, logged, never raised). No MLflow: a
parameter table in a folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.rollout.controller import LocalTarget
from pipelines.rollout.reload import reload_predictors
from serving.access.auth_file import hash_key
from tests.support import Predictor, random_table

ADMIN, PLANNER = "sc_test-reload-admin", "sc_test-reload-planner"
AUTH = f"""
tiers:
  ops: {{requests_per_second: 10, burst: 20, concurrent: 2, permissions: [forecast, admin]}}
  planner: {{requests_per_second: 10, burst: 20, concurrent: 2, permissions: [forecast]}}
identities:
  - {{name: retrain-service, tier: ops, key_sha256: "{hash_key(ADMIN)}"}}
  - {{name: planner, tier: planner, key_sha256: "{hash_key(PLANNER)}"}}
"""


def test_reloads_carry_the_key_and_need_admin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    random_table(3, seed=2).save(tmp_path / "version" / "params.npz")
    (tmp_path / "auth.yaml").write_text(AUTH)
    p = Predictor(tmp_path / "p.log", ["--model_uri", str(tmp_path / "version"), "--auth-file",
                                       str(tmp_path / "auth.yaml")])
    try:
        p.wait_ready()
        url = f"http://127.0.0.1:{p.http_port}"
        with caplog.at_level(logging.WARNING, "storecast.rollout"):
            assert reload_predictors([url], timeout=30) == {url: 401}
            assert reload_predictors([url], timeout=30, api_key=PLANNER) == {url: 403}
            assert reload_predictors([url], timeout=30, api_key=ADMIN) == {url: 200}
            assert reload_predictors(["http://127.0.0.1:9"], timeout=5, api_key=ADMIN) == {"http://127.0.0.1:9": None}
        said = caplog.text
        assert "no key given" in said and "lacks the admin permission" in said
        assert ADMIN not in said and PLANNER not in said
        LocalTarget(url, (url,), api_key=ADMIN).promote("1")  # the local rollout's reloads carry its key
        LocalTarget(url, api_key=ADMIN).start("1", 10)
        assert p.output().count('"identity":"retrain-service"') == 3  # the reload above, then the target's two
        assert ADMIN not in p.output()
    finally:
        p.stop()
