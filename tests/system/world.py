"""The system test's world: one synthetic month, every component as a real process on loopback, and a ledger.

Data (``make_month``): eight synthetic stores, closed on Sundays, with sales to 2015-06-30 in the sales
store; the actuals of July, appended day by day (store 6 sells 1.8 times its usual from July 1st, so the
drift watch must refit it); and a calendar file of July and August: promotions, every store closed for a
holiday on 2015-08-14, normal days.

Processes (``World.start``): the session's ``mlflow server``; the champion-following predictor with the
transformer in front (``LocalStack``); a challenger-following predictor (the canary) with steady traffic;
the retrain service (``--rollout local``; more than ``FEW`` refitted stores is fleet-sized); the dashboard;
a tritonclient gRPC client in its own process. Servers check an auth file: a planner, a service and an
admin key.

The ``Ledger`` is what the test did, so the invariants know what must be served and stored: the last day
of actuals, the known-ahead calendar pushed so far, every appended row, rows that were refused, and every
job an event or a refresh created.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from mlflow import MlflowClient

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import CALENDAR_COLUMNS, synthesize_with_calendar
from pipelines.stack import LocalStack, Service, free_port, wait_ready
from serving.access.auth_file import hash_key
from tests.support import BIN, Recorder, run_cli, start_dashboard, start_service, stop, stop_service
from tests.system.clients import AliasWatch, GrpcClient, Traffic, v1, wait_for

MODEL = "storecast-month"
STORES = tuple(str(s) for s in range(1, 9))
FEW = 3  # --auto-champion-stores: a version refitting more stores than this is fleet-sized
SEED = 21
FIRST_END = "2015-06-30"  # the first version's data end: "today" when the month begins
MONTH_END = "2015-07-31"
CAL_END = "2015-08-31"  # the last day of the first calendar file
BEYOND = 14  # days asked past the calendar: open or closed by each store's weekday pattern
HOLIDAY = "2015-08-14"  # every store closed (a holiday closure in the first calendar)
DRIFT_STORE, SHIFT = "6", 1.8
WAIT = 300.0  # the longest one wait may take: a fleet fit and its canary on a busy 2-core machine
FINAL = ("done", "failed", "up_to_date")
SALES_APPENDED = "com.storecast.sales.appended"
CALENDAR_UPDATED = "com.storecast.calendar.updated"
RETRAIN_REQUESTED = "com.storecast.retrain.requested"
PING = "dev.knative.sources.ping"

Facts = dict[tuple[str, str], tuple[bool, bool, str]]  # (store, ISO day) -> (open, promo, holiday code)


def write_auth(path: Path, keys: dict[str, str]) -> Path:
    """An auth file with one identity per tier: planner (forecast, refresh), service (+ retrain), admin (+ rollout,
    and the predictors' repository: the retrain service's reloads)."""
    who = "\n".join(f'  - {{name: month-{tier}, tier: {tier}, key_sha256: "{hash_key(key)}"}}'
                    for tier, key in keys.items())
    path.write_text(f"""tiers:
  planner: {{requests_per_second: 50, burst: 100, concurrent: 8, permissions: [forecast, refresh]}}
  service: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain]}}
  admin: {{requests_per_second: null, concurrent: null, permissions: [forecast, refresh, retrain, rollout, admin]}}
identities:
{who}
""")
    return path


def calendar_facts(frame: pd.DataFrame) -> Facts:
    """The (open, promo, holiday) of every row of a calendar frame."""
    days = pd.to_datetime(frame["Date"]).dt.strftime("%Y-%m-%d")
    return {(str(s), d): (bool(o), bool(p), str(h)) for s, d, o, p, h in
            zip(frame["Store"], days, frame["Open"], frame["Promo"], frame["StateHoliday"], strict=True)}


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the JSON records of a sales.appended event."""
    out = frame.copy()
    out["Date"] = pd.to_datetime(out["Date"]).dt.strftime("%Y-%m-%d")
    return json.loads(out.to_json(orient="records"))


@dataclass
class Month:
    """The synthetic data of the month."""

    base: Path  # the sales store's base file (parts go to <base>.parts/)
    actuals: pd.DataFrame  # July, as it will be appended
    calendar: pd.DataFrame  # the first calendar file
    calendar_file: Path
    sunday_closed: frozenset[str]  # stores never open on a Sunday


def make_month(root: Path) -> Month:
    """Sales to FIRST_END (the sales store), July's actuals (DRIFT_STORE shifted), the calendar of July and August."""
    sales, ahead = synthesize_with_calendar(len(STORES), seed=SEED, end=MONTH_END, calendar_days=31)
    july = sales[sales["Date"] > FIRST_END].copy()
    drift = (july["Store"].astype(str) == DRIFT_STORE) & (july["Open"] == 1)
    july.loc[drift, "Sales"] = np.rint(july.loc[drift, "Sales"] * SHIFT).astype(np.int64)
    calendar = pd.concat([july[list(CALENDAR_COLUMNS)], ahead], ignore_index=True)
    holiday = calendar["Date"] == pd.Timestamp(HOLIDAY)
    calendar.loc[holiday, "Open"] = 0
    calendar.loc[holiday, "Promo"] = 0
    calendar.loc[holiday, "StateHoliday"] = "a"
    base = sales[sales["Date"] <= FIRST_END]
    sundays = base[base["Date"].dt.dayofweek == 6]
    ever_open = sundays.groupby(sundays["Store"].astype(str))["Open"].max()
    return Month(write_sales(base, root / "sales.csv.gz"), july.reset_index(drop=True), calendar,
                 write_sales(calendar, root / "calendar.csv"), frozenset(ever_open[ever_open == 0].index))


@dataclass
class Expected:
    """A job the test caused: what it was, and the final statuses it may end in."""

    what: str
    statuses: tuple[str, ...] = ("done", "up_to_date")


@dataclass
class Ledger:
    """What the test did, so the invariants know what must be served and stored."""

    day: str  # the last day of actuals in the sales store
    calendar: Facts  # the known-ahead calendar: the first file with every accepted push laid over it
    appended: list[pd.DataFrame] = field(default_factory=list)
    refused: list[tuple[str, str, float]] = field(default_factory=list)  # (store, day, sales) of refused rows
    jobs: dict[str, Expected] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)  # the drift watch's jobs, as answered


class World:
    """Every process of the loop, the clients to ask them, and the ledger (``start`` then ``stop``)."""

    def __init__(self, root: Path, uri: str) -> None:
        self.root, self.uri = root, uri
        self.month = make_month(root)
        self.keys = {tier: f"sc_month-{tier}-{secrets.token_hex(8)}" for tier in ("planner", "service", "admin")}
        self.auth_file = write_auth(root / "auth.yaml", self.keys)
        self.ledger = Ledger(FIRST_END, calendar_facts(self.month.calendar))
        self.registry = MlflowClient(uri, uri)
        self.stack: LocalStack | None = None
        self.canary = self.retrain = self.dashboard = None
        self.grpc: GrpcClient | None = None
        self.traffic: Traffic | None = None
        self.watch: AliasWatch | None = None
        self.sink = Recorder()
        self._final: dict[str, dict] = {}

    # ---- processes ---------------------------------------------------------------------------------
    def start(self) -> World:
        logs = self.root / "logs"
        logs.mkdir()
        run_cli("train", "--data", str(self.month.base), "--calendar", str(self.month.calendar_file),
                "--tracking-uri", self.uri, "--model-name", MODEL, "--alias", "champion", "--workers", "1",
                "--no-progress", cwd=self.root)
        first = str(self.registry.get_model_version_by_alias(MODEL, "champion").version)
        self.registry.set_registered_model_alias(MODEL, "challenger", first)  # the canary's first version
        self.canary = self._predictor("challenger", logs / "canary.log")  # starts while the stack starts
        self.stack = LocalStack(f"models:/{MODEL}@champion", self.uri, log_dir=logs,
                                predictor_args=["--refresh-seconds", "1"], auth_file=self.auth_file,
                                transformer_args=["--watch-seconds", "1"])
        self.stack.start(timeout=180)
        self.retrain = start_service(
            self.month.base, self.uri, MODEL, self.root, "--auth-file", str(self.auth_file),
            "--auto-champion-stores", str(FEW), "--rollout", "local", "--canary-url", self.canary.url,
            "--reload-url", self.stack.predictors[0].url, "--rollout-steps", "10,50", "--rollout-watch-seconds", "3",
            "--rollout-poll-seconds", "0.5", "--canary-min-requests", "10", "--canary-max-error-ratio", "0.05",
            "--canary-max-p95-ms", "3000", "--rollout-ready-timeout", "120",
            env={"K_SINK": self.sink.url, "STORECAST_RETRAIN_PREDICTOR_API_KEY": self.keys["admin"]},
            wait=False)
        self.dashboard = start_dashboard(
            "--api-url", self.transformer.url, "--retrain-url", self.retrain.url, "--tracking-uri", self.uri,
            "--registry-model", MODEL, "--sales", str(self.month.base), "--sales-check-seconds", "0",
            "--registry-refresh-seconds", "1", log=logs / "dashboard.log")
        wait_ready(f"{self.canary.url}/v2/models/storecast/ready", self.canary, 180)
        wait_ready(f"{self.retrain.url}/healthz", self.retrain, 180)
        self.grpc = GrpcClient(f"127.0.0.1:{self.transformer.grpc_port}", self.keys["service"])
        self.traffic = Traffic(self.canary.url, STORES, "2015-08-03")
        self.watch = AliasWatch(self.uri, MODEL)
        return self

    def _predictor(self, alias: str, log: Path) -> Service:
        """A predictor following ``alias`` (the canary follows challenger), on its own free ports (not waited for)."""
        http, grpc = free_port(), free_port()
        proc = subprocess.Popen([sys.executable, "-m", "predictor", "--host", "127.0.0.1", "--model_uri",
                                 f"models:/{MODEL}@{alias}", "--refresh-seconds", "1", "--http_port", str(http),
                                 "--grpc_port", str(grpc)], env={**os.environ, "MLFLOW_TRACKING_URI": self.uri},
                                stdout=subprocess.DEVNULL, stderr=log.open("w"))
        return Service(f"predictor@{alias}", proc, http, grpc, log)

    @property
    def transformer(self) -> Service:
        assert self.stack is not None
        return self.stack.transformer

    def stop(self) -> None:
        for part in (self.traffic, self.watch, self.grpc):
            if part is not None:
                part.stop()
        if self.dashboard is not None:
            stop_service(self.dashboard)
        for svc in (self.retrain, self.canary):
            if svc is not None:
                stop(svc.proc)
        if self.stack is not None:
            self.stack.stop()
        self.sink.close()

    # ---- asking ------------------------------------------------------------------------------------
    def auth(self, tier: str) -> dict[str, str]:
        return {"x-api-key": self.keys[tier]}

    def alias(self, name: str = "champion") -> str | None:
        assert self.watch is not None
        return self.watch.current(name)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.registry.get_model_version(MODEL, version).tags)

    def event(self, kind: str, data: Any, tier: str = "service") -> httpx.Response:
        """One CloudEvent (binary mode) to the retrain service, with the key of ``tier``."""
        headers, body = to_binary(CloudEvent({"type": kind, "source": "tests.system", "id": uuid.uuid4().hex}, data))
        return httpx.post(self.retrain.url, headers={**headers, **self.auth(tier)}, content=body, timeout=180)

    def job(self, job_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.retrain.url}/jobs/{job_id}", headers=self.auth("service"), timeout=30)
        return r.json() if r.status_code == 200 else {"status": f"HTTP {r.status_code}", "error": r.text[:300]}

    def jobs(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.retrain.url}/jobs", headers=self.auth("service"), timeout=30).json()["jobs"]

    def rollouts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.retrain.url}/rollouts", headers=self.auth("service"), timeout=30).json()["rollouts"]

    def expect_job(self, answer: dict[str, Any], what: str, statuses: tuple[str, ...] = ("done", "up_to_date")) -> str:
        job_id = answer.get("job_id")
        assert job_id, f"{what}: the answer names no job: {answer}"
        self.ledger.jobs[job_id] = Expected(what, statuses)
        return job_id

    def wait_job(self, job_id: str, timeout: float = WAIT) -> dict[str, Any]:
        what = self.ledger.jobs[job_id].what if job_id in self.ledger.jobs else "a job"
        return wait_for(f"job {job_id} ({what}) to finish", lambda: ((j := self.job(job_id)).get("status") in FINAL,
                                                                      j), timeout)

    def wait_rollout(self, version: str, timeout: float = WAIT) -> dict[str, Any]:
        def probe() -> tuple[bool, Any]:
            docs = [d for d in self.rollouts() if str(d["version"]) == version]
            return bool(docs) and docs[0]["status"] != "running", docs[0] if docs else "no rollout of it yet"
        return wait_for(f"the rollout of version {version} to end", probe, timeout)

    def settle(self, timeout: float = WAIT) -> None:
        """Wait (bounded) until every job the test caused finished, no rollout runs or waits, and the
        transformer serves the champion."""
        def jobs_finished() -> tuple[bool, Any]:
            pending = {}
            for job_id, expected in self.ledger.jobs.items():
                if job_id in self._final:
                    continue
                job = self.job(job_id)
                rollout = (job.get("result") or {}).get("rollout")
                if job.get("status") in FINAL and not isinstance(rollout, str):  # a "queued" rollout is not over
                    self._final[job_id] = job
                else:
                    pending[job_id] = (expected.what, job.get("status"), job.get("phase"), rollout)
            return not pending, pending

        wait_for("every job the test caused to finish (and its rollout)", jobs_finished, timeout)
        wait_for("no rollout running", lambda: (not (r := [d["version"] for d in self.rollouts()
                                                            if d["status"] == "running"]), r), timeout)
        day = self.next_days(CAL_END)[0] if self.ledger.day < CAL_END else CAL_END

        def serves_champion() -> tuple[bool, str]:
            champion = self.alias()
            answer = v1(self.transformer.url, self.auth("service"), STORES[:1], day, day)
            return champion is not None and answer.version == champion, \
                f"champion {champion}, the transformer answers version {answer.version} {answer.error or ''}"

        wait_for("the transformer to serve the champion", serves_champion, 120)

    # ---- acting ------------------------------------------------------------------------------------
    def next_days(self, last: str) -> list[str]:
        """The days after the last day of actuals, up to ``last``."""
        first = pd.Timestamp(self.ledger.day) + pd.Timedelta(days=1)
        return [d.strftime("%Y-%m-%d") for d in pd.date_range(first, last, freq="D")]

    def append_day(self, day: str) -> dict[str, Any]:
        """A day of actuals: on odd days as the rows of a sales.appended event (the service appends them); on
        even days written by ``storecast data append --sales ... --url ...`` (the CLI tells the service)."""
        rows = self.month.actuals[self.month.actuals["Date"] == pd.Timestamp(day)]
        if int(day[-2:]) % 2:
            r = self.event(SALES_APPENDED, {"rows": records(rows)})
            assert r.status_code == 200, f"appending {day}: HTTP {r.status_code}: {r.text[:800]}"
            self.ledger.appended.append(rows)
            answer = r.json()
        else:
            proc = self.data_append(write_sales(rows, self.root / "actuals" / f"{day}.csv"))
            if "appended" in proc.stderr:  # written to the store, whatever the service answered
                self.ledger.appended.append(rows)
            assert proc.returncode == 0, f"storecast data append {day}: exit {proc.returncode}: {proc.stderr[-1500:]}"
            answer = json.loads(proc.stdout.strip().splitlines()[-1])
        self.ledger.day = day
        job = answer.get("job")
        if isinstance(job, dict) and job.get("job_id"):
            self.ledger.jobs[job["job_id"]] = Expected(f"drift refit after {day}")
            self.ledger.drift.append(job)
        return answer

    def data_append(self, path: Path) -> subprocess.CompletedProcess:
        """``storecast data append`` into the sales store, the stores checked against the champion, the retrain
        service told with the service key."""
        return self.cli("data", "append", "--data", str(path), "--sales", str(self.month.base), "--url",
                        self.retrain.url, "--tracking-uri", self.uri, "--model-name", MODEL,
                        env={"STORECAST_API_KEY": self.keys["service"]})

    def refresh(self, stores: list[str]) -> dict[str, Any]:
        """A planner presses "Refresh forecast" and follows the job, as the page does."""
        return self.follow_refresh(self.ask_refresh(stores))

    def ask_refresh(self, stores: list[str]) -> str:
        """The dashboard's refresh button: retrain.requested for ``stores`` with the planner's key; the job id."""
        r = httpx.post(f"{self.dashboard.url}/api/retrain", json={"store_ids": stores}, headers=self.auth("planner"),
                       timeout=60)
        assert r.status_code in (200, 202), f"refresh of {stores}: HTTP {r.status_code}: {r.text[:800]}"
        return self.expect_job(r.json(), f"planner refresh of stores {', '.join(stores)}")

    def follow_refresh(self, job_id: str) -> dict[str, Any]:
        """The job through the dashboard's job view until it finished."""
        def probe() -> tuple[bool, Any]:
            job = httpx.get(f"{self.dashboard.url}/api/jobs/{job_id}", headers=self.auth("planner"), timeout=30)
            return job.status_code == 200 and job.json().get("status") in FINAL, job.json()
        return wait_for(f"the refresh job {job_id} to finish", probe, WAIT)

    def calendar_file(self, rows: list[dict[str, Any]], name: str) -> Path:
        frame = pd.DataFrame(rows, columns=["Store", "Date", "Open", "Promo", "StateHoliday", "SchoolHoliday"])
        path = self.root / "calendars" / name
        path.parent.mkdir(exist_ok=True)
        frame.to_csv(path, index=False)
        return path

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``storecast ARGS`` (its exit status and output are the caller's to judge)."""
        return subprocess.run([str(BIN / "storecast"), *args], capture_output=True, text=True, timeout=180,
                              cwd=self.root, env={**os.environ, **(env or {})})

    def upload_calendar(self, path: Path) -> subprocess.CompletedProcess:
        """``storecast calendar upload FILE --sales STORE``: the calendar into the sales store; prints its ref."""
        return self.cli("calendar", "upload", str(path), "--sales", str(self.month.base))

    def push_calendar(self, path: Path) -> dict[str, Any]:
        """Upload a calendar, then com.storecast.calendar.updated naming its ref; the ledger learns its rows."""
        return self.announce_calendar(self.stored_calendar(path), path)

    def stored_calendar(self, path: Path) -> str:
        """``storecast calendar upload``, asserted to work: the ref it prints."""
        up = self.upload_calendar(path)
        assert up.returncode == 0, f"storecast calendar upload {path.name}: exit {up.returncode}: {up.stderr[-1500:]}"
        return up.stdout.strip().splitlines()[-1].strip()

    def announce_calendar(self, ref: str, path: Path) -> dict[str, Any]:
        """com.storecast.calendar.updated naming ``ref`` (the upload of ``path``), asserted to be taken."""
        r = self.event(CALENDAR_UPDATED, {"calendar": ref})
        assert r.status_code in (200, 202), f"calendar.updated {ref}: HTTP {r.status_code}: {r.text[:800]}"
        answer = r.json()
        if answer.get("job_id"):
            answer = self.wait_job(self.expect_job(answer, f"calendar push {ref}", ("done",)))
            assert answer["status"] == "done", f"calendar push {ref}: {answer}"
        self.ledger.calendar.update(calendar_facts(pd.read_csv(path, dtype={"StateHoliday": str})))
        return answer

    def push_calendar_cli(self, path: Path) -> dict[str, Any]:
        """``storecast calendar push``: the same, straight to the registry."""
        out = run_cli("calendar", "push", "--calendar", str(path), "--tracking-uri", self.uri, "--model-name", MODEL,
                      "--json", cwd=self.root)
        self.ledger.calendar.update(calendar_facts(pd.read_csv(path, dtype={"StateHoliday": str})))
        return json.loads(out.stdout.strip().splitlines()[-1])
