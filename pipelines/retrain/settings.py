"""The flags of ``python -m pipelines.retrain`` (README, "Retraining"): every one with help text."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from pipelines.training.fitting import DEFAULT_MODEL, MODELS

STATE_ENV = "STORECAST_RETRAIN_STATE"
REFRESH_ENV = "STORECAST_REFRESH_STORES_PER_DAY"
KEEP_UNKNOWN_ENV = "STORECAST_KEEP_UNKNOWN_STORES"
MISSED_SCRAPES_ENV = "STORECAST_ROLLOUT_MAX_MISSED_SCRAPES"


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise SystemExit(f"${name}: expected a whole number, got {text!r}") from None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def add_arguments(p: argparse.ArgumentParser, promote: tuple[str, ...], steps: Callable[[str], Any]) -> None:
    p.add_argument("--data", required=True,
                   help="the sales store: a file path (parts appended in PATH.parts/) or the URL of the file behind "
                        "MLflow's artifact proxy")
    p.add_argument("--port", type=int, default=8080, help="HTTP port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (loopback; in a Knative pod the queue-proxy reaches it there)")
    p.add_argument("--model-name", default="storecast", help="registered model name")
    p.add_argument("--state", default=os.environ.get(STATE_ENV, "retrain-state/jobs.sqlite"),
                   help=f"SQLite file of the jobs, events seen and rollouts (${STATE_ENV}); keep it on a volume")
    p.add_argument("--dry-run", action="store_true",
                   help="answer what a request would do; fit, register and move nothing (load tests)")
    p.add_argument("--max-age-days", type=float, default=30.0,
                   help="a ping refits every store when the champion version is older than this")
    p.add_argument("--promote", choices=promote, default="auto",
                   help="alias a passing version moves: champion, challenger (canary), or auto: champion for "
                        "up to --auto-champion-stores stores, else challenger; with champion too, a version refitting "
                        "more stores goes challenger (pipelines.versions.lineage.target_alias)")
    p.add_argument("--auto-champion-stores", type=int, default=20,
                   help="most stores a version may refit and still move champion directly; more go challenger -> "
                        "canary whoever asked (also with --promote champion)")
    p.add_argument("--refresh-stores-per-day", type=int, default=_env_int(REFRESH_ENV, 60),
                   help=f"stores an identity without the retrain permission (a planner) may ask to refresh per UTC "
                        f"day; beyond: 429 with Retry-After; counted in --state, so a restart keeps the count; 0: no "
                        f"limit (${REFRESH_ENV})")
    p.add_argument("--keep-unknown-stores", action="store_true", default=_env_flag(KEEP_UNKNOWN_ENV),
                   help="keep appended sales rows and calendar rows naming stores the champion does not hold (for "
                        f"when they are trained) instead of refusing them with 400 (${KEEP_UNKNOWN_ENV}=1)")
    p.add_argument("--workers", type=int, default=1, help="fitting processes for big jobs")
    p.add_argument("--fleet-backend", choices=("inprocess", "rayjob"), default="inprocess",
                   help="where a challenger (fleet) job fits: this process, or a KubeRay RayJob")
    g = p.add_argument_group("fit configuration (inherited from the parent version unless given)")
    g.add_argument("--holdout-days", type=int, default=None, help="override the parent's holdout days")
    g.add_argument("--gate-margin", type=float, default=None, help="override the parent's per-store gate margin")
    g.add_argument("--interval-width", type=float, default=None, help="override the parent's interval width")
    g.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL,
                   help="configuration of a first version (no champion yet)")
    g = p.add_argument_group("gate")
    g.add_argument("--gate-min-pass-share", type=float, default=0.5,
                   help="share of the evaluated stores that must pass their holdout gate for an alias to move")
    g.add_argument("--gate-plausible-factor", type=float, default=3.0,
                   help="a forecast above this times the store's highest day of the last year fails the gate")
    g = p.add_argument_group("retries and recovery")
    g.add_argument("--retries", type=int, default=3, help="attempts of a job when the registry or sales store fail")
    g.add_argument("--retry-seconds", type=float, default=2.0, help="first backoff (doubles each attempt)")
    g.add_argument("--max-attempts", type=int, default=3,
                   help="runs of one job a restart may cut short before it is failed")
    g = p.add_argument_group("automatic rollout of fleet versions")
    g.add_argument("--rollout", choices=("none", "kubernetes", "local"), default="none",
                   help="kubernetes: canary on the InferenceService; local: a challenger-following predictor "
                        "(--canary-url); none: the challenger waits for a person (storecast canary)")
    g.add_argument("--rollout-steps", type=steps, default=(10, 50), help="canaryTrafficPercent of each step")
    g.add_argument("--rollout-watch-seconds", type=float, default=300.0, help="watch of each step")
    g.add_argument("--rollout-poll-seconds", type=float, default=10.0, help="metrics read this often")
    g.add_argument("--rollout-ready-timeout", type=float, default=600.0, help="for the canary to turn ready")
    g.add_argument("--canary-max-error-ratio", type=float, default=0.02,
                   help="share of the canary's answers that are not ok (4xx, 5xx, shed) it may give")
    g.add_argument("--canary-max-p95-ms", type=float, default=500.0, help="p95 latency bound of the canary")
    g.add_argument("--canary-min-requests", type=int, default=20,
                   help="requests a step must see; fewer: too little traffic to judge, rolled back")
    g.add_argument("--rollout-max-missed-scrapes", type=int, default=_env_int(MISSED_SCRAPES_ENV, 3),
                   help="failed reads of the canary's /metrics in a row before it is rolled back; a single missed "
                        f"read is retried at the next poll (${MISSED_SCRAPES_ENV})")
    g.add_argument("--isvc", default="storecast", help="InferenceService (--rollout kubernetes)")
    g.add_argument("--namespace", default="storecast", help="its namespace")
    g.add_argument("--canary-metrics-port", type=int, default=8080,
                   help="the predictor's REST port in its pods (/metrics)")
    g.add_argument("--canary-url", help="--rollout local: the challenger-following predictor's URL")
    g.add_argument("--reload-url", action="append",
                   help="predictor URL to reload when champion moves (repeat; local: served at once instead of "
                        "at its next --refresh-seconds)")
    g.add_argument("--served-model-name", dest="model_name_served", default="storecast",
                   help="the predictors' KServe model name")
    g = p.add_argument_group("accuracy watch (com.storecast.sales.appended)")
    g.add_argument("--no-drift", action="store_true", help="no accuracy watch")
    g.add_argument("--no-drift-refit", action="store_true", help="score and export only; refit nothing")
    g.add_argument("--drift-factor", type=float, default=2.0,
                   help="a store whose recent WAPE exceeds this times its holdout WAPE is refitted")
    g.add_argument("--drift-window-days", type=int, default=28, help="latest out-of-sample open days scored")
    g.add_argument("--drift-min-days", type=int, default=7, help="days a store needs before it is judged")
    g.add_argument("--drift-floor", type=float, default=0.05, help="the holdout WAPE counts as at least this")
    g.add_argument("--store-groups", help="CSV of Store and a group column (e.g. Rossmann store.csv: StoreType) "
                   "for the per-group WAPE")
