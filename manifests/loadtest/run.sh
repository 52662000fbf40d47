#!/bin/sh
# Start the load test of manifests/loadtest on the current cluster, with the API key of the Secret
# storecast-loadtest-key (key `key`) in the LocustTest's STORECAST_API_KEY. The Locust operator's LocustTest
# takes environment variables as name and value only (no valueFrom), so the key is read here and written into
# the rendered LocustTest on its way to `kubectl apply`: never into a file, an argument or the repository.
# It then sits in the LocustTest and its Jobs: give the load test an identity of its own (manifests/README.md).
# Usage: manifests/loadtest/run.sh [kubectl apply options, e.g. --dry-run=server]
set -eu
here=$(dirname "$0")
namespace=storecast-loadtest
STORECAST_API_KEY=$(kubectl -n "$namespace" get secret storecast-loadtest-key -o jsonpath='{.data.key}' | base64 -d)
case "$STORECAST_API_KEY" in
    "" | *[!A-Za-z0-9_-]*)
        echo "run.sh: Secret $namespace/storecast-loadtest-key has no key 'key'" \
            "of the form storecast auth add-key prints" >&2
        exit 2 ;;
esac
export STORECAST_API_KEY
kubectl kustomize "$here" \
    | awk '{ print }
           /^ *- name: STORECAST_API_KEY$/ {
               print substr($0, 1, index($0, "-") - 1) "  value: \"" ENVIRON["STORECAST_API_KEY"] "\""
           }' \
    | kubectl apply -f - "$@"
