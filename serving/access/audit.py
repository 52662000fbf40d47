"""Audit: one structured log line per request, and counters by tier and outcome for ``/metrics``.

The line (logger ``storecast.audit``, level INFO, the message is one JSON object)::

    {"audit":"request","identity":"alice","tier":"planner","via":"key","route":"/v1/models/storecast:predict",
     "protocol":"rest","status":200,"outcome":"ok","rows":7,"latency_ms":3.1,"peer":"10.0.0.7"}

It never holds a key or a token: ``via`` says how the caller proved who it is (``key``, ``oidc``,
``anonymous``), ``subject`` is the OIDC subject. Refusals are lines too (``identity`` ``-`` when nobody
was authenticated; ``reason`` says why). The counters live in prometheus_client's default registry, which
KServe's ``/metrics`` already exports; ``metrics_text()`` renders it for servers without one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import time
from typing import Any

import orjson
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("storecast.audit")
OUTCOMES = ("ok", "client_error", "server_error", "unauthenticated", "forbidden", "rate_limited",
            "concurrency_limited")

REQUESTS = Counter("storecast_access_requests", "Requests by caller tier, outcome and protocol",
                   ["tier", "outcome", "protocol"])
LATENCY = Histogram("storecast_access_request_seconds", "Admitted requests' latency by caller tier",
                    ["tier", "protocol"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

_rows: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("storecast_audit_rows", default=None)


@functools.lru_cache(maxsize=1024)
def _counter(tier: str, outcome: str, protocol: str) -> Any:
    return REQUESTS.labels(tier, outcome, protocol)


def outcome_of(status: int) -> str:
    """The outcome label of an admitted request's status (HTTP status, or an HTTP-like code for gRPC)."""
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


def record(*, identity: str, tier: str, via: str, route: str, protocol: str, status: int, outcome: str,
           rows: int = 0, latency_s: float = 0.0, peer: str = "", subject: str | None = None,
           reason: str | None = None) -> None:
    """Count the request and write its audit line."""
    _counter(tier, outcome, protocol).inc()
    if outcome not in ("unauthenticated", "forbidden", "rate_limited", "concurrency_limited"):
        LATENCY.labels(tier, protocol).observe(latency_s)
    if not log.isEnabledFor(logging.INFO):
        return
    line: dict[str, Any] = {"audit": "request", "ts": round(time.time(), 3), "identity": identity, "tier": tier,
                            "via": via, "route": route, "protocol": protocol, "status": status, "outcome": outcome,
                            "rows": rows, "latency_ms": round(latency_s * 1000, 3), "peer": peer}
    if subject:
        line["subject"] = subject
    if reason:
        line["reason"] = reason
    # makeRecord + handle: the same record log.info would make, without its caller lookup (a stack walk)
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, orjson.dumps(line).decode(), None, None,
                              "record"))


def note_rows(n: int) -> None:
    """Add ``n`` forecast rows to the request being served (the audit line's ``rows``); no-op outside one."""
    box = _rows.get()
    if box is not None:
        box[0] += int(n)


def start_rows() -> tuple[list[int], contextvars.Token]:
    """Begin counting rows for the current request (used by ``serving.access.admission.Admission``)."""
    box = [0]
    return box, _rows.set(box)


def reset_rows(token: contextvars.Token) -> None:
    with contextlib.suppress(ValueError):  # finished in another context: nothing to undo
        _rows.reset(token)


def metrics_text() -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition of the default registry."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
