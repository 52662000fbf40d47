#!/bin/sh
# storecast image entrypoint: the first argument picks the component (see the top of the Dockerfile).
# `exec` makes the component PID 1, so it receives Kubernetes' SIGTERM directly.
# STORECAST_IMAGE (set by the Dockerfile) is `serve`, `mlserver` or `full`: each image runs only its own
# components (the serving image has no training, no MLflow and no CLI; the MLServer image only MLServer)
# and says which image has the others instead of failing on an import.
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
  mlserver    [args]    the MLServer CLI (mlserver start FOLDER: HTTP 8080 / gRPC 8081)  mlserver image only
  --master | --worker [args]  locust --master|--worker (the Locust operator's pods)     full image only
  anything else is executed as given (e.g. bash).
Each component answers --help.
USAGE
}

# needs COMPONENT IMAGE...: refuse COMPONENT (exit 2, naming the images that have it) unless this is one of them.
needs() {
    wanted="$1"
    shift
    case "$image" in serve | mlserver) current="$image" ;; *) current=full ;; esac
    for have in "$@"; do
        [ "$current" = "$have" ] && return 0
    done
    case "$current" in
        serve) here="serving image (storecast-serve: predictor, transformer, deadletter only)" ;;
        mlserver) here="MLServer image (storecast-mlserver: mlserver only)" ;;
        *) here="full image (storecast: every component but mlserver)" ;;
    esac
    where=""
    for have in "$@"; do
        case "$have" in
            serve) name="the serving image (storecast-serve)" ;;
            mlserver) name="the MLServer image (storecast-mlserver)" ;;
            *) name="the full image (storecast)" ;;
        esac
        where="${where:+$where or }$name"
    done
    echo "'$wanted' is not in the $here;" "use $where" >&2
    exit 2
}

if [ "$#" -eq 0 ]; then
    usage
    exit 0
fi

component="$1"
shift
case "$component" in
    predictor | transformer)
        needs "$component" serve full
        exec python -m "$component" "$@" ;;
    retrain)
        needs retrain full
        exec python -m pipelines.retrain "$@" ;;
    dashboard)
        needs dashboard full
        exec python -m dashboard "$@" ;;
    storecast | mlflow)
        needs "$component" full
        exec "$component" "$@" ;;
    deadletter)
        needs deadletter serve full
        exec python /opt/storecast/deadletter.py "$@" ;;
    mlserver)
        needs mlserver mlserver
        exec mlserver "$@" ;;
    --master | --worker) # the Locust operator passes arguments only (manifests/loadtest/locusttest.yaml)
        needs locust full
        exec locust "$component" "$@" ;;
    help | -h | --help) usage ;;
    *) exec "$component" "$@" ;;
esac
