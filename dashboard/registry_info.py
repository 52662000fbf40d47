"""Model versions and their per-store holdout metrics, from the MLflow registry, cached.

A background thread re-resolves the alias every ``refresh_seconds``; each version's tags and
``store_metrics.csv`` are fetched once and kept (the last few versions). Requests never wait on the
registry except the first time a version is asked for (a version an answer named but the alias does
not point at, e.g. a canary). An ``mlflow server`` is read over its REST API (MLflow stays out of this
process); other tracking URIs go through MLflow's client.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.contract import store_sort_key

log = logging.getLogger("storecast.dashboard")
METRICS_FILE = "store_metrics.csv"
METRIC_COLUMNS = ("wape", "mape", "rmse", "coverage", "baseline_wape", "holdout_n", "gate", "last_date")
KEEP_VERSIONS = 4


@dataclass
class VersionInfo:
    """What the page shows about a version: its number, data end, creation time and per-store metrics."""

    version: str
    data_end: str = ""
    created: str = ""
    parent: str = ""
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {"version": self.version, "data_end": self.data_end, "created": self.created,
                "parent_version": self.parent, "stores": sorted(self.metrics, key=store_sort_key)}


class RegistryCache:
    """The alias's current version and the versions asked for, each fetched once."""

    def __init__(self, tracking_uri: str, model: str, alias: str, refresh_seconds: float = 30.0) -> None:
        self.uri, self.model, self.alias = tracking_uri, model, alias
        self.refresh_seconds = refresh_seconds
        self.current: str | None = None
        self.error = ""
        self._versions: OrderedDict[str, VersionInfo] = OrderedDict()
        self._failed: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rest = None
        if tracking_uri and _usable(tracking_uri):  # MLflow's own credentials variables apply
            from predictor.mlflow_rest import MlflowRestClient

            self._rest = MlflowRestClient(tracking_uri)

    @property
    def enabled(self) -> bool:
        return bool(self.uri)

    def start(self) -> RegistryCache:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dashboard-registry", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.refresh_seconds)

    def poll(self) -> None:
        """Resolve the alias once; fetch the version's metrics if it is new."""
        try:
            version = self._resolve()
            self.get(version)
            self.current, self.error = version, ""
        except Exception as exc:  # the registry is down or empty: the page says so, serving goes on
            self.error = f"registry: {type(exc).__name__}: {exc}"[:300]
            log.warning("%s", self.error)

    def info(self, version: str | None = None) -> VersionInfo | None:
        """A cached version (the current one by default); None if it is not cached and cannot be fetched now."""
        version = version or self.current
        if not version:
            return None
        try:
            return self.get(version)
        except Exception as exc:
            log.warning("registry: version %s: %s", version, exc)
            return None

    def peek(self) -> dict[str, dict[str, Any]]:
        """The current version's per-store metrics if cached (never waits on the registry), else {}."""
        info = self._versions.get(self.current or "")
        return info.metrics if info else {}

    def get(self, version: str) -> VersionInfo:
        """The version's info, fetched on first use; a failed fetch is not retried for 30 s."""
        with self._lock:
            if version in self._versions:
                self._versions.move_to_end(version)
                return self._versions[version]
            if time.monotonic() - self._failed.get(version, -1e9) < 30:
                raise LookupError(f"version {version} could not be read from the registry just now")
            try:
                info = self._fetch(version)
            except Exception:
                self._failed[version] = time.monotonic()
                raise
            self._versions[version] = info
            while len(self._versions) > KEEP_VERSIONS:
                self._versions.popitem(last=False)
            return info

    # ---- the registry ---------------------------------------------------------------------------
    def _resolve(self) -> str:
        if self._rest is not None:
            answer = self._rest_get("registered-models/alias", name=self.model, alias=self.alias)
            return str(answer["model_version"]["version"])
        from mlflow import MlflowClient

        return str(MlflowClient(self.uri, self.uri).get_model_version_by_alias(self.model, self.alias).version)

    def _fetch(self, version: str) -> VersionInfo:
        with tempfile.TemporaryDirectory(prefix="storecast-dashboard-") as tmp:
            if self._rest is not None:
                mv = self._rest_get("model-versions/get", name=self.model, version=version)["model_version"]
                tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
                created = mv.get("creation_timestamp")
                path = self._rest.download(self.model, version, f"artifacts/{METRICS_FILE}", tmp)
                if path is None:  # files in a store only MLflow's client reads
                    path = self._mlflow_download(version, tmp)
            else:
                from mlflow import MlflowClient

                mv = MlflowClient(self.uri, self.uri).get_model_version(self.model, version)
                tags, created = dict(mv.tags), mv.creation_timestamp
                path = self._mlflow_download(version, tmp)
            metrics = read_metrics(Path(path).read_text())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(created) / 1000)) if created else ""
        log.info("registry: version %s, %d stores, data to %s", version, len(metrics), tags.get("data_end", "?"))
        return VersionInfo(version, tags.get("data_end", ""), stamp, tags.get("parent_version", ""), metrics)

    def _mlflow_download(self, version: str, tmp: str) -> Path:
        from pipelines.versions.registry import download

        return download(f"models:/{self.model}/{version}", tmp, METRICS_FILE, self.uri)

    def _rest_get(self, endpoint: str, **params: str) -> dict[str, Any]:
        r = self._rest.client.get(f"{self.uri.rstrip('/')}/api/2.0/mlflow/{endpoint}", params=params)
        if r.status_code >= 400:
            raise LookupError(f"{endpoint}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()


def read_metrics(text: str) -> dict[str, dict[str, Any]]:
    """``store_metrics.csv`` -> store id -> the columns the page shows (numbers as floats, NaN as None)."""
    out: dict[str, dict[str, Any]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        entry: dict[str, Any] = {}
        for col in METRIC_COLUMNS:
            value = row.get(col, "")
            if col in ("gate", "last_date"):
                entry[col] = value or None
                continue
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            entry[col] = number if math.isfinite(number) else None
        out[row["store_id"]] = entry
    return out


def _usable(uri: str) -> bool:
    from predictor.mlflow_rest import usable

    return usable(uri)
