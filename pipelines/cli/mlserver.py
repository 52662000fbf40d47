"""``storecast mlserver``: serve a model version with MLServer and the storecast runtime, on loopback.

The first run makes MLServer's own environment (``mlserver_runtime.environment``; about 30 s, once), then
writes the settings (``mlserver_runtime.launch``) and becomes ``mlserver start``: Ctrl-C stops it. V2 REST on
``--http-port``, V2 gRPC on ``--grpc-port``, Prometheus metrics on ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serving.contract import MODEL_NAME


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("mlserver", help="serve a model version with MLServer (V2 REST and gRPC) on loopback")
    m.add_argument("--model-uri", default=f"models:/{MODEL_NAME}@champion",
                   help="models:/NAME@ALIAS (followed), models:/NAME/N (pinned), models:/NAME/latest or a folder "
                        "of a downloaded version")
    m.add_argument("--tracking-uri", help="the registry, an `mlflow server` (default: $MLFLOW_TRACKING_URI); the "
                                          "runtime reads versions over MLflow's REST API")
    m.add_argument("--http-port", type=int, default=8080, help="V2 REST port")
    m.add_argument("--grpc-port", type=int, default=8081, help="V2 gRPC port")
    m.add_argument("--metrics-port", type=int, default=8082, help="Prometheus metrics port")
    m.add_argument("--host", default="127.0.0.1", help="listening address: loopback only (MLServer has no "
                                                       "authentication)")
    m.add_argument("--max-batch-size", type=int, default=1,
                   help="adaptive batching: most requests merged into one evaluation (1: off; see the README for "
                        "what it does for this model)")
    m.add_argument("--max-batch-time", type=float, default=0.002,
                   help="adaptive batching: longest a request waits for others, in seconds")
    m.add_argument("--state", default="build/mlserver", help="folder for MLServer's settings, metrics files and "
                                                             "the links to storecast's code")
    m.add_argument("--env", help="MLServer's environment (default: $STORECAST_MLSERVER_ENV, else a folder under "
                                 "~/.cache/storecast named after the pins)")
    m.add_argument("--install-only", action="store_true", help="make MLServer's environment, print its path, exit")
    m.set_defaults(func=cmd_mlserver)


def cmd_mlserver(args: argparse.Namespace) -> int:
    from mlserver_runtime import environment, launch
    from mlserver_runtime.settings import check_registry
    from predictor.source import ModelSource

    env = Path(args.env).expanduser() if args.env else environment.default_env()
    if args.install_only:
        environment.ensure(env)
        print(env)
        return 0
    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    source = ModelSource.parse(args.model_uri)
    check_registry(source, tracking)
    model_uri = source.uri if source.kind != "folder" else str(Path(source.uri).resolve())
    options = launch.ServerOptions(model_uri, args.host, args.http_port, args.grpc_port, args.metrics_port,
                                   args.max_batch_size, args.max_batch_time)
    mlserver = environment.ensure(env)  # after the checks: a mistake is told at once
    folder = launch.write_folder(Path(args.state), options)
    print(f"MLServer: V2 REST http://{args.host}:{args.http_port}/v2/models/{MODEL_NAME}, gRPC {args.host}:"
          f"{args.grpc_port}, metrics http://{args.host}:{args.metrics_port}/metrics; serving {args.model_uri}",
          file=sys.stderr)
    sys.stderr.flush()
    os.execve(str(mlserver), launch.command(mlserver, folder), launch.environment(folder, tracking))
    return 0  # not reached: this process is MLServer now
