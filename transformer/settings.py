"""The transformer's settings: each a flag (``--max-days``) and a variable (``STORECAST_MAX_DAYS``), defined once."""

from __future__ import annotations

from dataclasses import dataclass

from serving.contract import FORECAST_REQUESTED, MODEL_NAME
from serving.server import Component
from serving.settings import ServerSettings, setting


@dataclass(frozen=True)
class TransformerSettings(ServerSettings):
    """``python -m transformer`` (KServe's ModelServer flags besides: --predictor_host, --predictor_protocol, ...)."""

    shards: int = setting(1, "number of predictor shards (crc32(store_id) % N)", int)
    predictor_host_template: str | None = setting(None, "host of shard k, e.g. storecast-shard-{k}-predictor.storecast "
                                                  "(with --shards N > 1)")
    predictor_hosts: str | None = setting(None, "comma-separated host:port of every shard, in shard order "
                                          "(instead of a template)")
    max_days: int = setting(366, "longest window of one store in a request", int)
    max_stores: int = setting(2000, "most stores in one request", int)
    batch_rows: int = setting(50_000, "most store-days in one predictor call (bigger requests are split and sent "
                              "concurrently)", int)
    watch_seconds: float = setting(5.0, "ask every shard this often which version it serves, its data end and "
                                   "stores (metadata, metrics, the --max-days-ahead check; 0: never)", float)


COMPONENT = Component(
    name="transformer", settings=TransformerSettings,
    description="The storecast business API: validates requests, splits them by shard, calls the predictors.",
    defaults={"model_name": MODEL_NAME, "predictor_protocol": "grpc-v2", "predictor_request_timeout_seconds": 10},
    event_types=(FORECAST_REQUESTED,), doors="serving.access.door:door",
)
