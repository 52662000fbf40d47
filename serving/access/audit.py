"""Audit: one structured log line per admitted request, sampled lines for refusals, counters for ``/metrics``.

The line (logger ``storecast.audit``, level INFO, the message is one JSON object)::

    {"audit":"request","identity":"alice","tier":"planner","via":"key","route":"/v1/models/storecast:predict",
     "protocol":"rest","status":200,"outcome":"ok","rows":7,"latency_ms":3.1,"peer":"10.0.0.7"}

It never holds a key or a token: ``via`` says how the caller proved who it is (``key``, ``oidc``,
``anonymous``), ``subject`` is the OIDC subject. ``peer`` is the socket's address; ``forwarded`` the client
address a trusted proxy named (``--trusted-proxies``), present only then. Every text field is escaped:
JSON escapes control characters, and characters a log reader could take for a line break (U+2028, NEL, ...)
are written as ``\\u`` escapes too, so a ``%0a`` in a path never starts a line of its own.

Refusals (401, 403, 429, ...) are counted one by one (``storecast_access_refusals_total{reason, protocol}``
and the outcome in ``storecast_access_requests_total``) but written at most once per reason every
``SAMPLE_SECONDS`` (:class:`Sampler`): the line is that refusal's, with ``refusal`` (the reason's code),
``reason`` (its message) and ``held_back`` (refusals of that reason not written since the last line). A flood
of bad keys costs a counter increment each, not a line each. The counters live in prometheus_client's
default registry, which KServe's ``/metrics`` already exports; ``metrics_text()`` renders it for servers
without one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import time
from typing import Any

import orjson
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("storecast.audit")
OUTCOMES = ("ok", "client_error", "server_error", "unauthenticated", "forbidden", "rate_limited",
            "concurrency_limited")
REFUSED = frozenset({"unauthenticated", "forbidden", "rate_limited", "concurrency_limited"})
SAMPLE_SECONDS = 10.0  # at most one refusal line per reason this often
TEXT_CHARS = 300  # of a free-text field (a route, a reason)

REQUESTS = Counter("storecast_access_requests", "Requests by caller tier, outcome and protocol",
                   ["tier", "outcome", "protocol"])
REFUSALS = Counter("storecast_access_refusals", "Refused requests by reason and protocol", ["reason", "protocol"])
LATENCY = Histogram("storecast_access_request_seconds", "Admitted requests' latency by caller tier",
                    ["tier", "protocol"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

_rows: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("storecast_audit_rows", default=None)


def clean(text: str, limit: int = TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, every character that is not printable (control characters, line
    and paragraph separators) as its ``\\x``/``\\u`` escape: one log line stays one line, whatever it quotes."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Sampler:
    """At most one line per key every ``every`` seconds; counts the ones held back in between.

    ``take(key)`` returns None to hold a line back, or the number held back since the key's last line (write
    this one, with that number). Keys are a small fixed set (refusal reasons, statuses); the table is cleared
    if it ever grows past 1,024 of them.
    """

    def __init__(self, every: float = SAMPLE_SECONDS) -> None:
        self.every = every
        self._last: dict[str, list[float | int]] = {}  # key -> [monotonic time of its last line, held back since]
        self._lock = threading.Lock()

    def take(self, key: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            entry = self._last.get(key)
            if entry is not None and now - entry[0] < self.every:
                entry[1] += 1
                return None
            if len(self._last) >= 1024:
                self._last.clear()
            held = int(entry[1]) if entry is not None else 0
            self._last[key] = [now, 0]
            return held


REFUSAL_LINES = Sampler()  # the process's, for callers without their own (one per Access otherwise)


@functools.lru_cache(maxsize=1024)
def _counter(tier: str, outcome: str, protocol: str) -> Any:
    return REQUESTS.labels(tier, outcome, protocol)


@functools.lru_cache(maxsize=256)
def _refusals(reason: str, protocol: str) -> Any:
    return REFUSALS.labels(reason, protocol)


def outcome_of(status: int) -> str:
    """The outcome label of an admitted request's status (HTTP status, or an HTTP-like code for gRPC)."""
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


def record(*, identity: str, tier: str, via: str, route: str, protocol: str, status: int, outcome: str,
           rows: int = 0, latency_s: float = 0.0, peer: str = "", subject: str | None = None,
           reason: str | None = None, refusal: str | None = None, forwarded: str | None = None,
           sampler: Sampler | None = None) -> None:
    """Count the request and write its audit line (a refusal's only when ``sampler`` lets it through).

    ``refusal``: the reason's code of a refusal (``unknown_key``, ``rate_limited``, ...; default: the outcome).
    """
    _counter(tier, outcome, protocol).inc()
    held = 0
    if outcome in REFUSED:
        code = refusal or outcome
        _refusals(code, protocol).inc()
        if not log.isEnabledFor(logging.INFO):
            return
        taken = (sampler or REFUSAL_LINES).take(code)
        if taken is None:
            return
        held = taken
    else:
        LATENCY.labels(tier, protocol).observe(latency_s)
        if not log.isEnabledFor(logging.INFO):
            return
    line: dict[str, Any] = {"audit": "request", "ts": round(time.time(), 3), "identity": clean(identity),
                            "tier": clean(tier), "via": via, "route": clean(route), "protocol": protocol,
                            "status": status, "outcome": outcome, "rows": rows,
                            "latency_ms": round(latency_s * 1000, 3), "peer": clean(peer)}
    if forwarded:
        line["forwarded"] = clean(forwarded)
    if subject:
        line["subject"] = clean(subject)
    if outcome in REFUSED:
        line["refusal"] = refusal or outcome
        line["held_back"] = held
    if reason:
        line["reason"] = clean(reason)
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
