"""Asking predictors to load their version again now, not at their next refresh.

A predictor that follows an alias (``--model_uri models:/NAME@champion``) re-resolves it on
``POST /v2/repository/models/{model}/load`` (``predictor.repository``). After a ``champion`` move the
retrain service asks its ``--reload-url`` predictors, and a local rollout its canary and champion
predictors; one that cannot be reached is logged and follows at its next refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from serving.contract import MODEL_NAME

log = logging.getLogger("storecast.rollout")
TIMEOUT = 30.0  # loading a version takes seconds (download, checks), not milliseconds


def reload_predictors(urls: Iterable[str], model: str = MODEL_NAME, timeout: float = TIMEOUT) -> None:
    """``POST .../v2/repository/models/{model}/load`` to each predictor of ``urls``; never raises (logged)."""
    import httpx

    for url in urls:
        try:
            httpx.post(f"{url.rstrip('/')}/v2/repository/models/{model}/load", timeout=timeout)
        except httpx.HTTPError as exc:
            log.warning("reload of %s failed: %s", url, exc)
