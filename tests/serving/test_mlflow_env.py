"""MLflow's client defaults by role, and its credentials sent only to the tracking server."""

from __future__ import annotations

import os

import pytest

from serving.mlflow_env import MLFLOW_DEFAULTS, http_credentials, use_mlflow_defaults


def test_credentials_go_only_to_the_tracking_servers_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.storecast:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "storecast-writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    url = "http://mlflow.storecast:5000/api/2.0/mlflow-artifacts/artifacts/sales/train.csv.gz"
    assert http_credentials(url) == {"auth": ("storecast-writer", "pw")}
    for elsewhere in ("http://evil.example:5000/x", "http://mlflow.storecast:5001/x", "https://mlflow.storecast:5000/x",
                      "file:///etc/passwd", "/data/sales.csv"):
        assert http_credentials(elsewhere) == {}, elsewhere
    assert http_credentials("http://other:1/", tracking=True) == {"auth": ("storecast-writer", "pw")}
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    assert http_credentials(url) == {"headers": {"authorization": "Bearer t0ken"}}  # a token wins


def test_a_role_sets_only_what_the_environment_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MLFLOW_DEFAULTS["retrain"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    use_mlflow_defaults("retrain")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    retries = MLFLOW_DEFAULTS["retrain"]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == retries
