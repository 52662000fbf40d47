"""The dashboard server's settings: one flag each, every default also readable from ``STORECAST_DASHBOARD_*``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

ENV = "STORECAST_DASHBOARD_"


@dataclass(frozen=True)
class Settings:
    """What ``python -m dashboard`` was told."""

    host: str = "127.0.0.1"
    port: int = 8070
    api_url: str = "http://127.0.0.1:8080"
    retrain_url: str = ""
    model_name: str = "storecast"
    registry_model: str = "storecast"
    alias: str = "champion"
    tracking_uri: str = ""
    sales: str = ""
    registry_refresh_seconds: float = 30.0
    sales_check_seconds: float = 5.0
    timeout_seconds: float = 30.0
    key_ttl_seconds: float = 300.0


def _env(name: str, default: object) -> str:
    return os.environ.get(ENV + name.upper(), str(default))


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m dashboard",
                                description="Serve the storecast dashboard for planners (static pages and a "
                                            "same-origin proxy to the business API and the retrain service).")
    p.add_argument("--host", default=_env("host", d.host), help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(_env("port", d.port)), help="HTTP port")
    p.add_argument("--api-url", default=_env("api_url", d.api_url),
                   help="the transformer (business API) base URL; /api/forecast goes to its V1 predict endpoint")
    p.add_argument("--retrain-url", default=_env("retrain_url", d.retrain_url),
                   help="the retrain service base URL (/api/retrain, /api/jobs/{id}); empty: no refresh button")
    p.add_argument("--model-name", default=_env("model_name", d.model_name),
                   help="served model name in the business API path (/v1/models/NAME:predict)")
    p.add_argument("--registry-model", default=_env("registry_model", d.registry_model),
                   help="registered model name in MLflow (versions, holdout metrics)")
    p.add_argument("--alias", default=_env("alias", d.alias), help="registry alias shown as the current version")
    p.add_argument("--tracking-uri", default=os.environ.get(ENV + "TRACKING_URI")
                   or os.environ.get("MLFLOW_TRACKING_URI", ""),
                   help="MLflow registry (default $MLFLOW_TRACKING_URI); empty: no version or accuracy panel")
    p.add_argument("--sales", default=_env("sales", d.sales),
                   help="the sales store for the recent actuals, as the retrain service reads it (a file path or the "
                        "artifact-proxy URL of its base): base plus appended parts, read again when they change; "
                        "empty: none")
    p.add_argument("--registry-refresh-seconds", type=float,
                   default=float(_env("registry_refresh_seconds", d.registry_refresh_seconds)),
                   help="how often the alias is re-resolved (a new version's metrics are fetched once)")
    p.add_argument("--sales-check-seconds", type=float, default=float(_env("sales_check_seconds",
                                                                          d.sales_check_seconds)),
                   help="at most this often the sales store is asked whether it changed (a new part, a new base)")
    p.add_argument("--timeout-seconds", type=float, default=float(_env("timeout_seconds", d.timeout_seconds)),
                   help="upstream request timeout")
    p.add_argument("--key-ttl-seconds", type=float, default=float(_env("key_ttl_seconds", d.key_ttl_seconds)),
                   help="how long a key the business API accepted may read the dashboard's own data")
    return p


def parse(argv: list[str] | None = None) -> Settings:
    """Settings from flags (and ``STORECAST_DASHBOARD_*`` variables)."""
    args = build_parser().parse_args(argv)
    s = Settings(**{k: v for k, v in vars(args).items()})
    if s.port < 0 or s.port > 65535:
        raise SystemExit(f"--port: {s.port} is not a port number")
    return s
