"""``python -m transformer``: the business forecast API as a KServe ModelServer.

KServe's own flags (``--predictor_host``, ``--predictor_protocol``, ``--http_port``, ``--grpc_port``,
``--workers``, ...) plus ours: ``--shards N`` with ``--predictor_host_template`` (``{k}`` = shard),
``--max-days``, ``--max-stores``, ``--batch-rows``, ``--max-inflight``. gRPC V2 to the predictor is the default.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from transformer.request import Limits

DEFAULT_NAME = "storecast"
CE_TYPE = "com.storecast.forecast.completed"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The transformer's own flags (dashes and KServe-style underscores)."""
    g = parser.add_argument_group("storecast transformer")
    g.add_argument("--shards", type=int, default=1, help="number of predictor shards (crc32(store_id) %% N)")
    g.add_argument("--predictor_host_template", "--predictor-host-template", dest="predictor_host_template",
                   help="host of shard k, e.g. storecast-shard-{k}-predictor.storecast (with --shards N > 1)")
    g.add_argument("--predictor_hosts", "--predictor-hosts", dest="predictor_hosts",
                   help="comma-separated host:port of every shard, in shard order (instead of a template)")
    g.add_argument("--max-days", "--max_days", dest="max_days", type=int, default=366,
                   help="longest window of one store in a request")
    g.add_argument("--max-stores", "--max_stores", dest="max_stores", type=int, default=2000,
                   help="most stores in one request")
    g.add_argument("--batch-rows", "--batch_rows", dest="batch_rows", type=int, default=50_000,
                   help="most store-days in one predictor call (bigger requests are split and sent concurrently)")
    g.add_argument("--max-inflight", "--max_inflight", dest="max_inflight", type=int, default=64,
                   help="inference requests served at once; more get 503 + Retry-After at once (0: unbounded)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """KServe's ModelServer flags plus ours, with our defaults (model storecast, gRPC V2, 10 s timeout)."""
    from kserve import model_server

    parser = argparse.ArgumentParser(prog="python -m transformer", parents=[model_server.parser],
                                     description=__doc__.split("\n\n")[0])
    parser.set_defaults(model_name=DEFAULT_NAME, predictor_protocol="grpc-v2",
                        predictor_request_timeout_seconds=10)
    return add_arguments(parser)


def shard_hosts(args: argparse.Namespace) -> list[str]:
    """The predictor host of every shard, from the flags; errors say which flag is wrong."""
    if args.shards < 1:
        raise SystemExit("--shards must be >= 1")
    if args.predictor_hosts:
        hosts = [h.strip() for h in args.predictor_hosts.split(",") if h.strip()]
    elif args.predictor_host_template:
        if "{k}" not in args.predictor_host_template:
            raise SystemExit("--predictor_host_template needs {k} (the shard number)")
        hosts = [args.predictor_host_template.format(k=k) for k in range(args.shards)]
    elif args.predictor_host:
        hosts = [args.predictor_host]
    else:
        raise SystemExit("give --predictor_host (one predictor) or --shards N with --predictor_host_template")
    if len(hosts) != args.shards:
        raise SystemExit(f"--shards {args.shards} but {len(hosts)} predictor host(s): {', '.join(hosts)}")
    return hosts


def install_error_handlers() -> None:
    """JSON errors for shard failures (503 + Retry-After) and predictor 4xx passed through."""
    from fastapi.responses import ORJSONResponse
    from kserve import model_server

    from transformer.shards import PredictorRejected, ShardUnavailable

    async def unavailable(_: Any, exc: ShardUnavailable) -> ORJSONResponse:
        return ORJSONResponse({"error": str(exc), "shard": exc.shard}, status_code=503, headers={"Retry-After": "1"})

    async def rejected(_: Any, exc: PredictorRejected) -> ORJSONResponse:
        return ORJSONResponse({"error": str(exc)}, status_code=exc.status)

    model_server.app.add_exception_handler(ShardUnavailable, unavailable)
    model_server.app.add_exception_handler(PredictorRejected, rejected)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("CE_TYPE", CE_TYPE)  # KServe types its CloudEvent answers from these
    os.environ.setdefault("CE_SOURCE", "storecast.transformer")
    args = build_parser().parse_args(argv)
    hosts = shard_hosts(args)

    from kserve import ModelServer

    from predictor import eventloop, shedding
    from transformer import auth
    from transformer.model import ForecastTransformer
    from transformer.shards import ShardRouter

    router = ShardRouter(hosts, args.predictor_protocol, args.model_name, args.predictor_request_timeout_seconds,
                         args.batch_rows)
    model = ForecastTransformer(args.model_name, router, Limits(args.max_days, args.max_stores))
    model.load()
    install_error_handlers()
    shedding.install(args.max_inflight)
    auth.install(os.environ.get("STORECAST_API_KEY"))
    eventloop.install(args.event_loop)
    names = ("http_port", "grpc_port", "workers", "max_threads", "max_asyncio_workers", "enable_grpc",
             "enable_docs_url", "enable_latency_logging", "access_log_format", "event_loop", "timeout_keep_alive")
    ModelServer(**{n: getattr(args, n) for n in names}).start([model])
