"""A fleet retrain as a KubeRay RayJob (``--fleet-backend rayjob``): submitted, watched, its challenger read.

``pipelines.training.rayjob.submit_fleet_retrain`` creates the RayJob (the cluster of the ``storecast-train``
template, ``storecast train --backend ray --alias challenger`` as its driver); the job waits for
KubeRay's ``jobStatus``, then takes the challenger the RayJob registered (its own gate decided) and
hands it to the rollout like any fleet version.
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.retrain.jobstore import Job
from pipelines.versions.publish import PublishError

POLL_SECONDS = 15.0
TIMEOUT_SECONDS = 6 * 3600.0


def fleet_on_rayjob(manager: Any, job: Job, poll: float = POLL_SECONDS, timeout: float = TIMEOUT_SECONDS,
                    api: Any = None) -> tuple[str, dict[str, Any]]:
    from pipelines.training import rayjob

    before = manager.registry.alias("challenger")
    made = rayjob.submit_fleet_retrain(reason=job.reason or "fleet retrain", data=manager.sales.location,
                                       tracking_uri=manager.registry.uri, model_name=manager.registry.model_name,
                                       alias="challenger", job_id=job.id, api=api)
    manager._phase(job, "rayjob")
    deadline = time.monotonic() + timeout
    while True:
        st = rayjob.status(made["name"], made["namespace"], api=api)
        if st["job_status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        if time.monotonic() > deadline:
            raise PublishError(f"RayJob {made['name']} not finished after {timeout:.0f} s ({st['job_status']})")
        time.sleep(poll)
    if st["job_status"] != "SUCCEEDED":
        raise PublishError(f"RayJob {made['name']} {st['job_status']}: {st['message'] or 'see its logs'}")
    after = manager.registry.alias("challenger")
    if after is None or (before is not None and str(after.version) == str(before.version)):
        raise PublishError(f"RayJob {made['name']} succeeded but moved no challenger (its version failed the gate?)")
    version = str(after.version)
    result = {"version": version, "model_uri": f"models:/{manager.registry.model_name}/{version}",
              "promoted": "challenger", "rayjob": made["name"], "store_ids": "every store"}
    if manager.rollout is not None:
        result["rollout"] = "queued"
        manager._rollouts.put((version, job.id))
    return "done", result
