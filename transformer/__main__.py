"""``python -m transformer``: the business forecast API as a KServe ModelServer (``serving.server``).

KServe's own flags (``--predictor_host``, ``--predictor_protocol``, ``--http_port``, ``--grpc_port``,
``--workers``, ...) plus :class:`~transformer.settings.TransformerSettings` (each also a
``STORECAST_*`` variable): ``--shards N`` with ``--predictor_host_template`` (``{k}`` = shard) or
``--predictor_hosts``, ``--max-days``, ``--max-stores``, ``--batch-rows``, ``--max-inflight``, ...
gRPC V2 to the predictor is the default. The model is ready (``/v2/models/<name>/ready``, ...) only while
every predictor shard answers ready (``transformer.ready``).
"""

from __future__ import annotations

import os
import sys

from serving.contract import FORECAST_COMPLETED
from transformer.request import Limits
from transformer.settings import COMPONENT, TransformerSettings

__all__ = ["main", "shard_hosts"]


def shard_hosts(settings: TransformerSettings) -> list[str]:
    """The predictor host of every shard, from the flags; ``ValueError`` says which flag is wrong."""
    shards = settings.shards
    if shards < 1:
        raise ValueError("--shards must be >= 1")
    if settings.predictor_hosts:
        hosts = [h.strip() for h in settings.predictor_hosts.split(",") if h.strip()]
    elif settings.predictor_host_template:
        if "{k}" not in settings.predictor_host_template:
            raise ValueError("--predictor_host_template needs {k} (the shard number)")
        hosts = [settings.predictor_host_template.format(k=k) for k in range(shards)]
    elif settings.kserve.get("predictor_host"):
        hosts = [settings.kserve["predictor_host"]]
    else:
        raise ValueError("give --predictor_host (one predictor) or --shards N with --predictor_host_template")
    if len(hosts) != shards:
        raise ValueError(f"--shards {shards} but {len(hosts)} predictor host(s): {', '.join(hosts)}")
    return hosts


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("CE_TYPE", FORECAST_COMPLETED)  # KServe types its CloudEvent answers from these
    os.environ.setdefault("CE_SOURCE", "storecast.transformer")
    from serving.budget import RowBudget
    from serving.server import parse, serve, starting
    from transformer.model import ForecastTransformer
    from transformer.ready import PredictorsReady
    from transformer.shards import ShardRouter, ShardWatch

    settings = parse(COMPONENT, argv)
    with starting(COMPONENT):  # a bad setting: one line on stderr, exit status 1
        hosts = shard_hosts(settings)
        k = settings.kserve
        router = ShardRouter(hosts, k["predictor_protocol"], k["model_name"], k["predictor_request_timeout_seconds"],
                             settings.batch_rows, settings.credential())
        limits = Limits(settings.max_days, settings.max_stores, settings.max_days_ahead)
        model = ForecastTransformer(k["model_name"], router, limits, ShardWatch(router, settings.watch_seconds),
                                    RowBudget.of(settings), PredictorsReady(router))
        model.load()
    serve(COMPONENT, settings, [model])


if __name__ == "__main__":
    main()
