"""Operator metrics on ``/metrics`` (Prometheus text, KServe's endpoint and registry).

- ``storecast_requests_total{component, protocol, outcome}``: inference requests by outcome
  (``ok``, ``4xx``, ``shed``, ``5xx``); refusals by a door count as ``4xx``;
- ``storecast_model_info{component, version, data_end}``: 1 for the version being served (the
  transformer: each predictor version it has seen answer lately);
- ``storecast_model_data_end_timestamp_seconds{component}``: the served version's last day of data;
- ``storecast_stores_served{component}``: stores in the served version (the transformer: all shards);
- ``storecast_versions_refused_total{component}``: versions refused by the checks at load;
- ``storecast_version_swaps_total{component}``: versions taken into service.

With ``--workers > 1`` each worker process counts its own requests (Prometheus' default registry).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from prometheus_client import Counter, Gauge

OUTCOMES = ("ok", "4xx", "shed", "5xx")

REQUESTS = Counter("storecast_requests", "Inference requests by outcome", ["component", "protocol", "outcome"])
MODEL_INFO = Gauge("storecast_model_info", "1 for each model version being served",
                   ["component", "version", "data_end"])
DATA_END = Gauge("storecast_model_data_end_timestamp_seconds", "Last day of data of the served version (UTC)",
                 ["component"])
STORES = Gauge("storecast_stores_served", "Stores in the served version", ["component"])
REFUSED = Counter("storecast_versions_refused", "Model versions refused by the checks at load", ["component"])
SWAPS = Counter("storecast_version_swaps", "Model versions taken into service", ["component"])


class Meter:
    """The metrics of one component (its label bound once, so counting is one call)."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._requests = {(p, o): REQUESTS.labels(component, p, o) for p in ("http", "grpc") for o in OUTCOMES}
        self._versions: set[tuple[str, str]] = set()
        REFUSED.labels(component)  # exported at 0 from the start
        SWAPS.labels(component)

    def __reduce__(self) -> tuple:  # rebuilt in each KServe worker process
        return Meter, (self.component,)

    def request(self, protocol: str, status: int) -> None:
        """Count one inference request by its answer's status (``shed`` for 503 overload refusals)."""
        self._requests[protocol, outcome(status)].inc()

    def shed(self, protocol: str) -> None:
        self._requests[protocol, "shed"].inc()

    def serving(self, versions: Iterable[tuple[str, str]], stores: int | None = None) -> None:
        """The versions (version, data_end ISO date) being served now, and the stores served."""
        current = set(versions)
        for gone in self._versions - current:
            MODEL_INFO.remove(self.component, *gone)
        for version, data_end in current:
            MODEL_INFO.labels(self.component, version, data_end).set(1)
        ends = [_timestamp(end) for _, end in current if _timestamp(end) is not None]
        if ends:
            DATA_END.labels(self.component).set(min(ends))
        if stores is not None:
            STORES.labels(self.component).set(stores)
        self._versions = current

    def refused(self) -> None:
        REFUSED.labels(self.component).inc()

    def swapped(self) -> None:
        SWAPS.labels(self.component).inc()


def outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "4xx" if status < 500 else "5xx"


def _timestamp(iso_date: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(iso_date[:10]).replace(tzinfo=dt.UTC).timestamp()
    except (TypeError, ValueError):
        return None
