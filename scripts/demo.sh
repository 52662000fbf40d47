#!/usr/bin/env bash
# make demo: synthetic sales ending yesterday -> train every store -> serve on loopback, protected as a
# deployment is (an auth file with a planner key, made here and printed) -> one forecast printed and
# plotted -> keep serving until Ctrl-C. Everything lands in $DEMO_DIR (default build/demo).
set -euo pipefail
BIN=${BIN:-.venv/bin}
DIR=${DEMO_DIR:-build/demo}
STORES=${DEMO_STORES:-50}
PORT=${DEMO_PORT:-8080}
DASHBOARD_PORT=${DEMO_DASHBOARD_PORT:-8070}  # the planners' dashboard beside the API
RETRAIN_PORT=${DEMO_RETRAIN_PORT:-8090}      # the retrain service behind its refresh buttons
mkdir -p "$DIR"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$DIR/mlflow.db}
end=$(date -u -d yesterday +%F)
start=$(date -u -d "$end - 940 days" +%F)
step() { echo "== [$1/4] $2 ($((SECONDS - t0)) s so far)" >&2; }
t0=$SECONDS

# Access: a fresh auth file (mode 0600, only the key's SHA-256 in it; no anonymous tier) with one planner.
# The key is printed below and kept nowhere else; it goes to `storecast forecast` through the environment,
# never the command line (where ps shows it).
AUTH="$DIR/auth.yaml"
rm -f "$AUTH"
KEY=$("$BIN/storecast" auth add-key --name demo-planner --tier planner --file "$AUTH" \
  --description "made by make demo" 2>"$DIR/add-key.err") || { cat "$DIR/add-key.err" >&2; exit 1; }
chmod 600 "$AUTH"

step 1 "synthetic sales of $STORES stores, $start .. $end"
"$BIN/storecast" data synth --stores "$STORES" --seed 7 --start "$start" --end "$end" --out "$DIR/sales.csv.gz" \
  --calendar-out "$DIR/calendar.csv.gz"
step 2 "training $STORES stores, one Prophet model each (the bar counts the stores fitted)"
"$BIN/storecast" train --data "$DIR/sales.csv.gz" --calendar "$DIR/calendar.csv.gz" --alias champion
mkdir -p "$DIR/logs"
step 3 "starting the predictor, the transformer, the dashboard and the retrain service on 127.0.0.1 (logs: $DIR/logs)"
"$BIN/python" -m pipelines.retrain --data "$DIR/sales.csv.gz" --host 127.0.0.1 --port "$RETRAIN_PORT" \
  --auth-file "$AUTH" --state "$DIR/retrain-state/jobs.sqlite" > "$DIR/logs/retrain.log" 2>&1 &
retrain=$!
"$BIN/storecast" serve --model-uri models:/storecast@champion --http-port "$PORT" --grpc-port 0 \
  --log-dir "$DIR/logs" --auth-file "$AUTH" --dashboard-port "$DASHBOARD_PORT" \
  --dashboard-sales "$DIR/sales.csv.gz" --dashboard-retrain-url "http://127.0.0.1:$RETRAIN_PORT" > "$DIR/serve.out" &
serve=$!
trap 'kill -TERM $serve $retrain 2>/dev/null; wait $serve $retrain 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 600); do
  grep -q "Ctrl-C" "$DIR/serve.out" 2>/dev/null && break
  kill -0 $serve 2>/dev/null || { echo "storecast serve failed; see $DIR/logs" >&2; exit 1; }
  sleep 0.5
done
cat "$DIR/serve.out"
echo
step 4 "one forecast through the business API"
STORECAST_API_KEY="$KEY" "$BIN/storecast" forecast --store 4 --url "http://127.0.0.1:$PORT" --plot "$DIR/forecast.png"
echo
echo "forecast plot: $DIR/forecast.png -- still serving on http://127.0.0.1:$PORT (Ctrl-C stops)"
echo "dashboard: http://127.0.0.1:$DASHBOARD_PORT/ (stores 1..$STORES; refresh via the retrain service on :$RETRAIN_PORT)"
echo
echo "planner key: $KEY"
echo "  sign in to the dashboard with it; without a key every data route answers 401. Keep it: it is stored"
echo "  nowhere (only its SHA-256, in $AUTH). More keys: $BIN/storecast auth add-key --file $AUTH --name NAME --tier planner"
echo "  From a shell: export STORECAST_API_KEY=<the key>; $BIN/storecast forecast --store 4 --url http://127.0.0.1:$PORT"
echo
echo "data: stores 1..$STORES, sales up to $end (yesterday); forecasts start $(date -u +%F) (UTC)"
echo "README examples (\"The APIs\", \"What-if\"): export STORECAST_API_KEY=$KEY URL=http://127.0.0.1:$PORT"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
wait $serve
