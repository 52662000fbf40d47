"""``python -m predictor``: the storecast predictor as a KServe ModelServer.

Our flags (``--model_uri``, ``--shard``, ``--refresh-seconds``, ``--max-rows``) are added to KServe's own
``model_server.parser`` (``--http_port``, ``--grpc_port``, ``--workers``, ``--model_name``, ...), so
every ModelServer flag works as usual. The version is loaded in the background: the server answers
at once, and the model turns ready (``/v2/models/<name>/ready``, ``/v1/models/<name>``) once loaded.
The registry location comes from ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from predictor.loader import Loader, Shard, configure_logging
from predictor.prefetch import Prefetch
from predictor.source import DEFAULT_URI, MLFLOW_DEFAULTS, ModelSource, SourceError

DEFAULT_NAME = "storecast"
DEFAULT_MAX_ROWS = 100_000


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _uri(text: str) -> ModelSource:
    try:
        return ModelSource.parse(text)
    except SourceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The predictor's own flags (both spellings, KServe's underscores and dashes)."""
    group = parser.add_argument_group("storecast predictor")
    group.add_argument("--model_uri", "--model-uri", dest="model_uri", type=_uri, default=DEFAULT_URI,
                       help="models:/NAME@ALIAS (followed), models:/NAME/VERSION (pinned), models:/NAME/latest "
                            "or a local folder of a downloaded version; registry: $MLFLOW_TRACKING_URI")
    group.add_argument("--shard", type=_shard, default=None,
                       help="K/N: serve only the stores with crc32(store_id) %% N == K")
    group.add_argument("--refresh-seconds", "--refresh_seconds", dest="refresh_seconds", type=float, default=30.0,
                       help="re-resolve an alias this often and swap to its new version (<= 0: never)")
    group.add_argument("--max-rows", "--max_rows", dest="max_rows", type=int, default=DEFAULT_MAX_ROWS,
                       help="most rows (store-days) in one request")
    group.add_argument("--precompute-days", "--precompute_days", dest="precompute_days", type=int, default=366,
                       help="evaluate each store's next N days at load (about 26 KB a store), so requests in "
                            "that horizon are a lookup; other dates are evaluated per request (0: never)")
    group.add_argument("--max-inflight", "--max_inflight", dest="max_inflight", type=int, default=64,
                       help="inference requests served at once; more get 503 + Retry-After at once (0: unbounded)")
    return parser


def build_parser(kserve_parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The full parser: KServe's ModelServer flags plus ours (imports KServe unless given its parser)."""
    if kserve_parser is None:
        from kserve import model_server

        kserve_parser = model_server.parser
    parser = argparse.ArgumentParser(
        prog="python -m predictor", parents=[kserve_parser], description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(model_name=DEFAULT_NAME)
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Our flags first, without importing KServe: the version loads while KServe is imported.
    early_parser = argparse.ArgumentParser(prog="python -m predictor", add_help=False, allow_abbrev=False)
    early, _ = add_arguments(early_parser).parse_known_args(argv)
    configure_logging()
    loader = None
    if not {"-h", "--help"} & set(argv):
        # Fetch the first version in a child process while this one imports KServe (predictor.prefetch).
        prefetch = Prefetch.start(early.model_uri)
        loader = Loader(early.model_uri, early.shard, early.refresh_seconds, prefetch, early.precompute_days)
        loader.start()

    from kserve import ModelServer

    from predictor import eventloop, shedding
    from predictor.dataplane import VersionedDataPlane
    from predictor.model import StorecastModel
    from predictor.repository import ReloadingRepository

    args = build_parser().parse_args(argv)
    assert loader is not None  # --help exited in parse_args
    model = StorecastModel(args.model_name, loader, max_rows=args.max_rows)
    repository = ReloadingRepository()
    server = ModelServer(registered_models=repository, **_server_options(args))
    server.dataplane = VersionedDataPlane(model_registry=repository)
    # Registered before it is ready (KServe's start() only registers ready models): the server is up
    # and answers "not ready" for this model while its version loads.
    server.register_model(model)
    model.enable_latency_logging = server.enable_latency_logging
    model.start()
    shedding.install(args.max_inflight)
    eventloop.install(args.event_loop)
    server.start([])


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    """ModelServer's constructor arguments from the parsed flags."""
    names = ("http_port", "grpc_port", "workers", "max_threads", "max_asyncio_workers", "enable_grpc",
             "enable_docs_url", "enable_latency_logging", "access_log_format", "event_loop", "timeout_keep_alive",
             "ssl_certfile", "ssl_keyfile")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
