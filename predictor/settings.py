"""The predictor's settings: each a flag (``--max-rows``) and a variable (``STORECAST_MAX_ROWS``), defined once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from predictor.source import DEFAULT_URI, ModelSource, SourceError
from serving.contract import MODEL_NAME, Shard
from serving.server import Component
from serving.settings import ServerSettings, setting


def _uri(text: str) -> ModelSource:
    try:
        return ModelSource.parse(text)
    except SourceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class PredictorSettings(ServerSettings):
    """``python -m predictor`` (KServe's ModelServer flags besides)."""

    model_uri: ModelSource = setting(ModelSource.parse(DEFAULT_URI), "models:/NAME@ALIAS (followed), models:/NAME/N "
                                     "(pinned), models:/NAME/latest or a local folder of a downloaded version; "
                                     "registry: $MLFLOW_TRACKING_URI", _uri)
    shard: Shard | None = setting(None, "K/N: serve only the stores with crc32(store_id) % N == K", _shard)
    refresh_seconds: float = setting(30.0, "re-resolve a followed URI this often and swap to its new version "
                                     "(<= 0: only on request)", float)
    max_rows: int = setting(100_000, "most rows (store-days) in one request", int)
    precompute_days: int = setting(366, "evaluate each store's next N days at load, so requests in that horizon "
                                   "are a lookup (0: never)", int)


COMPONENT = Component(
    name="predictor", settings=PredictorSettings,
    description="The storecast predictor: every store of one model version, forecast with numpy.",
    defaults={"model_name": MODEL_NAME}, event_types=None,
    doors="serving.access.door:door",  # the transformer's door: closed by default, the same way
)
