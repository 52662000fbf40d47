"""The retrain service's ``/metrics`` (Prometheus text, from a collector set of its own).

- ``storecast_retrain_jobs_total{outcome}``: finished jobs (done, failed, up_to_date) and attempts
  that will be retried (retried) or were cut short by a restart (interrupted);
- ``storecast_retrain_fit_seconds``: fit time of each job (histogram);
- ``storecast_retrain_queue``: jobs queued or running;
- ``storecast_sales_source_up``: 1 when the sales store could be read the last time, else 0;
- ``storecast_retrain_job_store_up``: 1 when the job store could be written the last time checked, else 0;
- ``storecast_rollouts_total{outcome}``: promoted, rolledback, superseded, error (could not finish);
- ``storecast_drift_wape{group}``: the champion's rolling WAPE on the days after its data, per store group;
- ``storecast_drift_worst_wape{store, rank}``: the worst stores by that WAPE (rank 1 the worst);
- ``storecast_drift_stores{state}``: stores scored, and drifting (refitted automatically).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pipelines.retrain.drift import DriftReport

JOB_OUTCOMES = ("done", "failed", "up_to_date", "retried", "interrupted")
ROLLOUT_OUTCOMES = ("promoted", "rolledback", "superseded", "error")


class ServiceMetrics:
    """The service's Prometheus metrics, in their own ``CollectorRegistry`` (``collectors``)."""

    def __init__(self, worst: int = 10) -> None:
        self.collectors = CollectorRegistry()
        r = self.collectors
        self.jobs = Counter("storecast_retrain_jobs", "Retrain jobs by outcome", ["outcome"], registry=r)
        for o in JOB_OUTCOMES:
            self.jobs.labels(o)
        self.fit = Histogram("storecast_retrain_fit_seconds", "Fit time of a retrain job", registry=r,
                             buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600))
        self.queue = Gauge("storecast_retrain_queue", "Retrain jobs queued or running", registry=r)
        self.source = Gauge("storecast_sales_source_up", "1 when the sales store was readable the last time",
                            registry=r)
        self.job_store = Gauge("storecast_retrain_job_store_up", "1 when the job store was writable the last time",
                               registry=r)
        self.rollouts = Counter("storecast_rollouts", "Automatic rollouts by outcome", ["outcome"], registry=r)
        for o in ROLLOUT_OUTCOMES:
            self.rollouts.labels(o)
        self.drift_wape = Gauge("storecast_drift_wape", "Champion's rolling WAPE after its data, per store group",
                                ["group"], registry=r)
        self.worst = Gauge("storecast_drift_worst_wape", "The worst stores by rolling WAPE", ["store", "rank"],
                           registry=r)
        self.drift_stores = Gauge("storecast_drift_stores", "Stores scored / drifting", ["state"], registry=r)
        self.n_worst = worst

    def drift(self, report: DriftReport) -> None:
        self.drift_wape.clear()
        for group, g in report.groups.items():
            self.drift_wape.labels(group).set(g["wape"])
        self.worst.clear()
        for rank, (store, wape) in enumerate(report.worst(self.n_worst), 1):
            self.worst.labels(store, str(rank)).set(wape)
        self.drift_stores.labels("scored").set(sum(1 for v in report.stores.values() if v["days"]))
        self.drift_stores.labels("drifting").set(len(report.drifting))

    def text(self) -> bytes:
        return generate_latest(self.collectors)
