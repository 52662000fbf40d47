"""MLflow's HTTP client defaults: one table for every process that talks to the registry.

MLflow retries a failing HTTP call 7 times with exponential backoff (minutes) and waits 120 s for an
answer: that would hide a registry outage. Each process sets its role's defaults with
``use_mlflow_defaults(role)`` before it first calls MLflow; a value already in the environment wins.

======== ======= ======= ======= ==================================================================
role     retries backoff timeout why
======== ======= ======= ======= ==================================================================
serving  0       -       20 s    the predictor keeps serving the version it has; its loader retries
                                 with its own backoff and says so in the log
retrain  2       1 s     30 s    a registry outage is a quick 503 and a job retry (``--retries``),
                                 not a request hanging for minutes
tools    MLflow  MLflow  MLflow  the CLI and the dashboard: a person waits, MLflow's retries are fine
======== ======= ======= ======= ==================================================================

In every role artifact downloads draw no progress bar (the output is a log, not a terminal).
"""

from __future__ import annotations

import os

QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
MLFLOW_DEFAULTS: dict[str, dict[str, str]] = {
    "serving": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", **QUIET},
    "retrain": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", **QUIET},
    "tools": dict(QUIET),
}


def use_mlflow_defaults(role: str) -> None:
    """Set ``role``'s MLflow client defaults (``MLFLOW_DEFAULTS``) where the environment does not set them."""
    for name, value in MLFLOW_DEFAULTS[role].items():
        os.environ.setdefault(name, value)
