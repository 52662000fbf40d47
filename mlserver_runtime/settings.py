"""The runtime's settings: the KServe predictor's own, read from MLServer's ``model-settings.json``.

The version comes from MLServer's ``parameters.uri`` (``models:/storecast@champion`` followed,
``models:/storecast/7`` pinned, or a folder of a downloaded version); the other settings from
``parameters.extra`` under the predictor's names. Whatever is not given there comes from the same
``STORECAST_*`` variables as the KServe predictor's (``STORECAST_REFRESH_SECONDS``, ...), else from the
same defaults: :class:`~predictor.settings.PredictorSettings` defines each setting once, for both servers.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from predictor.settings import COMPONENT, PredictorSettings
from predictor.source import ModelSource
from serving.contract import Shard
from serving.settings import early_parser

EXTRA = ("shard", "refresh_seconds", "max_rows", "precompute_days", "max_days_ahead")  # parameters.extra keys


class SettingsError(ValueError):
    """A model setting the runtime cannot use; the message names it."""


@dataclass(frozen=True)
class RuntimeSettings:
    """What the runtime takes (MLServer's own settings, ports and batching, stay MLServer's)."""

    model_uri: ModelSource
    """The version to serve: MLServer's ``parameters.uri``, else ``STORECAST_MODEL_URI``."""
    shard: Shard | None
    """``K/N``: serve only the stores with crc32(store_id) % N == K."""
    refresh_seconds: float
    """Re-resolve a followed URI this often and swap to its new version."""
    max_rows: int
    """Most rows (store-days) in one request."""
    precompute_days: int
    """Each store's next N days evaluated at load, so requests in that horizon are a lookup."""
    max_days_ahead: int
    """Furthest a request may reach past the version's last day of data, in days."""

    @classmethod
    def of(cls, uri: str | None, extra: Mapping[str, Any] | None) -> RuntimeSettings:
        """The settings of ``parameters.uri`` and ``parameters.extra`` (then variables, then defaults)."""
        extra = dict(extra or {})
        unknown = sorted(set(extra) - set(EXTRA))
        if unknown:
            raise SettingsError(f"model-settings parameters.extra: unknown setting {', '.join(map(repr, unknown))}; "
                                f"the runtime's settings are {', '.join(EXTRA)}")
        base = vars(early_parser(PredictorSettings, COMPONENT.prog).parse_known_args([])[0])  # variables, defaults
        parse = {f.name: f.metadata["parse"] or str for f in PredictorSettings.own_fields()}
        values: dict[str, Any] = {}
        for name in ("model_uri", *EXTRA):
            given = uri if name == "model_uri" else extra.get(name)
            if given is None or given == "":
                values[name] = base[name]
                continue
            try:
                values[name] = parse[name](str(given))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                where = "parameters.uri" if name == "model_uri" else f"parameters.extra.{name}"
                raise SettingsError(f"model-settings {where}={given!r}: {exc}") from None
        check_registry(values["model_uri"], os.environ.get("MLFLOW_TRACKING_URI"))
        return cls(**values)


def check_registry(source: ModelSource, tracking_uri: str | None) -> None:
    """A ``models:/`` URI needs an ``mlflow server``: the runtime's environment has no MLflow client."""
    if source.kind != "folder" and not (tracking_uri or "").startswith(("http://", "https://")):
        raise SettingsError(f"{source.uri}: the MLServer runtime reads versions over MLflow's REST API: set "
                            f"MLFLOW_TRACKING_URI (--tracking-uri) to an `mlflow server` (http(s)://...; `storecast "
                            f"serve --mlflow-server` runs one), not {tracking_uri or 'nothing'}; or serve a folder of "
                            "a downloaded version")
