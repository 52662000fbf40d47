"""Locust load test of storecast (never imports kserve).

User classes (pick them on the command line, weights by ``STORECAST_WEIGHTS``):
- ``Planner``: the business V1 API on the transformer: one store, default window; sometimes several stores;
- ``Service``: V2 long-format requests straight to the predictor (``STORECAST_PREDICTOR_URL``);
- ``Event``: forecast requests as binary CloudEvents to the transformer;
- ``Refresher``: retrain requests to the retrain service (``STORECAST_RETRAIN_URL``) at a low rate.

``--host`` is the transformer; the predictor and retrain service are absolute URLs from the environment. Each
user paces itself at ``STORECAST_USER_RPS`` requests per second (``paced``: at its own random phase), so the
offered load is users x rate whatever the latency, spread over each second. Requests shed by a server
(429/503) are reported under the name ``shed``; the other rows hold successful requests only, so their
percentiles are those of successes. ``STORECAST_SHAPE`` = ``surge`` (steady, a 10x holiday spike, back),
``ramp`` (steps up until saturation) or ``step`` (``STORECAST_STEPS`` steps of one offered rate each, for the
goodput report, ``loadtest.goodput``) drives the user count instead of ``-u``. ``STORECAST_REQUEST_LOG`` names a
CSV file where each Locust process writes one row per request (step, offered rate, latency, success): the
exact input of the goodput report.

Environment: STORECAST_STORES ("1-1115" or "1,2,7"), STORECAST_PREDICTOR_URL, STORECAST_RETRAIN_URL,
STORECAST_USER_RPS (default 2), STORECAST_WEIGHTS ("Planner=8,Service=2,Event=1,Refresher=1"),
STORECAST_SHAPE, STORECAST_BASE_USERS (20), STORECAST_STEP_USERS (10), STORECAST_STEP_SECONDS (10),
STORECAST_MAX_USERS (400), STORECAST_STEPS (8), STORECAST_REQUEST_LOG, STORECAST_PHASE_SECONDS (20),
STORECAST_API_KEY (sent as x-api-key), STORECAST_ALLOW_WRITES (``loadtest.guard``); all of them are in the
README's table of environment variables.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

from locust import LoadTestShape, between, task
from locust.contrib.fasthttp import FastHttpUser

if not __package__:  # loaded by path (locust -f loadtest/locustfile.py): the folder holding loadtest/ gives
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # serving, loadtest; last: an installed one wins

from serving.contract import (  # after the path above; it imports neither numpy nor KServe
    FORECAST_COMPLETED,
    FORECAST_REQUESTED,
    MODEL_NAME,
    RETRAIN_REQUESTED,
)

# STORECAST_API_KEY: sent as x-api-key by every user (an identity of the servers' auth file)
JSON = {"content-type": "application/json",
        **({"x-api-key": os.environ["STORECAST_API_KEY"]} if os.environ.get("STORECAST_API_KEY") else {})}
SHED = (429, 503)
V1_PREDICT = f"/v1/models/{MODEL_NAME}:predict"  # the transformer's business API


def _stores(spec: str) -> list[str]:
    if "-" in spec and "," not in spec:
        lo, hi = (int(x) for x in spec.split("-"))
        return [str(i) for i in range(lo, hi + 1)]
    return [s.strip() for s in spec.split(",") if s.strip()]


STORES = _stores(os.environ.get("STORECAST_STORES", "1-20"))
RATE = float(os.environ.get("STORECAST_USER_RPS", "2"))
WEIGHTS = dict(kv.split("=") for kv in os.environ.get(
    "STORECAST_WEIGHTS", "Planner=8,Service=2,Event=1,Refresher=1").split(",") if kv)


def _weight(name: str) -> int:
    return int(WEIGHTS.get(name, 1))


def _check(resp, name: str) -> None:  # resp: locust's response context manager
    """Successes stay under their name; shed requests go under "shed"; anything else is a failure."""
    if resp.status_code in SHED:
        resp.request_meta["name"] = "shed"
        resp.failure(f"shed {resp.status_code} (retry-after {resp.headers.get('retry-after')})")
    elif resp.status_code >= 400 or resp.status_code == 0:
        resp.failure(f"{name}: HTTP {resp.status_code}: {(resp.text or '')[:200]}")
    else:
        resp.success()


def paced(rate: float):
    """Wait time for ``rate`` requests a second per user, whatever the latency, each user at its own random
    phase. (Locust's ``constant_throughput`` keeps every user in the phase it was spawned in: users spawned
    together then arrive as bursts of the whole crowd, which measures queueing in the burst, not the
    service.) A user behind schedule goes at once, without catching up in a burst."""
    period = 1.0 / rate

    def wait_time(user) -> float:
        now = time.perf_counter()
        due = getattr(user, "_storecast_due", None)
        due = now + random.random() * period if due is None else max(now, due + period)
        user._storecast_due = due
        return due - now

    return wait_time


class Paced(FastHttpUser):
    """A user sending ``STORECAST_USER_RPS`` requests a second."""

    abstract = True
    wait_time = paced(RATE)


class Planner(Paced):
    """Business requests on the transformer (V1)."""

    weight = _weight("Planner")

    @task(8)
    def one_store(self) -> None:
        body = {"instances": [{"storeId": random.choice(STORES)}]}
        with self.client.post(V1_PREDICT, data=json.dumps(body).encode(), headers=JSON,
                              name="business one store", catch_response=True) as resp:
            _check(resp, "business one store")

    @task(2)
    def several_stores(self) -> None:
        body = {"instances": [{"storeId": s, "beginDate": "2015-08-01", "endDate": "2015-08-14"}
                              for s in random.sample(STORES, min(5, len(STORES)))]}
        with self.client.post(V1_PREDICT, data=json.dumps(body).encode(), headers=JSON,
                              name="business five stores", catch_response=True) as resp:
            _check(resp, "business five stores")


class Service(Paced):
    """Other services: V2 long format straight to the predictor."""

    weight = _weight("Service")
    url = os.environ.get("STORECAST_PREDICTOR_URL", "").rstrip("/") + f"/v2/models/{MODEL_NAME}/infer"

    @task
    def v2_week(self) -> None:
        store = random.choice(STORES)
        days = [f"2015-08-0{d}" for d in range(1, 8)]
        body = {"inputs": [{"name": "store_id", "datatype": "BYTES", "shape": [7], "data": [store] * 7},
                           {"name": "ds", "datatype": "BYTES", "shape": [7], "data": days}]}
        with self.client.post(self.url, data=json.dumps(body).encode(), headers=JSON,
                              name="predictor v2 week", catch_response=True) as resp:
            _check(resp, "predictor v2 week")


class Event(Paced):
    """The streaming path: forecast requests as binary CloudEvents."""

    weight = _weight("Event")

    @task
    def forecast_event(self) -> None:
        headers = {**JSON, "ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": "locust",
                   "ce-type": FORECAST_REQUESTED}
        body = {"instances": [{"storeId": random.choice(STORES)}]}
        with self.client.post(V1_PREDICT, data=json.dumps(body).encode(), headers=headers,
                              name="forecast cloudevent", catch_response=True) as resp:
            _check(resp, "forecast cloudevent")
            if resp.status_code == 200 and resp.headers.get("ce-type") != FORECAST_COMPLETED:
                resp.failure(f"answer is not a forecast.completed event: {resp.headers.get('ce-type')}")


class Refresher(FastHttpUser):
    """Planners asking for a refresh, rarely."""

    weight = _weight("Refresher")
    wait_time = between(20, 40)
    url = os.environ.get("STORECAST_RETRAIN_URL", "").rstrip("/") + "/"

    def on_start(self) -> None:  # only against a --dry-run retrain service unless STORECAST_ALLOW_WRITES=1
        from locust.exception import StopUser

        from loadtest.guard import refusal

        reason = refusal(self.url)
        if reason:
            self.environment.events.request.fire(request_type="CHECK", name="retrain refused", response_time=0,
                                                 response_length=0, exception=RuntimeError(reason), context={})
            raise StopUser()

    @task
    def retrain(self) -> None:
        headers = {**JSON, "ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": "locust",
                   "ce-type": RETRAIN_REQUESTED}
        body = {"store_ids": [random.choice(STORES)], "reason": "load test"}
        with self.client.post(self.url, data=json.dumps(body).encode(), headers=headers, name="retrain request",
                              catch_response=True) as resp:
            _check(resp, "retrain request")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SHAPE = os.environ.get("STORECAST_SHAPE", "")

if SHAPE == "surge":

    class HolidaySurge(LoadTestShape):
        """Steady load, a 10x holiday spike, then steady again (each phase STORECAST_PHASE_SECONDS)."""

        def tick(self) -> tuple[int, float] | None:
            base, phase = _env_int("STORECAST_BASE_USERS", 20), _env_int("STORECAST_PHASE_SECONDS", 20)
            t = self.get_run_time()
            if t < phase:
                return base, base
            if t < 2 * phase:
                return base * 10, base * 10
            return (base, base * 10) if t < 3 * phase else None

elif SHAPE == "ramp":

    class StepRamp(LoadTestShape):
        """Add STORECAST_STEP_USERS every STORECAST_STEP_SECONDS up to STORECAST_MAX_USERS: finds saturation."""

        def tick(self) -> tuple[int, float] | None:
            step, every = _env_int("STORECAST_STEP_USERS", 10), _env_int("STORECAST_STEP_SECONDS", 10)
            users = step * (int(self.get_run_time() // every) + 1)
            return (users, users) if users <= _env_int("STORECAST_MAX_USERS", 400) else None

elif SHAPE == "step":

    class StepLoad(LoadTestShape):
        """STORECAST_STEPS steps of STORECAST_STEP_SECONDS: step k runs STORECAST_STEP_USERS x (k + 1) users at
        once (at most STORECAST_MAX_USERS), paced users, so it offers users x STORECAST_USER_RPS requests/s."""

        def tick(self) -> tuple[int, float] | None:
            plan = step_plan(self.get_run_time())
            return None if plan is None else (plan[1], plan[1])


def step_plan(t: float) -> tuple[int, int] | None:
    """(step index, users) of the ``step`` shape at ``t`` seconds into the run; None once it is over."""
    step, every = _env_int("STORECAST_STEP_USERS", 10), float(os.environ.get("STORECAST_STEP_SECONDS", "10"))
    k = int(t // every)
    users = step * (k + 1)
    return None if k >= _env_int("STORECAST_STEPS", 8) or users > _env_int("STORECAST_MAX_USERS", 400) else (k, users)


REQUEST_LOG = os.environ.get("STORECAST_REQUEST_LOG", "")

if REQUEST_LOG:
    import csv

    from locust import events

    _log: dict = {}

    @events.test_start.add_listener
    def _open_request_log(environment, **_: object) -> None:
        """One file per process that sends requests (workers add their pid to the name); none on a master."""
        kind = type(environment.runner).__name__
        if kind == "MasterRunner":
            return
        path = Path(REQUEST_LOG)
        if kind == "WorkerRunner":
            path = path.with_name(f"{path.stem}-{os.getpid()}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        _log["fh"] = fh = open(path, "w", newline="")  # noqa: SIM115 (closed at test stop)
        _log["csv"] = csv.writer(fh)
        _log["csv"].writerow(["step", "offered", "step_seconds", "since_step", "name", "ms", "ok"])
        _log["t0"] = time.time()
        _log["every"] = float(os.environ.get("STORECAST_STEP_SECONDS", "10")) if SHAPE == "step" else 0.0

    @events.request.add_listener
    def _log_request(name: str, response_time: float, exception: BaseException | None, start_time: float = 0.0,
                     **_: object) -> None:
        if "csv" not in _log:
            return
        t = (start_time or time.time()) - _log["t0"]
        every = _log["every"]
        plan = step_plan(t) if every else None
        k, users = plan if plan is not None else (-1, 0)
        _log["csv"].writerow([k, f"{users * RATE:g}", f"{every:g}", f"{t - max(k, 0) * every:.3f}", name,
                              f"{response_time:.2f}", 0 if exception else 1])

    @events.test_stop.add_listener
    def _close_request_log(**_: object) -> None:
        fh = _log.pop("fh", None)
        _log.pop("csv", None)
        if fh is not None:
            fh.close()
