"""MLflow: one run per training job, one registered-model version per fleet snapshot."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.train import TrainResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_MODEL_NAME = "storecast"
PARAMS_FILE = "params.npz"
MODELS_FILE = "prophet_models.zip"
METRICS_FILE = "store_metrics.csv"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Registered:
    """Where a training job's snapshot landed."""

    version: str
    run_id: str
    model_uri: str
    model_name: str


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite store in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def write_snapshot(result: TrainResult, folder: Path) -> dict[str, str]:
    """Write the version's files: parameter table, stock Prophet models (zip of gzip JSON), metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    result.table.save(folder / PARAMS_FILE)
    with zipfile.ZipFile(folder / MODELS_FILE, "w", compression=zipfile.ZIP_STORED) as zf:
        for r in result.results:
            if r.model_json_gz is not None and not r.error:
                zf.writestr(f"{r.store_id}.json.gz", r.model_json_gz)
    result.metrics.to_csv(folder / METRICS_FILE, index=False)
    manifest = {
        "format": result.table.meta.get("format", "storecast-params/1"),
        "stores": len(result.table), "data_end": result.data_end, "fitter": result.config.fitter,
        "models": f"{MODELS_FILE}: <store_id>.json.gz = gzip(prophet.serialize.model_to_json(model))",
        "summary": result.summary, "failed": result.failed,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=float))
    return {name: str(folder / f) for name, f in (("params", PARAMS_FILE), ("prophet_models", MODELS_FILE),
                                                   ("store_metrics", METRICS_FILE), ("manifest", MANIFEST_FILE))}


def prepare(uri: str | None, model_name: str) -> None:
    """Import MLflow and create the store and experiment (sqlite migrations): safe to run while fitting."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(model_name)


def current_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or None (no model, no alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register(result: TrainResult, *, uri: str | None = None, model_name: str = DEFAULT_MODEL_NAME,
             alias: str | None = None, parent_version: str | None = None,
             params: dict[str, Any] | None = None) -> Registered:
    """Log the job as one run and register its snapshot as one model version; then set ``alias``."""
    import mlflow
    from mlflow import MlflowClient

    import predictor
    from predictor.pyfunc import StorecastPyfunc

    t0 = time.perf_counter()
    mlflow.set_tracking_uri(tracking_uri(uri))
    client = MlflowClient()
    if parent_version is None:
        parent_version = current_version(client, model_name, "champion") or ""
    mlflow.set_experiment(model_name)
    summary = {k: v for k, v in result.summary.items() if isinstance(v, int | float) and np.isfinite(v)}
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"train-{result.data_end}") as run:
        files = write_snapshot(result, Path(tmp) / "snapshot")
        mlflow.log_params({"fitter": result.config.fitter, "holdout_days": result.config.holdout_days,
                           "min_days": result.config.min_days, "gate_margin": result.config.gate_margin,
                           "seed": result.config.seed, "data_end": result.data_end,
                           **{f"prophet.{k}": v for k, v in result.config.prophet.items()}, **(params or {})})
        mlflow.log_metrics(summary)
        mlflow.log_artifact(files["store_metrics"])
        mlflow.log_artifact(files["manifest"])
        info = mlflow.pyfunc.log_model(
            name="model", python_model=StorecastPyfunc(), artifacts=files,
            code_paths=[str(Path(predictor.__file__).parent)],
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
                              f"pandas=={_version('pandas')}"],
        )
        tags = {"data_end": result.data_end, "stores": str(len(result.table)), "fitter": result.config.fitter,
                "parent_version": parent_version, "run_id": run.info.run_id,
                "gate_failed": str(len(result.gate_failed))}
        mv = mlflow.register_model(info.model_uri, model_name, tags=tags)
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
    result.seconds["register"] = time.perf_counter() - t0
    return Registered(version=str(mv.version), run_id=run.info.run_id,
                      model_uri=f"models:/{model_name}/{mv.version}", model_name=model_name)


def download(model_uri: str, dst: str | Path, path: str = "") -> Path:
    """Download a version's files (``path`` under its ``artifacts/`` folder, or all) and return the path."""
    import mlflow.artifacts

    sub = f"{model_uri.rstrip('/')}/artifacts/{path}" if path else model_uri
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=sub, dst_path=str(dst)))


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
