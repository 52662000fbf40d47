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

In every role artifact downloads draw no progress bar (the output is a log, not a terminal). The tools
also keep MLflow's own log to errors (``MLFLOW_LOGGING_LEVEL``): its INFO lines ("Creating initial MLflow
database tables") and notices (CloudPickle) are not the user's business; the CLI says what it did.
"""

from __future__ import annotations

import os
from typing import Any

QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
MLFLOW_DEFAULTS: dict[str, dict[str, str]] = {
    "serving": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", **QUIET},
    "retrain": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", **QUIET},
    "tools": {"MLFLOW_LOGGING_LEVEL": "ERROR", **QUIET},
}


def use_mlflow_defaults(role: str) -> dict[str, str]:
    """Set ``role``'s MLflow client defaults (``MLFLOW_DEFAULTS``) where the environment does not set them;
    returns the variables set here (a process that starts others may take them back out)."""
    added = {name: value for name, value in MLFLOW_DEFAULTS[role].items() if name not in os.environ}
    os.environ.update(added)
    return added


def http_credentials(url: str, *, tracking: bool = False) -> dict[str, Any]:
    """httpx keyword arguments (``auth``, ``headers``, ``verify``) carrying MLflow's client credentials
    (``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``; ``MLFLOW_TRACKING_INSECURE_TLS``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH``) to ``url``: only when ``url`` is the tracking server's (``tracking``, or
    the origin of ``$MLFLOW_TRACKING_URI``), so a sales URL on another host never receives them."""
    env = os.environ
    if not tracking and _origin(url) != _origin(env.get("MLFLOW_TRACKING_URI", "")):
        return {}
    out: dict[str, Any] = {}
    if env.get("MLFLOW_TRACKING_TOKEN"):
        out["headers"] = {"authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        out["auth"] = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        out["verify"] = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        out["verify"] = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    return out


def _origin(url: str) -> tuple[str, str] | None:
    """(scheme, host:port) of an http(s) URL; None for anything else."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{parts.hostname.lower()}:{port}"
