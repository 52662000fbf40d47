#!/bin/sh
# storecast image entrypoint: the first argument picks the component (see the top of the Dockerfile).
# `exec` makes the component PID 1, so it receives Kubernetes' SIGTERM directly.
set -eu

usage() {
    cat <<'USAGE'
usage: <image> COMPONENT [ARGS...]
  predictor   [flags]   python -m predictor          (KServe ModelServer, HTTP 8080 / gRPC 8081)
  transformer [flags]   python -m transformer        (business API, HTTP 8080 / gRPC 8081)
  retrain     [flags]   python -m pipelines.retrain  (retrain service, CloudEvents at POST /)
  storecast   [args]    the storecast CLI (data, train, export, serve, forecast, ...)
  mlflow      [args]    the MLflow CLI (e.g. mlflow server ...)
  deadletter  [flags]   dead-letter sink: logs CloudEvents as JSON lines
  anything else is executed as given (e.g. bash).
Each component answers --help.
USAGE
}

if [ "$#" -eq 0 ]; then
    usage
    exit 0
fi

component="$1"
shift
case "$component" in
    predictor | transformer) exec python -m "$component" "$@" ;;
    retrain) exec python -m pipelines.retrain "$@" ;;
    storecast | mlflow) exec "$component" "$@" ;;
    deadletter) exec python /opt/storecast/deadletter.py "$@" ;;
    help | -h | --help) usage ;;
    *) exec "$component" "$@" ;;
esac
