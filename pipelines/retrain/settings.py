"""The settings of ``python -m pipelines.retrain``: each a flag (``--max-age-days``) and a variable
(``STORECAST_RETRAIN_MAX_AGE_DAYS``), defined once (``serving.settings``; README, "Servers").

The variables are ``STORECAST_RETRAIN_<FLAG>``, so that none means something else to the servers
(``STORECAST_WORKERS`` is KServe's ``--workers``), except three that keep the names they had:
``STORECAST_REFRESH_STORES_PER_DAY``, ``STORECAST_KEEP_UNKNOWN_STORES`` and
``STORECAST_ROLLOUT_MAX_MISSED_SCRAPES``. The access flags (``--auth-file``, ...) come from
``serving.access.settings``. :class:`GateSettings`, the gate flags, are ``storecast train``'s too.
The service's key for the predictors it reloads (``--predictor-api-key-file``, or the key itself in
``STORECAST_RETRAIN_PREDICTOR_API_KEY``, never a flag) is read once at start: :meth:`RetrainSettings.predictor_key`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from pipelines.training.fitting import DEFAULT_MODEL, MODELS
from pipelines.versions.lineage import KEEP_UNKNOWN_ENV
from pipelines.versions.publish import GatePolicy
from serving.access.key_file import read_key
from serving.contract import MODEL_NAME, REFRESH_MAX_STORES
from serving.settings import Settings, boolean, setting

PREFIX = "STORECAST_RETRAIN_"
PROMOTE = ("auto", "champion", "challenger")  # --promote: which alias a passing version moves
FIT = "fit configuration (inherited from the parent version unless given)"
RETRIES = "retries and recovery"
ROLLOUT = "automatic rollout of fleet versions"
DRIFT = "accuracy watch (com.storecast.sales.appended)"
PREDICTOR_KEY_ENV = "STORECAST_RETRAIN_PREDICTOR_API_KEY"  # never a flag: argv is visible to ps


def steps(text: str) -> tuple[int, ...]:
    """``10,50``: the canary percentages of a rollout."""
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages like 10,50; got {text!r}") from None


def byte_count(text: str) -> int:
    """A number of bytes: a whole number > 0."""
    if not str(text).strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes > 0, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class GateSettings(Settings):
    """The gate a version passes before an alias moves: flags of ``storecast train`` and the retrain service."""

    env_prefix = PREFIX  # the CLI adds them without variables (add_arguments(..., environment=False))
    gate_min_pass_share: float = setting(GatePolicy.min_pass_share, "share of the evaluated stores that must pass "
                                         "their holdout gate for an alias to move", float, group="gate")
    gate_plausible_factor: float = setting(GatePolicy.plausible_factor, "an open day's forecast above this times the "
                                           "store's best day, anywhere in its horizon and calendar, fails the gate",
                                           float, group="gate")

    def policy(self) -> GatePolicy:
        return GatePolicy(self.gate_min_pass_share, self.gate_plausible_factor)


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate flags on ``storecast train``'s parser (no variables: the CLI reads its flags alone)."""
    GateSettings.add_arguments(parser, "gate", environment=False)


@dataclass(frozen=True)
class RetrainSettings(GateSettings):
    """``python -m pipelines.retrain`` (the access flags besides)."""

    data: str = setting("", "the sales store: a file path (parts appended in PATH.parts/) or the URL of the file "
                        "behind MLflow's artifact proxy", required=True)
    port: int = setting(8080, "HTTP port", int)
    host: str = setting("127.0.0.1", "address to bind (loopback; in a Knative pod the queue-proxy reaches it there)")
    max_body_bytes: int = setting(8 << 20, "largest request body taken (an event with sales rows included); a larger "
                                  "one is refused with 413 before it is read or parsed, by its Content-Length or as "
                                  "it streams (bigger appends: storecast data append --sales, then the part's name)",
                                  byte_count)
    model_name: str = setting(MODEL_NAME, "registered model name")
    state: str = setting("build/retrain-state/jobs.sqlite", "SQLite file of the jobs, events seen and rollouts; "
                         "keep it on a volume")
    dry_run: bool = setting(False, "answer what a request would do; fit, register and move nothing (load tests)",
                            boolean, switch=True)
    max_age_days: float = setting(30.0, "a ping refits every store when the champion version is older than this",
                                  float)
    promote: str = setting("auto", "alias a passing version moves: champion, challenger (canary), or auto: champion "
                           "for up to --auto-champion-stores stores, else challenger; with champion too, a version "
                           "refitting more stores goes challenger (pipelines.versions.lineage.target_alias)",
                           choices=PROMOTE)
    auto_champion_stores: int = setting(REFRESH_MAX_STORES, "most stores a version may refit and still move "
                                        "champion directly; more go challenger -> canary whoever asked (also with "
                                        "--promote champion)", int)
    refresh_stores_per_day: int = setting(60, "stores an identity without the retrain permission (a planner) may ask "
                                          "to refresh per UTC day; beyond: 429 with Retry-After; counted in --state, "
                                          "so a restart keeps the count; 0: no limit", int,
                                          env="STORECAST_REFRESH_STORES_PER_DAY")
    keep_unknown_stores: bool = setting(False, "keep appended sales rows and calendar rows naming stores the champion "
                                        "does not hold (for when they are trained) instead of refusing them with 400",
                                        boolean, switch=True, env=KEEP_UNKNOWN_ENV)
    workers: int = setting(1, "fitting processes for big jobs", int)
    fleet_backend: str = setting("inprocess", "where a challenger (fleet) job fits: this process, or a KubeRay RayJob",
                                 choices=("inprocess", "rayjob"))

    holdout_days: int | None = setting(None, "override the parent's holdout days", int, group=FIT)
    gate_margin: float | None = setting(None, "override the parent's per-store gate margin", float, group=FIT)
    interval_width: float | None = setting(None, "override the parent's interval width", float, group=FIT)
    model: str = setting(DEFAULT_MODEL, "configuration of a first version (no champion yet)", choices=MODELS,
                         group=FIT)

    retries: int = setting(3, "attempts of a job when the registry or sales store fail", int, group=RETRIES)
    retry_seconds: float = setting(2.0, "first backoff (doubles each attempt)", float, group=RETRIES)
    max_attempts: int = setting(3, "runs of one job a restart may cut short before it is failed", int, group=RETRIES)

    rollout: str = setting("none", "kubernetes: canary on the InferenceService; local: a challenger-following "
                           "predictor (--canary-url); none: the challenger waits for a person (storecast canary)",
                           choices=("none", "kubernetes", "local"), group=ROLLOUT)
    rollout_steps: tuple[int, ...] = setting((10, 50), "canaryTrafficPercent of each step", steps, group=ROLLOUT)
    rollout_watch_seconds: float = setting(300.0, "watch of each step", float, group=ROLLOUT)
    rollout_poll_seconds: float = setting(10.0, "metrics read this often", float, group=ROLLOUT)
    rollout_ready_timeout: float = setting(600.0, "for the canary to turn ready", float, group=ROLLOUT)
    canary_max_error_ratio: float = setting(0.02, "share of the canary's answers that are not ok (4xx, 5xx, shed) it "
                                            "may give", float, group=ROLLOUT)
    canary_max_p95_ms: float = setting(500.0, "p95 latency bound of the canary", float, group=ROLLOUT)
    canary_min_requests: int = setting(20, "requests a step must see; fewer: too little traffic to judge, rolled "
                                       "back", int, group=ROLLOUT)
    rollout_max_missed_scrapes: int = setting(3, "failed reads of the canary's /metrics in a row before it is rolled "
                                              "back; a single missed read is retried at the next poll", int,
                                              env="STORECAST_ROLLOUT_MAX_MISSED_SCRAPES", group=ROLLOUT)
    isvc: str = setting("storecast", "InferenceService (--rollout kubernetes)", group=ROLLOUT)
    namespace: str = setting("storecast", "its namespace", group=ROLLOUT)
    canary_metrics_port: int = setting(8080, "the predictor's REST port in its pods (/metrics)", int, group=ROLLOUT)
    canary_url: str | None = setting(None, "--rollout local: the challenger-following predictor's URL", group=ROLLOUT)
    reload_url: tuple[str, ...] = setting((), "predictor URL to reload when champion moves (repeat; local: served at "
                                          "once instead of at its next --refresh-seconds)", repeat=True, group=ROLLOUT)
    served_model_name: str = setting(MODEL_NAME, "the predictors' KServe model name", group=ROLLOUT)
    predictor_api_key_file: str | None = setting(None, "file holding this service's key for the predictors it "
                                                 "reloads (--reload-url, --canary-url; their repository needs the "
                                                 "admin permission), read once at start and sent as x-api-key; or "
                                                 f"the key itself in {PREDICTOR_KEY_ENV}", group=ROLLOUT)

    no_drift: bool = setting(False, "no accuracy watch", boolean, switch=True, group=DRIFT)
    no_drift_refit: bool = setting(False, "score and export only; refit nothing", boolean, switch=True, group=DRIFT)
    drift_factor: float = setting(2.0, "a store whose recent WAPE exceeds this times its holdout WAPE is refitted",
                                  float, group=DRIFT)
    drift_window_days: int = setting(28, "latest out-of-sample open days scored", int, group=DRIFT)
    drift_min_days: int = setting(7, "days a store needs before it is judged", int, group=DRIFT)
    drift_floor: float = setting(0.05, "the holdout WAPE counts as at least this", float, group=DRIFT)
    store_groups: str | None = setting(None, "CSV of Store and a group column (e.g. Rossmann store.csv: StoreType) "
                                       "for the per-group WAPE", group=DRIFT)

    def predictor_key(self) -> str | None:
        """This service's key for the predictors it reloads (None: none given: no header); ``SystemExit`` with
        one line when it cannot be used."""
        return read_key(os.environ.get(PREDICTOR_KEY_ENV), self.predictor_api_key_file, PREDICTOR_KEY_ENV,
                        "--predictor-api-key-file")
