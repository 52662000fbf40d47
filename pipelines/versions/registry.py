"""MLflow: one run per training job, one registered-model version per fleet snapshot.

A version's files: the parameter table, the stock Prophet models, the per-store metrics, a manifest
(what the version is: stores, data end, fit configuration, failures, and its lineage - the same facts
as its tags, ``pipelines.versions.lineage``) and, when some calendar rows wait for stores not yet trained, those
rows (``pending_calendar.csv.gz``). ``Registry.move_alias`` moves an alias compare-and-set across
processes: under a lock that is a registered model of its own (``<name>.lock.<alias>``; the registry's
unique names let one writer create it), and only if the alias still points where the writer expected.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import socket
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.training.fitting import FitConfig
from pipelines.training.train import TrainResult
from predictor.table import FORMAT as TABLE_FORMAT
from predictor.table import ParamTable
from serving.contract import MANIFEST_FILE, PARAMS_FILE  # the artifact names are the contract's
from serving.contract import MODEL_NAME as DEFAULT_MODEL_NAME
from serving.contract import PROPHET_MODELS_FILE as MODELS_FILE
from serving.contract import STORE_METRICS_FILE as METRICS_FILE

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PENDING_FILE = "pending_calendar.csv.gz"  # calendar rows of stores the version does not hold yet
LOCK_STALE_SECONDS = 60.0  # an alias lock older than this was left by a writer that died: broken
LOCK_WAIT_SECONDS = 60.0  # a writer waits this long for an alias lock before the registry counts as unavailable


@dataclass(frozen=True)
class Registered:
    """Where a training job's snapshot landed."""

    version: str
    run_id: str
    model_uri: str
    model_name: str
    seconds: float = 0.0


@dataclass
class VersionFiles:
    """Everything one model version holds: the table, each store's stock model, metrics and the job summary."""

    table: ParamTable
    models: dict[str, bytes]  # store id -> gzip(model_to_json)
    metrics: pd.DataFrame
    summary: dict[str, Any]
    failed: list[dict[str, str]]
    gate_failed: list[str]
    data_end: str
    config: FitConfig
    lineage: dict[str, str] = field(default_factory=dict)  # pipelines.versions.lineage: tags and manifest
    pending: pd.DataFrame | None = None  # calendar rows of stores not in the version (applied when first fitted)

    @classmethod
    def from_result(cls, result: TrainResult) -> VersionFiles:
        models = {r.store_id: r.model_json_gz for r in result.results if r.model_json_gz is not None and not r.error}
        return cls(result.table, models, result.metrics, result.summary, result.failed, result.gate_failed,
                   result.data_end, result.config)


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite store in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def write_version_files(snap: VersionFiles, folder: Path) -> dict[str, str]:
    """Write the version's files: parameter table, stock Prophet models (zip of gzip JSON), metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    snap.table.save(folder / PARAMS_FILE)
    with zipfile.ZipFile(folder / MODELS_FILE, "w", compression=zipfile.ZIP_STORED) as zf:
        for store_id in snap.table.store_id.tolist():
            zf.writestr(f"{store_id}.json.gz", snap.models[store_id])
    snap.metrics.to_csv(folder / METRICS_FILE, index=False)
    manifest = {
        "format": TABLE_FORMAT,
        "stores": len(snap.table), "data_end": snap.data_end, "fitter": snap.config.fitter,
        "models": f"{MODELS_FILE}: <store_id>.json.gz = gzip(prophet.serialize.model_to_json(model))",
        "summary": snap.summary, "failed": snap.failed, "fit_config": snap.config.to_dict(),
        "lineage": snap.lineage,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=float))
    files = {name: str(folder / f) for name, f in (("params", PARAMS_FILE), ("prophet_models", MODELS_FILE),
                                                    ("store_metrics", METRICS_FILE), ("manifest", MANIFEST_FILE))}
    if snap.pending is not None and len(snap.pending):
        snap.pending.to_csv(folder / PENDING_FILE, index=False, date_format="%Y-%m-%d")
        files["pending_calendar"] = str(folder / PENDING_FILE)
    return files


def prepare(uri: str | None, model_name: str) -> None:
    """Import MLflow and create the store and experiment (sqlite migrations): safe to run while fitting."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(model_name)


class RegistryUnavailable(RuntimeError):
    """The registry did not answer as it should (down, slow, a 5xx): try again later, never assume "none"."""


def is_missing(exc: Exception) -> bool:
    """True when MLflow says the model, version or alias does not exist (not when it failed to answer)."""
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias points at; None only when the model or the alias does not exist.

    Any other failure (connection refused, timeout, 5xx) raises ``RegistryUnavailable``: a caller that
    took it for "no champion" would build a version from nothing.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise RegistryUnavailable(f"registry: alias {name}@{alias}: {exc}") from exc
    except OSError as exc:
        raise RegistryUnavailable(f"registry: alias {name}@{alias}: {exc}") from exc


def current_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or None (no model, no alias); ``RegistryUnavailable`` otherwise."""
    mv = by_alias(client, name, alias)
    return None if mv is None else str(mv.version)


def register(result: TrainResult | VersionFiles, *, uri: str | None = None, model_name: str = DEFAULT_MODEL_NAME,
             alias: str | None = None, parent_version: str | None = None,
             params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
             on_run: Any = None, on_version: Any = None) -> Registered:
    """Log the job as one run and register its snapshot as one model version; then set ``alias``.

    ``parent_version`` defaults to the current champion (lineage); a retrain passes the version it derived from.
    ``tags``: extra version tags. ``on_run(run_id)`` is called once the run exists and ``on_version(version)``
    once the version exists (before any alias): a durable job records them, so a restart can end the run
    as FAILED or mark a version left without its alias.
    """
    import mlflow
    from mlflow import MlflowClient

    import predictor
    from predictor.pyfunc import StorecastPyfunc

    t0 = time.perf_counter()
    snap = result if isinstance(result, VersionFiles) else VersionFiles.from_result(result)
    mlflow.set_tracking_uri(tracking_uri(uri))
    client = MlflowClient()
    if parent_version is None:
        parent_version = current_version(client, model_name, "champion") or ""
    mlflow.set_experiment(model_name)
    summary = {k: v for k, v in snap.summary.items() if isinstance(v, int | float) and np.isfinite(v)}
    cfg = snap.config
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"train-{snap.data_end}") as run:
        if on_run is not None:
            on_run(run.info.run_id)
        files = write_version_files(snap, Path(tmp) / "snapshot")
        mlflow.log_params({"fitter": cfg.fitter, "holdout_days": cfg.holdout_days, "min_days": cfg.min_days,
                           "gate_margin": cfg.gate_margin, "seed": cfg.seed, "data_end": snap.data_end,
                           "parent_version": parent_version,
                           **{f"prophet.{k}": v for k, v in cfg.prophet.items()}, **(params or {})})
        mlflow.log_metrics(summary)
        mlflow.log_artifact(files["store_metrics"])
        mlflow.log_artifact(files["manifest"])
        info = mlflow.pyfunc.log_model(
            name="model", python_model=StorecastPyfunc(), artifacts=files,
            code_paths=[str(Path(predictor.__file__).parent)],
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
                              f"pandas=={_version('pandas')}"],
        )
        version_tags = {"data_end": snap.data_end, "stores": str(len(snap.table)), "fitter": cfg.fitter,
                        "parent_version": parent_version, "run_id": run.info.run_id,
                        "gate_failed": str(len(snap.gate_failed)), **snap.lineage, **(tags or {})}
        version_tags = {k: str(v)[:5000] for k, v in version_tags.items()}
        mv = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
        if on_version is not None:
            on_version(str(mv.version))
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
    return Registered(version=str(mv.version), run_id=run.info.run_id,
                      model_uri=f"models:/{model_name}/{mv.version}", model_name=model_name,
                      seconds=time.perf_counter() - t0)


def download(model_uri: str, dst: str | Path, path: str = "", uri: str | None = None) -> Path:
    """Download a version's files (``path`` under its ``artifacts/`` folder, or all) from the registry ``uri``
    (default: as ``tracking_uri``) and return the path."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    registry = tracking_uri(uri)
    name, _, version = model_uri.removeprefix("models:/").rstrip("/").partition("/")
    if version.isdigit():  # where the files are, asked of this registry (models:/ URIs use the global one)
        root = MlflowClient(registry, registry).get_model_version_download_uri(name, version)
    else:
        root = model_uri
    sub = f"{root.rstrip('/')}/artifacts/{path}" if path else root
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=sub, dst_path=str(dst), tracking_uri=registry))


def prophet_json(model_uri: str, store_id: str) -> str:
    """One store's stock Prophet JSON from a version (``models:/...`` URI or a downloaded folder)."""
    local = Path(model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        if local.exists():
            zpath = next(local.rglob(MODELS_FILE), None)
            if zpath is None:
                raise FileNotFoundError(f"{MODELS_FILE} not found under {model_uri}")
        else:
            zpath = download(model_uri, tmp, MODELS_FILE)
        with zipfile.ZipFile(zpath) as zf:
            try:
                data = zf.read(f"{store_id}.json.gz")
            except KeyError:
                raise KeyError(f"store {store_id!r} is not in {model_uri}") from None
    return gzip.decompress(data).decode()


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


class VersionMissing(LookupError):
    """The registry says this model version does not exist."""


class AliasMoved(RuntimeError):
    """A compare-and-set alias move found the alias somewhere else than expected (another writer moved it)."""

    def __init__(self, alias: str, expected: str | None, current: str | None) -> None:
        super().__init__(f"alias {alias} points at {current or 'nothing'}, not at {expected or 'nothing'} "
                         "as expected: another writer moved it")
        self.alias, self.expected, self.current = alias, expected, current


class Registry:
    """One registered model of one registry, for the services: lookups that tell "none" from "down",
    version tables (the last few cached), downloads, aliases, tags and runs."""

    def __init__(self, uri: str | None = None, model_name: str = DEFAULT_MODEL_NAME, cache: int = 4) -> None:
        self.uri, self.model_name, self.cache = tracking_uri(uri), model_name, cache
        self._tables: dict[str, ParamTable] = {}
        self._metrics: dict[str, pd.DataFrame] = {}

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.uri, self.uri)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args)
        except MlflowException as exc:
            if is_missing(exc):
                raise VersionMissing(f"registry: {what}: {exc}") from exc
            raise RegistryUnavailable(f"registry: {what}: {exc}") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise RegistryUnavailable(f"registry: {what}: {type(exc).__name__}: {exc}") from exc

    def alias(self, alias: str) -> Any | None:
        """The model version ``alias`` points at, None when there is none (``RegistryUnavailable`` when unsure)."""
        return by_alias(self.client, self.model_name, alias)

    def version(self, version: str) -> Any:
        return self._call(f"version {version}", self.client.get_model_version, self.model_name, str(version))

    def table(self, version: str) -> ParamTable:
        """The version's parameter table (downloaded once, then cached)."""
        version = str(version)
        if version not in self._tables:
            with tempfile.TemporaryDirectory() as tmp:
                path = self._call(f"download params of version {version}", download,
                                  f"models:/{self.model_name}/{version}", tmp, PARAMS_FILE, self.uri)
                self._tables[version] = self._call(f"read params of version {version}", ParamTable.load, path)
            while len(self._tables) > self.cache:
                self._tables.pop(next(iter(self._tables)))
        return self._tables[version]

    def store_metrics(self, version: str) -> pd.DataFrame:
        """The version's ``store_metrics.csv`` (per store: holdout errors, gate)."""
        key = f"metrics:{version}"
        if key not in self._metrics:
            with tempfile.TemporaryDirectory() as tmp:
                path = self._call(f"download metrics of version {version}", download,
                                  f"models:/{self.model_name}/{version}", tmp, METRICS_FILE, self.uri)
                self._metrics[key] = pd.read_csv(path, dtype={"store_id": str})
            while len(self._metrics) > self.cache:
                self._metrics.pop(next(iter(self._metrics)))
        return self._metrics[key]

    def download(self, version: str, dst: str | Path) -> Path:
        """The version's ``artifacts/`` folder (every file), downloaded into ``dst``."""
        folder = self._call(f"download version {version}", download, f"models:/{self.model_name}/{version}", dst, "",
                            self.uri)
        return folder / "artifacts" if (folder / "artifacts").is_dir() else folder

    def set_alias(self, alias: str, version: str) -> None:
        self._call(f"set alias {alias}", self.client.set_registered_model_alias, self.model_name, alias, str(version))

    def move_alias(self, alias: str, version: str, expected: str | None) -> None:
        """Point ``alias`` at ``version`` only if it still points at ``expected`` (None: it must not exist), as one
        step against every process sharing this registry; ``AliasMoved`` (with the current version) otherwise."""
        with self.alias_lock(alias):
            current = current_version(self.client, self.model_name, alias)
            if current != (None if expected is None else str(expected)):
                raise AliasMoved(alias, None if expected is None else str(expected), current)
            self.set_alias(alias, version)

    @contextlib.contextmanager
    def alias_lock(self, alias: str, wait: float = LOCK_WAIT_SECONDS,
                   stale: float = LOCK_STALE_SECONDS) -> Iterator[None]:
        """Hold the cross-process lock of ``alias``: the registered model ``<name>.lock.<alias>``, which only one
        writer can create. A lock older than ``stale`` seconds (its writer died) is broken by renaming it to
        ``...broken.<its creation time>``, a name only one breaker can take; it is released (deleted) at the end."""
        from mlflow.exceptions import MlflowException

        client, name = self.client, f"{self.model_name}.lock.{alias}"
        deadline = time.monotonic() + wait
        while True:
            try:
                mine = client.create_registered_model(name, description=f"alias lock held by "
                                                      f"{socket.gethostname()}:{os.getpid()}").creation_timestamp
                break
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS" and time.monotonic() > deadline:
                    raise RegistryUnavailable(f"registry: lock of alias {alias}: {exc}") from exc
            except OSError as exc:
                raise RegistryUnavailable(f"registry: lock of alias {alias}: {exc}") from exc
            with contextlib.suppress(MlflowException, OSError):
                held = client.get_registered_model(name).creation_timestamp
                if time.time() * 1000 - held > stale * 1000:
                    client.rename_registered_model(name, f"{name}.broken.{held}")
                    continue
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"registry: alias {alias} stayed locked by another writer for {wait:.0f} s")
            time.sleep(random.uniform(0.05, 0.2))
        try:
            yield
        finally:
            with contextlib.suppress(MlflowException, OSError):
                if client.get_registered_model(name).creation_timestamp == mine:  # not broken and taken since
                    client.delete_registered_model(name)

    def delete_alias(self, alias: str) -> None:
        with contextlib.suppress(VersionMissing):
            self._call(f"delete alias {alias}", self.client.delete_registered_model_alias, self.model_name, alias)

    def tag(self, version: str, key: str, value: str) -> None:
        self._call(f"tag version {version}", self.client.set_model_version_tag, self.model_name, str(version), key,
                   str(value)[:5000])

    def end_run(self, run_id: str, status: str = "FAILED") -> bool:
        """End a run left RUNNING (a killed job) with ``status``; False when it had ended already."""
        run = self._call(f"run {run_id}", self.client.get_run, run_id)
        if run.info.status != "RUNNING":
            return False
        self._call(f"end run {run_id}", self.client.set_terminated, run_id, status)
        return True

    def register(self, snap: VersionFiles, **kwargs: Any) -> Registered:
        return register(snap, uri=self.uri, model_name=self.model_name, **kwargs)
