"""A small MLflow REST client: the few calls the predictor needs, for a registry behind an ``mlflow server``.

Resolving an alias every ``--refresh-seconds`` through MLflow's Python client means importing MLflow
into the serving process: about 35 MB resident (80 MB with a sqlite store) and a second of CPU
under the GIL while requests are being served. For an ``http(s)://`` tracking URI (how storecast is
deployed) these are plain GETs of MLflow's public REST API instead:

- ``GET /api/2.0/mlflow/registered-models/alias``, ``.../model-versions/get``, ``.../model-versions/search``
  name the version;
- ``GET /api/2.0/mlflow/model-versions/get-download-uri`` says where its files are: behind the
  server's artifact proxy (``mlflow-artifacts:/...``, fetched from
  ``/api/2.0/mlflow-artifacts/artifacts/...``) or on a path this machine can read.

Credentials come from MLflow's own variables (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``,
``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``).
Anything else (other artifact stores, auth plugins, non-HTTP registries) is left to MLflow's client:
:func:`usable` says which.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from serving.mlflow_env import http_credentials

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


class MlflowRestError(RuntimeError):
    """The registry answered with an error (the message is MLflow's)."""


def usable(tracking_uri: str) -> bool:
    """Whether this module can talk to the registry (else use MLflow's client)."""
    return tracking_uri.startswith(("http://", "https://")) and not os.environ.get("MLFLOW_TRACKING_AUTH")


class MlflowRestClient:
    """An ``mlflow server`` reached over its REST API."""

    def __init__(self, tracking_uri: str) -> None:
        self.base = tracking_uri.rstrip("/")
        self.client = httpx.Client(**http_credentials(self.base, tracking=True), follow_redirects=True,
                                   timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")))

    # ---- versions -------------------------------------------------------------------------------
    def alias(self, name: str, alias: str) -> str:
        """The version ``name@alias`` points at."""
        return self._version(self._get("registered-models/alias", name=name, alias=alias))

    def version(self, name: str, version: str) -> str:
        """``version`` itself, once the registry confirms it exists."""
        return self._version(self._get("model-versions/get", name=name, version=version))

    def latest(self, name: str) -> str:
        """The newest version of ``name``."""
        found = self._get("model-versions/search", filter=f"name = '{name}'", order_by="version_number DESC",
                          max_results=1).get("model_versions") or []
        if not found:
            raise LookupError(f"registered model {name!r} has no version")
        return str(found[0]["version"])

    # ---- files ----------------------------------------------------------------------------------
    def download(self, name: str, version: str, relative: str, dst: str | Path) -> Path | None:
        """Fetch ``relative`` (e.g. ``artifacts/params.npz``) of a version into ``dst``.

        None when the files are neither behind the server's proxy nor readable here (MLflow's
        client knows the other stores)."""
        root = self._get("model-versions/get-download-uri", name=name, version=version)["artifact_uri"]
        target = Path(dst) / Path(relative).name
        parts = urlsplit(root)
        if parts.scheme == "mlflow-artifacts":
            base = f"{self._scheme()}://{parts.netloc}" if parts.netloc else self.base
            url = f"{base}{ARTIFACTS}/{parts.path.strip('/')}/{relative}"
            with self.client.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise MlflowRestError(f"GET {url}: HTTP {response.status_code}: {_message(response)}")
                with open(target, "wb") as fh:
                    for block in response.iter_bytes(1 << 20):
                        fh.write(block)
            return target
        local = Path(unquote(parts.path)) if parts.scheme in ("", "file") else None
        if local is not None and (local / relative).is_file():
            shutil.copyfile(local / relative, target)
            return target
        return None

    # ---- plumbing -------------------------------------------------------------------------------
    def _get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        url = f"{self.base}{API}/{endpoint}"
        response = self.client.get(url, params=params)
        if response.status_code == 404 or (response.status_code == 400 and "not found" in response.text):
            raise LookupError(_message(response))
        if response.status_code >= 400:
            raise MlflowRestError(f"GET {url}: HTTP {response.status_code}: {_message(response)}")
        return response.json()

    def _scheme(self) -> str:
        return urlsplit(self.base).scheme

    @staticmethod
    def _version(answer: dict[str, Any]) -> str:
        return str(answer["model_version"]["version"])


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))[:500]
    except ValueError:
        return response.text[:500]
