"""Where a model version comes from: an MLflow ``models:/`` URI (alias, number, latest) or a local folder.

``ModelSource.parse(uri)`` understands

- ``models:/storecast@champion``: follows the alias (re-resolved on every refresh);
- ``models:/storecast/latest``: follows the newest version;
- ``models:/storecast/7``: pinned to version 7;
- a local folder of a downloaded version (``params.npz`` at its root or under ``artifacts/``); its
  version is a digest of the file, so a reload notices a changed file.

``resolve()`` names the version the URI points at now; ``fetch(version)`` downloads only the version's
``params.npz`` into a temporary folder and reads it. The registry location comes from
``MLFLOW_TRACKING_URI`` as usual: an ``mlflow server`` (``http(s)://``) is asked over its REST API
(``predictor.mlflow_rest``), anything else through MLflow's client, imported on first use (never
for a folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from serving.contract import MODEL_NAME, PARAMS_FILE  # the model and artifact names are the contract's

if TYPE_CHECKING:  # numpy is imported when a table is read, not before (see predictor.prefetch)
    from predictor.mlflow_rest import MlflowRestClient
    from predictor.table import ParamTable

DEFAULT_URI = f"models:/{MODEL_NAME}@champion"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))/?$")


class SourceError(ValueError):
    """The model URI cannot be used (bad syntax, missing folder or file)."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed model URI; ``kind`` is ``alias``, ``latest``, ``version`` or ``folder``."""

    uri: str
    kind: str
    name: str = ""
    ref: str = ""

    @classmethod
    def parse(cls, uri: str) -> ModelSource:
        """Parse ``models:/name@alias``, ``models:/name/N``, ``models:/name/latest`` or a folder path."""
        uri = uri.strip()
        if uri.startswith("models:"):
            match = _MODELS_URI.match(uri)
            if not match:
                raise SourceError(f"model URI {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, "
                                  "models:/NAME/latest or a local folder")
            name, alias, ref = match["name"], match["alias"], match["ref"]
            if alias:
                return cls(uri, "alias", name, alias)
            if ref == "latest":
                return cls(uri, "latest", name, ref)
            if ref.isdigit():
                return cls(uri, "version", name, str(int(ref)))
            raise SourceError(f"model URI {uri!r}: {ref!r} is neither a version number nor 'latest' "
                              "(stages are not supported: use an alias, models:/NAME@ALIAS)")
        if "://" in uri:
            raise SourceError(f"model URI {uri!r}: only models:/ URIs and local folders are supported")
        return cls(uri, "folder")

    @property
    def follows(self) -> bool:
        """Whether the URI can point at another version later (alias, latest)."""
        return self.kind in ("alias", "latest")

    @property
    def registry(self) -> str:
        """The tracking/registry location in use, without credentials (for log lines)."""
        if self.kind == "folder":
            return "local folder"
        return redact(os.environ.get("MLFLOW_TRACKING_URI", "") or "(MLflow default: ./mlruns)")

    # ---- resolve --------------------------------------------------------------------------------
    def resolve(self) -> str:
        """The version the URI points at now (a registry version, or a file digest for a folder)."""
        if self.kind == "folder":
            return "sha256:" + _digest(self.params_path())
        rest = _rest()
        if rest is not None:  # an mlflow server: plain REST calls, MLflow stays out of this process
            if self.kind == "version":
                return rest.version(self.name, self.ref)
            return rest.alias(self.name, self.ref) if self.kind == "alias" else rest.latest(self.name)
        if self.kind == "version":
            version = self.client().get_model_version(self.name, self.ref)
            return str(version.version)
        if self.kind == "alias":
            return str(self.client().get_model_version_by_alias(self.name, self.ref).version)
        found = self.client().search_model_versions(f"name = '{self.name}'", max_results=1,
                                                    order_by=["version_number DESC"])
        if not found:
            raise LookupError(f"registered model {self.name!r} has no version")
        return str(found[0].version)

    def fetch(self, version: str) -> ParamTable:
        """Download (registry) or read (folder) the parameter table of ``version``."""
        from predictor.table import ParamTable

        if self.kind == "folder":
            path = self.params_path()
            table = ParamTable.load(path)
            if "sha256:" + _digest(path) != version:
                raise RuntimeError(f"{path} changed while loading; retrying")
            return table
        with tempfile.TemporaryDirectory(prefix="storecast-") as tmp:
            return ParamTable.load(self.download(version, tmp))

    def download(self, version: str, dst: str | Path) -> Path:
        """Download only the ``params.npz`` of a registry version into ``dst``."""
        rest = _rest()
        if rest is not None:
            path = rest.download(self.name, version, f"artifacts/{PARAMS_FILE}", dst)
            if path is not None:
                return path
        import mlflow.artifacts

        uri = f"models:/{self.name}/{version}/artifacts/{PARAMS_FILE}"
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))

    def params_path(self) -> Path:
        """The ``params.npz`` of a local folder (or the file itself)."""
        root = Path(self.uri).expanduser()
        if root.is_file():
            return root
        for candidate in (root / PARAMS_FILE, root / "artifacts" / PARAMS_FILE):
            if candidate.is_file():
                return candidate
        if not root.exists():
            raise SourceError(f"model folder {self.uri} does not exist")
        found = sorted(root.rglob(PARAMS_FILE))
        if not found:
            raise SourceError(f"no {PARAMS_FILE} under {self.uri}")
        return found[0]

    @staticmethod
    def client() -> Any:
        """An MlflowClient for ``MLFLOW_TRACKING_URI`` (MLflow caches the store behind it)."""
        from mlflow import MlflowClient

        return MlflowClient()


def _rest() -> MlflowRestClient | None:
    """The REST client of ``MLFLOW_TRACKING_URI`` when it is an ``mlflow server`` (else None: MLflow's client)."""
    from predictor import mlflow_rest

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not mlflow_rest.usable(uri):
        return None
    if uri not in _REST:
        _REST[uri] = mlflow_rest.MlflowRestClient(uri)
    return _REST[uri]


_REST: dict[str, MlflowRestClient] = {}


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:pw@host`` -> ``http://user:***@host``)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
