"""CloudEvents of the pipelines: parsing (binary or structured) and emitting to a sink; the types are
``serving.contract``'s."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from serving.contract import (  # the types are the contract's (defined there only), importable from here too
    CALENDAR_UPDATED,
    MODEL_REGISTERED,
    PING,
    RETRAIN_FAILED,
    RETRAIN_REQUESTED,
    ROLLOUT_PROMOTED,
    ROLLOUT_ROLLEDBACK,
    SALES_APPENDED,
)

__all__ = ["CALENDAR_UPDATED", "MODEL_REGISTERED", "PING", "RETRAIN_FAILED", "RETRAIN_REQUESTED", "ROLLOUT_PROMOTED",
           "ROLLOUT_ROLLEDBACK", "SALES_APPENDED", "SOURCE", "BadEvent", "emit", "event", "parse"]

SOURCE = "storecast.retrain"

log = logging.getLogger("storecast.events")


class BadEvent(ValueError):
    """The request is not a CloudEvent we can act on (answered 400, so Knative does not redeliver it)."""


def parse(headers: dict[str, str], body: bytes) -> CloudEvent:
    """A binary or structured CloudEvent from an HTTP request."""
    try:
        ev = from_http(headers, body)
    except Exception as exc:  # the SDK raises several types for malformed input
        raise BadEvent(f"not a CloudEvent: {exc}") from None
    for attr in ("id", "source"):  # the spec makes source + id unique: both must be there to de-duplicate
        if not str(ev.get(attr) or "").strip():
            raise BadEvent(f"CloudEvent attribute {attr!r} is empty")
    return ev


def event(kind: str, data: dict[str, Any], source: str = SOURCE) -> CloudEvent:
    return CloudEvent({"type": kind, "source": source, "id": uuid.uuid4().hex}, data)


def emit(sink: str | None, ev: CloudEvent, attempts: int = 3, timeout: float = 5.0) -> bool:
    """POST the event (binary mode) to ``sink``; retries with backoff; never raises (logged instead)."""
    if not sink:
        return False
    headers, body = to_binary(ev)
    for attempt in range(attempts):
        try:
            r = httpx.post(sink, headers=headers, content=body, timeout=timeout)
            if r.status_code < 300:
                return True
            log.warning("sink %s answered %s for %s", sink, r.status_code, ev["type"])
        except httpx.HTTPError as exc:
            log.warning("sink %s unreachable for %s: %s", sink, ev["type"], exc)
        time.sleep(0.2 * 2**attempt)
    return False
