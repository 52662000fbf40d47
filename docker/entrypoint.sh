#!/bin/sh
# storecast image entrypoint: the first argument picks the component (see the top of the Dockerfile).
# `exec` makes the component PID 1, so it receives Kubernetes' SIGTERM directly.
# STORECAST_IMAGE (set by the Dockerfile) is `serve` or `full`: the serving image has no training,
# no MLflow and no CLI, and says so instead of failing on an import.
set -eu

image="${STORECAST_IMAGE:-full}"

usage() {
    cat <<USAGE
usage: <image> COMPONENT [ARGS...]        (this is the ${image} image)
  predictor   [flags]   python -m predictor          (KServe ModelServer, HTTP 8080 / gRPC 8081)
  transformer [flags]   python -m transformer        (business API, HTTP 8080 / gRPC 8081)
  deadletter  [flags]   dead-letter sink: logs CloudEvents as JSON lines
  retrain     [flags]   python -m pipelines.retrain  (retrain service, CloudEvents at POST /)   full image only
  dashboard   [flags]   python -m dashboard          (the planners' dashboard)                full image only
  storecast   [args]    the storecast CLI (data, train, export, serve, forecast, ...)      full image only
  mlflow      [args]    the MLflow CLI (e.g. mlflow server ...)                          full image only
  anything else is executed as given (e.g. bash).
Each component answers --help.
USAGE
}

full_only() {
    echo "'$1' is not in the serving image (storecast-serve: predictor, transformer, deadletter only);" \
        "use the full image (storecast)" >&2
    exit 2
}

if [ "$#" -eq 0 ]; then
    usage
    exit 0
fi

component="$1"
shift
case "$component" in
    predictor | transformer) exec python -m "$component" "$@" ;;
    retrain)
        [ "$image" = serve ] && full_only retrain
        exec python -m pipelines.retrain "$@" ;;
    dashboard)
        [ "$image" = serve ] && full_only dashboard
        exec python -m dashboard "$@" ;;
    storecast | mlflow)
        [ "$image" = serve ] && full_only "$component"
        exec "$component" "$@" ;;
    deadletter) exec python /opt/storecast/deadletter.py "$@" ;;
    help | -h | --help) usage ;;
    *) exec "$component" "$@" ;;
esac
