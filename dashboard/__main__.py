"""``python -m dashboard``: the dashboard server on ``--host``/``--port`` (127.0.0.1:8070 by default)."""

from __future__ import annotations

import logging
import sys

from dashboard.app import create_app
from dashboard.config import parse
from serving.access.settings import UVICORN_PROXY_OPTIONS
from serving.logs import configure_logging
from serving.mlflow_env import use_mlflow_defaults


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    configure_logging(libraries=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is the access log's job
    use_mlflow_defaults("tools")
    import uvicorn

    from pipelines.data.sales_store import redact  # no URL's credentials or query in the log

    logging.getLogger("storecast.dashboard").info(
        "dashboard on http://%s:%d -> business API %s, retrain %s, registry %s, sales %s", settings.host,
        settings.port, redact(settings.api_url), redact(settings.retrain_url or "-"),
        "yes" if settings.tracking_uri else "-", redact(settings.sales or "-"))
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, **UVICORN_PROXY_OPTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
