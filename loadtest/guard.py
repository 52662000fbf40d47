"""Load tests cannot change production: retrain requests only go to a retrain service in ``--dry-run``.

``refusal(url)`` asks the service's ``/healthz`` (with ``$STORECAST_API_KEY`` when set) whether it runs
``--dry-run`` (it then answers what it would do and registers nothing); unless writes are allowed
explicitly (``storecast loadtest --allow-writes``, ``STORECAST_ALLOW_WRITES=1`` for Locust) anything else
is refused with the reason.
"""

from __future__ import annotations

import os

ALLOW_ENV = "STORECAST_ALLOW_WRITES"


def refusal(url: str, allow_writes: bool | None = None, timeout: float = 10.0) -> str | None:
    """None when retrain requests may be sent to ``url``, else why not."""
    import httpx

    if allow_writes is None:
        allow_writes = os.environ.get(ALLOW_ENV, "") == "1"
    if allow_writes:
        return None
    health = url.rstrip("/") + "/healthz"
    try:
        key = os.environ.get("STORECAST_API_KEY")  # a protected service shows its mode to an authenticated caller
        answer = httpx.get(health, timeout=timeout, headers={"x-api-key": key} if key else {}).json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"cannot tell whether {url} is a dry run ({health}: {exc}); refusing to send retrain requests"
    if answer.get("dry_run") is True:
        return None
    return (f"the retrain service at {url} is not running with --dry-run: a load test would register versions "
            "and move aliases; start it with --dry-run, or pass --allow-writes")
