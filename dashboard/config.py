"""The dashboard server's settings: each a flag (``--api-url``) and a variable (``STORECAST_DASHBOARD_API_URL``),
defined once (``serving.settings``; README, "Servers"). ``--tracking-uri`` falls back to ``$MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from serving import settings as base
from serving.contract import MODEL_NAME
from serving.settings import setting, settings_parser

PROG = "python -m dashboard"
DESCRIPTION = ("Serve the storecast dashboard for planners (static pages and a same-origin proxy to the business API "
               "and the retrain service).")


@dataclass(frozen=True)
class Settings(base.Settings):
    """What ``python -m dashboard`` was told."""

    env_prefix = "STORECAST_DASHBOARD_"
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8070, "HTTP port", int)
    api_url: str = setting("http://127.0.0.1:8080", "the transformer (business API) base URL; /api/forecast goes to "
                           "its V1 predict endpoint")
    retrain_url: str = setting("", "the retrain service base URL (/api/retrain, /api/jobs/{id}); empty: no refresh "
                               "button")
    model_name: str = setting(MODEL_NAME, "served model name in the business API path (/v1/models/NAME:predict)")
    registry_model: str = setting(MODEL_NAME, "registered model name in MLflow (versions, holdout metrics)")
    alias: str = setting("champion", "registry alias shown as the current version")
    tracking_uri: str = setting("", "MLflow registry (default $MLFLOW_TRACKING_URI); empty: no version or accuracy "
                                "panel")
    sales: str = setting("", "the sales store for the recent actuals, as the retrain service reads it (a file path or "
                         "the artifact-proxy URL of its base): base plus appended parts, read again when they change; "
                         "empty: none")
    registry_refresh_seconds: float = setting(30.0, "how often the alias is re-resolved (a new version's metrics are "
                                              "fetched once)", float)
    sales_check_seconds: float = setting(5.0, "at most this often the sales store is asked whether it changed (a new "
                                         "part, a new base)", float)
    timeout_seconds: float = setting(30.0, "upstream request timeout", float)
    key_ttl_seconds: float = setting(300.0, "how long a key the business API accepted may read the dashboard's own "
                                     "data", float)


def parse(argv: list[str] | None = None) -> Settings:
    """Settings from flags (and ``STORECAST_DASHBOARD_*`` variables)."""
    parser = settings_parser(Settings, PROG, DESCRIPTION, "dashboard")
    if not os.environ.get(Settings.env_prefix + "TRACKING_URI"):
        parser.set_defaults(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""))
    s = Settings.from_args(parser.parse_args(argv))
    if s.port < 0 or s.port > 65535:
        raise SystemExit(f"--port: {s.port} is not a port number")
    return s
