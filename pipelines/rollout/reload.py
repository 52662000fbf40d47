"""Asking predictors to load their version again now, not at their next refresh.

A predictor that follows an alias (``--model_uri models:/NAME@champion``) re-resolves it on
``POST /v2/repository/models/{model}/load`` (``predictor.repository``). After a ``champion`` move the
retrain service asks its ``--reload-url`` predictors, and a local rollout its canary and champion
predictors; one that cannot be reached, or refuses, is logged and follows at its next refresh. A
protected predictor's repository needs a key with the ``admin`` permission: ``api_key`` is sent as
``x-api-key`` (None: no header; the retrain service's ``--predictor-api-key-file``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from serving.contract import MODEL_NAME

log = logging.getLogger("storecast.rollout")
TIMEOUT = 30.0  # loading a version takes seconds (download, checks), not milliseconds


def reload_predictors(urls: Iterable[str], model: str = MODEL_NAME, timeout: float = TIMEOUT,
                      api_key: str | None = None) -> dict[str, int | None]:
    """``POST .../v2/repository/models/{model}/load`` to each predictor of ``urls`` (with ``api_key`` as
    ``x-api-key`` when given); the HTTP status of each (None: unreachable). Never raises: a failure or a
    refusal is logged (never the key)."""
    import httpx

    headers = {"x-api-key": api_key} if api_key else {}
    statuses: dict[str, int | None] = {}
    for url in urls:
        statuses[url] = None
        try:
            r = httpx.post(f"{url.rstrip('/')}/v2/repository/models/{model}/load", headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            log.warning("reload of %s failed: %s", url, exc)
            continue
        statuses[url] = r.status_code
        if r.status_code in (401, 403):
            why = ("no key given: the predictor wants one with the admin permission (--predictor-api-key-file)"
                   if not api_key else "the key is not in its auth file" if r.status_code == 401
                   else "the key lacks the admin permission there")
            log.warning("reload of %s refused (HTTP %d): %s", url, r.status_code, why)
        elif r.status_code >= 400:
            log.warning("reload of %s failed: HTTP %d %s", url, r.status_code, r.text[:300])
    return statuses
