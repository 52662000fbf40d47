// "Refresh forecast": send the retrain request, follow the job (queued, fitting, registered) and then the
// forecast service until it serves the new version (served), then redraw.

import { ApiError, call, sleep } from "./api.js";

const JOB_POLL_MS = 400;
const SERVED_POLL_MS = 400;
const SERVED_TIMEOUT_MS = 180000;
const JOB_TIMEOUT_MS = 900000;

function changed(before, after) {
  if (!before || before.length !== after.length) return true;
  return after.some((r, i) => r.value !== before[i].value || r.lower !== before[i].lower);
}

async function pollJob(id) {
  for (let failures = 0; ; ) {
    try {
      return (await call(`/api/jobs/${encodeURIComponent(id)}`, { what: "job" })).data;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.status === 429) { await sleep(1000 * (Number(err.retryAfter) || 1)); continue; }
      if ([0, 502, 503, 504].includes(err.status) && ++failures < 5) { await sleep(1000 * failures); continue; }
      throw err;
    }
  }
}

/**
 * ``ui``: status(state, text, seconds?), current() -> {rows, version}, fetchLatest() -> {rows, version},
 * redraw(latest, version), error(err). States: queued, fitting, registered, served, up_to_date, failed.
 */
export async function refreshStore(storeId, ui) {
  try {
    await follow(storeId, ui);
  } catch (err) {
    ui.status("failed", `refresh failed: ${err.message}`);
    ui.error(err);
  }
}

async function follow(storeId, ui) {
  const t0 = performance.now();
  performance.mark(`refresh-start:${storeId}`);
  ui.status("queued", "sending the refresh request…");
  let job;
  try {
    job = (await call("/api/retrain", { method: "POST", body: { store_ids: [storeId] }, what: "retrain" })).data;
    while (job.status !== "done") {
      if (job.status === "up_to_date") {
        const v = job.result && job.result.version;
        ui.status("up_to_date", `up to date${v ? ` (version ${v} covers the latest sales)` : ""}`);
        return;
      }
      if (job.status === "failed") {
        const reason = job.error || (job.result && job.result.error) || "the retrain service gave no reason";
        ui.status("failed", `refresh failed: ${reason}`);
        return;
      }
      ui.status(job.status === "queued" ? "queued" : "fitting",
                job.status === "queued" ? "queued: waiting for the retrain service" : "fitting the model…");
      if (performance.now() - t0 > JOB_TIMEOUT_MS) {
        ui.status("fitting", "still fitting after 15 minutes; reload the page later");
        return;
      }
      await sleep(JOB_POLL_MS);
      job = await pollJob(job.job_id);
    }
  } catch (err) {
    ui.status("failed", `refresh failed: ${err.message}`);
    ui.error(err);
    return;
  }
  const result = job.result || {};
  const version = String(result.version ?? result.model_version ?? "");
  if (!result.promoted) {
    const gate = result.gate && result.gate[storeId];
    const why = gate === "fail" ? "the new model did not pass the quality gate" : "no alias was moved to it";
    ui.status("failed", `refresh failed: version ${version} was registered but is not served (${why})`);
    return;
  }
  if (result.promoted !== "champion") {
    ui.status("registered", `registered as version ${version} (${result.promoted}); it is served once its canary passes`);
    return;
  }
  ui.status("registered", `registered as version ${version}; waiting for the forecast service to serve it…`);
  const before = ui.current();
  while (performance.now() - t0 < SERVED_TIMEOUT_MS) {
    let latest;
    try {
      latest = await ui.fetchLatest();
    } catch (err) {
      if (err instanceof ApiError && [0, 429, 502, 503, 504].includes(err.status)) {
        await sleep(1000 * (Number(err.retryAfter) || 1));
        continue;
      }
      ui.status("failed", `refresh failed: ${err.message}`);
      ui.error(err);
      return;
    }
    const served = latest.version ? String(latest.version) === version : changed(before && before.rows, latest.rows);
    if (served) {
      await ui.redraw(latest, version);
      performance.mark(`refresh-drawn:${storeId}`);
      const secs = (performance.now() - t0) / 1000;
      ui.status("served", `served: version ${version}, redrawn ${secs.toFixed(1)} s after the click`, secs);
      return;
    }
    await sleep(SERVED_POLL_MS);
  }
  ui.status("registered", `registered as version ${version}, not served yet after 3 minutes; reload later`);
}
