#!/usr/bin/env bash
# `make image-smoke`: the three images, for real, with podman (root; a few minutes).
#
#   1. build the serving, the MLServer and the full image (time each) and report their sizes;
#   2. check them: non-root user, no compiler, no sales data, every component's entry point answers;
#      the serving image has no MLflow, Prophet, plotting, pyarrow, scipy or Kubernetes client and
#      refuses the full image's components; the MLServer image has MLServer and the storecast runtime
#      but no KServe, no MLflow and no other component, and refuses the others' components;
#   3. in one pod (ports published on 127.0.0.1 only): a real `mlflow server` (full image), a few
#      synthetic stores trained into it over HTTP (full image), then the predictor and the
#      transformer (serving image): the predictor reads its version over MLflow's REST API, the
#      transformer calls it over gRPC V2 on the pod's loopback; and MLServer (MLServer image) with
#      nothing but MLFLOW_TRACKING_URI set: the image's own defaults serve the champion;
#   4. send a business request, a CloudEvent, a bad request (transformer) and a V2 request
#      (predictor, then MLServer) and check the answers agree, MLServer's V2 numbers equal to the
#      predictor's; a V2 request without `ds` gets a 4xx from MLServer that names it; run the batch
#      client (full image) for every store;
#   5. always remove the pod, its containers and the folder (trap), pass or fail.
#
# Environment: IMAGE (the full image, default localhost/storecast:dev), SERVE_IMAGE (default
# localhost/storecast-serve:dev), MLSERVER_IMAGE (default localhost/storecast-mlserver:dev),
# SMOKE_STORES (4), SMOKE_NO_CACHE=1 to build without the layer cache. Set-up of podman and of the
# base image: ../shared/container/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/storecast:dev}
SERVE_IMAGE=${SERVE_IMAGE:-localhost/storecast-serve:dev}
MLSERVER_IMAGE=${MLSERVER_IMAGE:-localhost/storecast-mlserver:dev}
STORES=${SMOKE_STORES:-4}
NAME=storecast-smoke-$$
MODEL=storecast

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

command -v podman >/dev/null || fail "podman is not installed (see ../shared/container/README.md)"
command -v curl >/dev/null || fail "curl is not installed"
command -v python3 >/dev/null || fail "python3 is needed to check the answers"
[ "$(id -u)" = 0 ] || fail "run as root (podman here is rootful)"

WORK=$(mktemp -d)
cleanup() {
    status=$?
    if [ "$status" != 0 ]; then
        for c in mlflow predictor transformer mlserver; do
            podman logs --tail 30 "$NAME-$c" 2>/dev/null | sed "s/^/[$c] /" >&2 || true
        done
    fi
    podman pod rm --force --time 5 "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mb() { echo $(( $(podman image inspect --format '{{.Size}}' "$1") / 1000000 )); }

# --- 1. build ------------------------------------------------------------------------------
build() { # target tag -> prints seconds
    local start
    start=$(date +%s)
    podman build ${SMOKE_NO_CACHE:+--no-cache} --target "$1" -t "$2" . >&2
    echo $(( $(date +%s) - start ))
}
say "build $SERVE_IMAGE (target serve)"
serve_seconds=$(build serve "$SERVE_IMAGE")
say "build $MLSERVER_IMAGE (target mlserver)"
mlserver_seconds=$(build mlserver "$MLSERVER_IMAGE")
say "build $IMAGE (target full)"
full_seconds=$(build full "$IMAGE")
echo "built $SERVE_IMAGE in ${serve_seconds} s ($(mb "$SERVE_IMAGE") MB), $MLSERVER_IMAGE in ${mlserver_seconds} s" \
    "($(mb "$MLSERVER_IMAGE") MB), $IMAGE in ${full_seconds} s ($(mb "$IMAGE") MB)"
base=$(podman image inspect --format '{{.Size}}' "$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)" 2>/dev/null || echo 0)

# --- 2. static checks ----------------------------------------------------------------------
say "image checks"
for img in "$SERVE_IMAGE" "$IMAGE"; do
    run() { podman run --rm "$img" "$@"; }
    uid=$(run id -u)
    [ "$uid" != 0 ] || fail "$img runs as root"
    [ -z "$(run sh -c 'command -v gcc cc g++ make || true')" ] || fail "build tools in $img"
    found=$(run sh -c "find / -xdev \( -iname '*rossmann*' -o -name 'train.csv*' -o -name 'store.csv' \) -print 2>/dev/null || true")
    [ -z "$found" ] || fail "sales data in $img: $found"
    run predictor --help >/dev/null
    run transformer --help >/dev/null
    run deadletter --help >/dev/null
    echo "$img: uid $uid, no compiler, no sales data; predictor, transformer, deadletter answer --help"
done
podman run --rm "$IMAGE" retrain --help >/dev/null
podman run --rm "$IMAGE" storecast --help >/dev/null
podman run --rm "$IMAGE" storecast --version
podman run --rm "$IMAGE" mlflow --version
for c in retrain storecast mlflow; do
    if podman run --rm "$SERVE_IMAGE" "$c" --help >/dev/null 2>"$WORK/err"; then fail "$c runs in the serving image"; fi
    grep -q "full image" "$WORK/err" || fail "the serving image's answer to $c does not name the full image"
done
podman run --rm -i "$SERVE_IMAGE" python - <<'PY'
import importlib, importlib.util
absent = ["mlflow", "prophet", "prophet_batch", "cmdstanpy", "matplotlib", "pyarrow", "scipy", "sklearn",
          "sqlalchemy", "flask", "locust", "PIL", "grpc_tools", "pip"]
present = [m for m in absent if importlib.util.find_spec(m) is not None]
assert not present, f"the serving image has {present}"
import kubernetes.client
try:
    kubernetes.client.CustomObjectsApi
except ImportError as exc:
    assert "full image" in str(exc), exc
else:
    raise AssertionError("the real Kubernetes client is in the serving image")
import kserve, predictor.__main__, transformer.__main__  # noqa: F401,E401
print("serving image: no " + ", ".join(absent) + "; kubernetes is the stub; kserve and both servers import")
PY

# The MLServer image: its own user, no compiler, no sales data; only MLServer and the runtime.
mls() { podman run --rm "$MLSERVER_IMAGE" "$@"; }
uid=$(mls id -u)
[ "$uid" != 0 ] || fail "$MLSERVER_IMAGE runs as root"
[ -z "$(mls sh -c 'command -v gcc cc g++ make || true')" ] || fail "build tools in $MLSERVER_IMAGE"
found=$(mls sh -c "find / -xdev \( -iname '*rossmann*' -o -name 'train.csv*' -o -name 'store.csv' \) -print 2>/dev/null || true")
[ -z "$found" ] || fail "sales data in $MLSERVER_IMAGE: $found"
mls mlserver --help >/dev/null
for c in predictor transformer deadletter retrain storecast mlflow; do
    if mls "$c" --help >/dev/null 2>"$WORK/err"; then fail "$c runs in the MLServer image"; fi
    grep -q "MLServer image" "$WORK/err" || fail "the MLServer image's answer to $c does not say where it is"
done
for img in "$SERVE_IMAGE" "$IMAGE"; do
    if podman run --rm "$img" mlserver --help >/dev/null 2>"$WORK/err"; then fail "mlserver runs in $img"; fi
    grep -q "storecast-mlserver" "$WORK/err" || fail "$img's answer to mlserver does not name the MLServer image"
done
podman run --rm -i "$MLSERVER_IMAGE" python - <<'PY'
import importlib.util, os
absent = ["kserve", "mlflow", "prophet", "cmdstanpy", "matplotlib", "pyarrow", "scipy", "sklearn", "sqlalchemy",
          "flask", "locust", "kubernetes", "transformer", "pipelines", "dashboard", "pip", "setuptools"]
present = [m for m in absent if importlib.util.find_spec(m) is not None]
assert not present, f"the MLServer image has {present}"
import mlserver, mlserver_runtime.runtime  # noqa: F401,E401
settings = {k: v for k, v in os.environ.items() if k.startswith("MLSERVER_")}
assert settings["MLSERVER_PARALLEL_WORKERS"] == "0" and settings["MLSERVER_HOST"] == "0.0.0.0", settings
print(f"MLServer image: mlserver {mlserver.__version__} and the storecast runtime import; no " + ", ".join(absent))
PY
echo "$MLSERVER_IMAGE: uid $uid, no compiler, no sales data; mlserver answers --help, the others' components refused"

# --- 3. serve ------------------------------------------------------------------------------
say "mlflow server + training (full image), predictor + transformer (serving image) in pod $NAME"
chmod 0777 "$WORK" # the images' user writes here
pp=$(free_port)
tp=$(free_port)
mp=$(free_port)
# MLServer shares the pod's network with the predictor: its own ports (8090 HTTP, 8091 gRPC, 8092 metrics)
podman pod create --name "$NAME" -p "127.0.0.1:$pp:8080" -p "127.0.0.1:$tp:9080" -p "127.0.0.1:$mp:8090" >/dev/null
podman run -d --pod "$NAME" --name "$NAME-mlflow" -v "$WORK:/smoke:Z" -w /smoke "$IMAGE" \
    mlflow server --host 127.0.0.1 --port 5000 --workers 1 --backend-store-uri sqlite:////smoke/mlflow.db \
    --serve-artifacts --artifacts-destination /smoke/artifacts >/dev/null

wait_ready() { # url container
    local deadline=$(( $(date +%s) + 180 ))
    until curl -fs -o /dev/null "$1"; do
        [ "$(podman inspect --format '{{.State.Running}}' "$2")" = true ] || fail "$2 exited"
        [ "$(date +%s)" -lt "$deadline" ] || fail "$2 not ready after 180 s"
        sleep 0.5
    done
}
deadline=$(( $(date +%s) + 180 )) # MLflow listens on the pod's loopback only: ask from inside
until podman exec "$NAME-mlflow" python -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)" 2>/dev/null; do
    [ "$(podman inspect --format '{{.State.Running}}' "$NAME-mlflow")" = true ] || fail "mlflow exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail "mlflow not ready after 180 s"
    sleep 1
done
full() { podman run --rm --pod "$NAME" -v "$WORK:/smoke:Z" -w /smoke "$IMAGE" storecast "$@"; }
full_with_key() { podman run --rm --pod "$NAME" -v "$WORK:/smoke:Z" -w /smoke -e STORECAST_API_KEY=image-smoke "$IMAGE" storecast "$@"; }
full data synth --stores "$STORES" --seed 7 --out /smoke/sales.csv.gz
full train --data /smoke/sales.csv.gz --tracking-uri http://127.0.0.1:5000 --alias champion --no-progress --json \
    > "$WORK/train.json"
version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$WORK/train.json")
echo "registered models:/$MODEL/$version in the mlflow server"

# STORECAST_HOST: the servers listen on the pod's interfaces (published on the host's 127.0.0.1 only); a
# server listens wide only with credentials configured (serving/access/settings.py): the smoke's key, which
# the transformer also shows the predictor as its own service identity (STORECAST_PREDICTOR_API_KEY)
podman run -d --pod "$NAME" --name "$NAME-predictor" -e MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \
    -e STORECAST_HOST=0.0.0.0 -e STORECAST_API_KEY=image-smoke "$SERVE_IMAGE" \
    predictor --model_uri "models:/$MODEL/$version" --http_port 8080 --grpc_port 8081 >/dev/null
podman run -d --pod "$NAME" --name "$NAME-transformer" -e STORECAST_HOST=0.0.0.0 -e STORECAST_API_KEY=image-smoke \
    -e STORECAST_PREDICTOR_API_KEY=image-smoke \
    "$SERVE_IMAGE" transformer --predictor_host 127.0.0.1:8081 --predictor_protocol grpc-v2 --http_port 9080 \
    --grpc_port 9081 --workers 1 >/dev/null
# MLServer: only the registry's location and the pod's free ports; the image's defaults do the rest (model
# `storecast`, the storecast runtime, models:/storecast@champion, in-process inference, all interfaces).
podman run -d --pod "$NAME" --name "$NAME-mlserver" -e MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \
    -e MLSERVER_HTTP_PORT=8090 -e MLSERVER_GRPC_PORT=8091 -e MLSERVER_METRICS_PORT=8092 "$MLSERVER_IMAGE" >/dev/null
start=$(date +%s)
wait_ready "http://127.0.0.1:$pp/v2/models/$MODEL/ready" "$NAME-predictor"
wait_ready "http://127.0.0.1:$tp/v2/models/$MODEL/ready" "$NAME-transformer"
wait_ready "http://127.0.0.1:$mp/v2/models/$MODEL/ready" "$NAME-mlserver"
echo "the three models ready after $(( $(date +%s) - start )) s"

# --- 4. ask --------------------------------------------------------------------------------
say "requests"
post() { # url body [extra curl args...] -> writes $WORK/body, $WORK/headers; prints the status
    local url=$1 body=$2
    shift 2
    curl -sS -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' -H 'content-type: application/json' \
        -H 'x-api-key: image-smoke' --data "$body" "$@" "$url"
}
business='{"instances": [{"storeId": "1", "beginDate": "2015-08-01T00:00:00Z", "endDate": "2015-08-07T00:00:00Z"},
                         {"store_id": "2", "begin_date": "2015-08-01", "end_date": "2015-08-03"}]}'
status=$(post "http://127.0.0.1:$tp/v1/models/$MODEL:predict" "$business")
[ "$status" = 200 ] || fail "business request: HTTP $status $(cat "$WORK/body")"
cp "$WORK/body" "$WORK/business.json"

v2='{"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [3], "data": ["1", "1", "2"]},
                {"name": "ds", "datatype": "BYTES", "shape": [3], "data": ["2015-08-01", "2015-08-07", "2015-08-03"]}]}'
status=$(post "http://127.0.0.1:$pp/v2/models/$MODEL/infer" "$v2")
[ "$status" = 200 ] || fail "V2 request: HTTP $status $(cat "$WORK/body")"
cp "$WORK/body" "$WORK/v2.json"

status=$(post "http://127.0.0.1:$mp/v2/models/$MODEL/infer" "$v2")
[ "$status" = 200 ] || fail "V2 request to MLServer: HTTP $status $(cat "$WORK/body")"
cp "$WORK/body" "$WORK/mlserver.json"
status=$(post "http://127.0.0.1:$mp/v2/models/$MODEL/infer" \
    '{"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [1], "data": ["1"]}]}')
case "$status" in 4??) ;; *) fail "V2 request without ds to MLServer: expected a 4xx, got HTTP $status $(cat "$WORK/body")" ;; esac
grep -qw ds "$WORK/body" || fail "MLServer's 4xx does not name the missing input ds: $(cat "$WORK/body")"
mlserver_bad=$status

status=$(post "http://127.0.0.1:$tp/v1/models/$MODEL:predict" \
    '{"instances": [{"storeId": "1", "beginDate": "2015-08-01", "endDate": "2015-08-07"}]}' \
    -H 'ce-specversion: 1.0' -H 'ce-type: com.storecast.forecast.requested' -H 'ce-source: image-smoke' \
    -H 'ce-id: smoke-1')
[ "$status" = 200 ] || fail "CloudEvent request: HTTP $status $(cat "$WORK/body")"
grep -qi '^ce-type: com.storecast.forecast.completed' "$WORK/headers" \
    || fail "CloudEvent answer without ce-type com.storecast.forecast.completed: $(cat "$WORK/headers")"

status=$(post "http://127.0.0.1:$tp/v1/models/$MODEL:predict" \
    '{"instances": [{"storeId": "no-such-store", "beginDate": "2015-08-01", "endDate": "2015-08-07"}]}')
case "$status" in 4??) ;; *) fail "unknown store: expected a 4xx, got HTTP $status $(cat "$WORK/body")" ;; esac
grep -q 'no-such-store' "$WORK/body" || fail "the 4xx does not name the store: $(cat "$WORK/body")"

python3 - "$WORK/business.json" "$WORK/v2.json" "$WORK/mlserver.json" <<'PY'
import json, math, sys

business, v2, mls = (json.load(open(p)) for p in sys.argv[1:])
first, second = business["predictions"]
days = [f["timestamp"][:10] for f in first["forecast"]]
assert days == [f"2015-08-0{d}" for d in range(1, 8)], days
assert len(second["forecast"]) == 3, second
for f in first["forecast"] + second["forecast"]:
    assert all(math.isfinite(f[k]) for k in ("value", "lower", "upper")), f
    assert f["lower"] <= f["value"] <= f["upper"], f
out = {o["name"]: o for o in v2["outputs"]}
assert set(out) == {"yhat", "yhat_lower", "yhat_upper"} and all(o["shape"] == [3] for o in out.values()), out
# The same store-days through the transformer (gRPC to the predictor) and straight from the predictor (REST).
expected = [first["forecast"][0]["value"], first["forecast"][6]["value"], second["forecast"][2]["value"]]
assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(out["yhat"]["data"], expected)), (out["yhat"], expected)
# The same V2 request to MLServer (the runtime, its own environment): the same numbers, not merely close ones.
mls_out = {o["name"]: (o["shape"], o["data"]) for o in mls["outputs"]}
assert mls["model_name"] == "storecast", mls
assert mls_out == {n: (o["shape"], o["data"]) for n, o in out.items()}, (mls_out, out)
print(f"business: 2 stores, {len(first['forecast'])} + {len(second['forecast'])} days, "
      f"store 1 on 2015-08-01: {first['forecast'][0]['value']:.1f} "
      f"[{first['forecast'][0]['lower']:.1f}, {first['forecast'][0]['upper']:.1f}]; V2 yhat agrees; "
      "MLServer's V2 outputs equal the predictor's")
PY
echo "CloudEvent answered as com.storecast.forecast.completed; unknown store answered $status;" \
    "MLServer answered a request without ds with $mlserver_bad"

say "batch client (full image) for every store"
status=$(curl -sS -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    --data '{"instances": [{"storeId": "1", "beginDate": "2015-08-01"}]}' "http://127.0.0.1:$tp/v1/models/$MODEL:predict")
[ "$status" = 401 ] || fail "a business request without the key: expected 401, got HTTP $status"
full_with_key forecast --stores all --url http://127.0.0.1:9080 --predictor-url http://127.0.0.1:8080 \
    --begin 2015-08-01 --end 2015-08-14 --batch-size 2 --concurrency 2 --out /smoke/fleet.csv --no-progress
rows=$(( $(wc -l < "$WORK/fleet.csv") - 1 ))
[ "$rows" = $(( STORES * 14 )) ] || fail "the batch table has $rows rows, expected $(( STORES * 14 ))"
echo "batch table: $rows rows ($STORES stores x 14 days)"

say "image-smoke passed"
printf '%-32s %6s MB  build %4s s\n' "$SERVE_IMAGE" "$(mb "$SERVE_IMAGE")" "$serve_seconds" \
    "$MLSERVER_IMAGE" "$(mb "$MLSERVER_IMAGE")" "$mlserver_seconds" "$IMAGE" "$(mb "$IMAGE")" "$full_seconds"
if [ "$base" != 0 ]; then printf '(of which the base image %s: %s MB)\n' "$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)" \
    "$(( base / 1000000 ))"; fi
