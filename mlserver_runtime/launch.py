"""``storecast mlserver``: the runtime under a real ``mlserver start``, on loopback, from one command.

:func:`write_folder` writes what MLServer reads: ``settings.json`` (the server: loopback, the ports, inference
in the server process, its metrics files in the folder) and ``models/storecast/model-settings.json`` (the
runtime, the version's URI, adaptive batching). :func:`code_path` puts storecast's packages, and only
them, on MLServer's ``PYTHONPATH``; the packages come from MLServer's own environment
(``mlserver_runtime.environment``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlserver_runtime
import predictor
import serving
from serving.access.settings import is_loopback
from serving.contract import MODEL_NAME

IMPLEMENTATION = "mlserver_runtime.runtime.StorecastRuntime"
MAX_MESSAGE_BYTES = 32 << 20  # the KServe predictor's --max-body-bytes default, for gRPC messages


@dataclass(frozen=True)
class ServerOptions:
    """One MLServer process serving one storecast model."""

    model_uri: str
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082
    max_batch_size: int = 1
    max_batch_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # the runtime's parameters.extra

    def __post_init__(self) -> None:
        if not is_loopback(self.host):
            raise ValueError(f"--host {self.host}: MLServer has no authentication, so `storecast mlserver` listens on "
                             "loopback only; in a cluster the manifests' NetworkPolicies decide who reaches it "
                             "(manifests/seldon, manifests/overlays/mlserver)")


def model_settings(options: ServerOptions) -> dict[str, Any]:
    """MLServer's ``model-settings.json`` of the storecast model."""
    params: dict[str, Any] = {"uri": options.model_uri}
    if options.extra:
        params["extra"] = dict(options.extra)
    return {"name": MODEL_NAME, "implementation": IMPLEMENTATION, "max_batch_size": options.max_batch_size,
            "max_batch_time": options.max_batch_time, "parameters": params}


def server_settings(options: ServerOptions, folder: Path) -> dict[str, Any]:
    """MLServer's ``settings.json``: where it listens, inference in the server process, its files in ``folder``."""
    return {"debug": False, "host": options.host, "http_port": options.http_port, "grpc_port": options.grpc_port,
            "metrics_port": options.metrics_port, "parallel_workers": 0, "load_models_at_startup": True,
            "model_repository_root": str(folder / "models"), "metrics_dir": str(folder / "metrics"),
            "environments_dir": str(folder / "envs"), "grpc_max_message_length": MAX_MESSAGE_BYTES}


def write_folder(folder: Path, options: ServerOptions) -> Path:
    """Write ``settings.json`` and ``models/<name>/model-settings.json`` under ``folder``; returns it."""
    folder = folder.resolve()
    model = folder / "models" / MODEL_NAME
    model.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server_settings(options, folder), indent=2) + "\n")
    (model / "model-settings.json").write_text(json.dumps(model_settings(options), indent=2) + "\n")
    return folder


def code_path(folder: Path) -> Path:
    """A folder holding links to storecast's packages the runtime imports, for MLServer's ``PYTHONPATH``."""
    code = folder / "code"
    code.mkdir(parents=True, exist_ok=True)
    for package in (mlserver_runtime, predictor, serving):
        source = Path(package.__file__).resolve().parent
        link = code / source.name
        if link.is_symlink() or link.exists():
            if link.resolve() == source:
                continue
            link.unlink()
        link.symlink_to(source, target_is_directory=True)
    return code


def environment(folder: Path, tracking_uri: str | None) -> dict[str, str]:
    """The process environment of ``mlserver start``: storecast's code first on the path, the registry."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code_path(folder))
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def command(mlserver: Path, folder: Path) -> list[str]:
    return [str(mlserver), "start", str(folder)]
