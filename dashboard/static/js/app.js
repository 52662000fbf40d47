// The planners' page: sign in, pick stores, see each store's forecast, compare stores, try a promotion or a
// closure on a day (what-if), ask the retrain service to refit one store.

import { ApiError, call, clearKey, getKey, setKey } from "./api.js";
import { drawChart, followWidth, legendExtra } from "./chart.js";
import { addDays, todayUTC } from "./dates.js";
import { demand, storeRows } from "./model.js";
import { refreshStore } from "./refresh.js";
import { download, fillTable, toCSV } from "./table.js";
import { emptyWhatIf, instance, isEmpty, renderWhatIf, valuesByDate, withDay, within } from "./whatif.js";

const $ = (id) => document.getElementById(id);
const SAVED = "storecast.stores";
const WINDOW = "storecast.window";
const MAX_STORES = 50;

const state = {
  config: { refresh: false, registry: false, sales: false, history_days: 28, windows: [7, 14, 42] },
  model: null, stores: [], window: 7, data: new Map(), bad: new Map(), versions: new Map(), generation: 0,
  firstChart: false, refreshing: new Set(), whatIf: new Map(),
};

// ---- errors ------------------------------------------------------------------------------------
function showError(err) {
  const banner = $("error-banner");
  banner.querySelector(".message").textContent = err.message;
  banner.dataset.status = String(err.status ?? "");
  banner.hidden = false;
  if (err instanceof ApiError && err.status === 401 && err.what !== "session") {
    signOut(false);
  }
}
function clearError() { $("error-banner").hidden = true; $("error-banner").dataset.status = ""; }

// ---- saved list --------------------------------------------------------------------------------
function loadSaved() {
  try {
    const saved = JSON.parse(localStorage.getItem(SAVED) || "[]");
    state.stores = Array.isArray(saved) ? saved.filter((s) => typeof s === "string").slice(0, MAX_STORES) : [];
  } catch (err) { state.stores = []; }
  const w = Number(localStorage.getItem(WINDOW));
  state.window = state.config.windows.includes(w) ? w : 7;
  $("window-select").value = String(state.window);
}
function save() { localStorage.setItem(SAVED, JSON.stringify(state.stores)); }

function renderList() {
  const ul = $("store-list");
  ul.textContent = "";
  for (const id of state.stores) {
    const li = document.createElement("li");
    li.dataset.store = id;
    li.title = state.bad.get(id) || "";
    if (state.bad.has(id)) li.className = "bad";
    const x = document.createElement("button");
    x.type = "button";
    x.textContent = "×";
    x.setAttribute("aria-label", `remove store ${id}`);
    x.addEventListener("click", () => removeStore(id));
    li.append(`store ${id}`, x);
    ul.append(li);
  }
  $("empty").hidden = state.stores.length > 0;
}

function addStores(text) {
  const ids = text.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
  const fresh = ids.filter((id) => !state.stores.includes(id));
  if (state.stores.length + fresh.length > MAX_STORES) {
    showError(new Error(`At most ${MAX_STORES} stores at once: remove some first.`));
    return;
  }
  state.stores.push(...fresh);
  save();
  renderList();
  if (fresh.length) reloadAll();
}

function removeStore(id) {
  state.stores = state.stores.filter((s) => s !== id);
  state.data.delete(id);
  state.bad.delete(id);
  state.whatIf.delete(id);
  save();
  const card = document.querySelector(`.card[data-store="${CSS.escape(id)}"]`);
  if (card) card.remove();
  renderList();
  renderFleet();
  renderVersion();
}

// ---- data --------------------------------------------------------------------------------------
function windowDates() {
  const today = todayUTC();
  return { today, begin: addDays(today, -state.config.history_days), end: addDays(today, state.window - 1) };
}

async function forecast(ids, begin, end) {
  const body = { instances: ids.map((id) => ({ storeId: id, beginDate: begin, endDate: end })) };
  const { data } = await call("/api/forecast", { method: "POST", body, what: "forecast" });
  return { predictions: data.predictions, version: data.model_version ?? null };
}

/** Every store's prediction; a 400 for a batch is retried store by store, so one unknown store names itself. */
async function forecasts(ids, begin, end) {
  try {
    const { predictions, version } = await forecast(ids, begin, end);
    return { found: new Map(predictions.map((p, i) => [ids[i], { prediction: p, version }])), bad: new Map() };
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 400 || ids.length === 1) {
      if (err instanceof ApiError && err.status === 400) return { found: new Map(), bad: new Map([[ids[0], err]]) };
      throw err;
    }
  }
  const found = new Map(), bad = new Map();
  await Promise.all(ids.map(async (id) => {
    try {
      const { predictions, version } = await forecast([id], begin, end);
      found.set(id, { prediction: predictions[0], version });
    } catch (err) {
      if (err instanceof ApiError && err.status === 400) bad.set(id, err); else throw err;
    }
  }));
  return { found, bad };
}

async function optional(promise) {
  try { return await promise; } catch (err) { if (err.status === 401) throw err; return null; }
}

async function reloadAll() {
  const generation = ++state.generation;
  const ids = [...state.stores];
  renderList();
  if (!ids.length) { renderCards(); renderFleet(); return; }
  const { today, begin, end } = windowDates();
  document.body.dataset.loading = "1";
  try {
    const stores = ids.map(encodeURIComponent).join(",");
    const [fc, sales, current] = await Promise.all([
      forecasts(ids, begin, end),
      state.config.sales ? optional(call(`/api/sales?stores=${stores}&days=${state.config.history_days}`,
                                         { what: "sales" })) : null,
      loadMetrics(null, ids), // the registry's current version, asked at the same time
    ]);
    if (generation !== state.generation) return;
    // each store's version: the one its answer names (metrics fetched if another), else the current one
    const named = [...new Set([...fc.found.values()].map((f) => f.version).filter(Boolean))];
    await Promise.all(named.filter((v) => v !== current).map((v) => loadMetrics(v, ids)));
    const shown = [current];
    if (generation !== state.generation) return;
    state.bad = new Map([...fc.bad].map(([id, err]) => [id, err.message]));
    for (const [id, { prediction, version }] of fc.found) {
      const actual = sales && sales.data.stores[id];
      state.data.set(id, { rows: storeRows(prediction, actual, today), version: version || shown[0], begin, end });
    }
    for (const id of fc.bad.keys()) state.data.delete(id);
    if (fc.bad.size) showError(fc.bad.values().next().value);
    else clearError();
    renderList();
    renderCards();
    renderFleet();
    renderVersion();
    for (const id of ids) if (!isEmpty(state.whatIf.get(id))) applyWhatIf(id); // the what-if on the new data
  } catch (err) {
    if (generation === state.generation) showError(err);
  } finally {
    if (generation === state.generation) delete document.body.dataset.loading;
  }
}

async function loadModel() {
  if (!state.config.registry) return;
  try {
    state.model = (await call("/api/model", { what: "model" })).data;
    if (!state.versions.has(state.model.version)) {
      state.versions.set(state.model.version, { data_end: state.model.data_end, stores: {} });
    }
    const list = $("store-options");
    list.textContent = "";
    for (const id of state.model.stores.slice(0, 5000)) {
      const o = document.createElement("option");
      o.value = id;
      list.append(o);
    }
    renderVersion();
  } catch (err) {
    if (err.status === 401) showError(err);
  }
}

/** Holdout metrics of ``version`` (the registry's current one for null) for these stores, kept per version. */
async function loadMetrics(version, ids) {
  if (!state.config.registry) return version;
  const q = version ? `&version=${encodeURIComponent(version)}` : "";
  const res = await optional(call(`/api/metrics?stores=${ids.map(encodeURIComponent).join(",")}${q}`,
                                  { what: "metrics" }));
  if (!res) return version;
  const m = res.data;
  const entry = state.versions.get(m.version) || { data_end: m.data_end, stores: {} };
  Object.assign(entry.stores, m.stores);
  state.versions.set(m.version, entry);
  return m.version;
}

// ---- rendering ---------------------------------------------------------------------------------
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);

function renderVersion() {
  const label = $("version-label");
  const shown = [...new Set(state.stores.map((id) => state.data.get(id)).filter(Boolean).map((d) => d.version)
    .filter(Boolean))];
  const m = state.model;
  if (!shown.length && m) shown.push(m.version);
  if (!shown.length) { label.textContent = ""; delete label.dataset.version; return; }
  label.dataset.version = shown.join(",");
  const text = shown.map((v) => {
    const info = state.versions.get(v);
    const alias = m && m.version === v && m.alias ? ` (${m.alias})` : "";
    return `${v}${alias}${info && info.data_end ? ` · data to ${info.data_end}` : ""}`;
  });
  label.textContent = `model version${shown.length > 1 ? "s" : ""} ${text.join("; ")}` +
    (m && shown.length === 1 && m.version === shown[0] ? ` · ${m.stores.length} stores` : "");
}

function accuracyText(id, version) {
  const info = version && state.versions.get(version);
  const m = info && info.stores[id];
  const parts = [];
  if (version) parts.push(`version ${version}`);
  if (m && m.last_date) parts.push(`data to ${m.last_date}`);
  if (m) {
    parts.push(`holdout WAPE ${pct(m.wape)} (seasonal naive ${pct(m.baseline_wape)})`);
    parts.push(`interval coverage ${pct(m.coverage)}`);
  }
  return parts.join(" · ");
}

function card(id) {
  let el = document.querySelector(`.card[data-store="${CSS.escape(id)}"]`);
  if (el) return el;
  el = $("card-template").content.firstElementChild.cloneNode(true);
  el.dataset.store = id;
  for (const sel of ["[data-testid]"]) el.querySelectorAll(sel).forEach((c) => { c.dataset.store = id; });
  el.querySelector(".title").textContent = `Store ${id}`;
  const button = el.querySelector(".refresh");
  el.querySelector(".retrain").hidden = !state.config.refresh;
  button.addEventListener("click", () => onRefresh(id));
  el.querySelector(".whatif").addEventListener("submit", (e) => {
    e.preventDefault();
    const kind = el.querySelector(".whatif-kind").value, day = el.querySelector(".whatif-day").value;
    if (!day) return;
    state.whatIf.set(id, withDay(state.whatIf.get(id) || emptyWhatIf(), kind, day));
    applyWhatIf(id);
  });
  el.querySelector(".whatif-clear").addEventListener("click", () => {
    state.whatIf.delete(id);
    drawCard(id);
  });
  $("cards").append(el);
  return el;
}

// ---- what-if -----------------------------------------------------------------------------------
/** Ask the business API for the store's shown future days with its what-if days; redraw with both. */
async function applyWhatIf(id) {
  const d = state.data.get(id);
  const future = d ? d.rows.filter((r) => !r.past) : [];
  if (!future.length) return;
  const first = future[0].date, last = future[future.length - 1].date;
  const wi = within(state.whatIf.get(id) || emptyWhatIf(), first, last);
  if (isEmpty(wi)) { state.whatIf.delete(id); drawCard(id); return; }
  const el = card(id);
  const apply = el.querySelector("[data-testid=whatif-apply]");
  apply.disabled = true;
  try {
    const body = { instances: [instance(id, first, last, wi)] };
    const { data } = await call("/api/forecast", { method: "POST", body, what: "forecast" });
    if (state.data.get(id) !== d) return; // reloaded meanwhile: that reload asks again
    state.whatIf.set(id, { ...wi, values: valuesByDate(data.predictions[0]) });
    drawCard(id);
  } catch (err) {
    showError(err);
  } finally {
    apply.disabled = false;
  }
}


function drawCard(id) {
  const el = card(id);
  const d = state.data.get(id);
  el.classList.toggle("bad", !d);
  if (!d) {
    el.querySelector(".accuracy").textContent = state.bad.get(id) || "";
    return;
  }
  el.querySelector(".accuracy").textContent = accuracyText(id, d.version);
  const chart = el.querySelector(".chart");
  const whatIf = renderWhatIf(el, d.rows, state.whatIf.get(id));
  drawChart(chart, d.rows, null, whatIf);
  chart.dataset.version = d.version || "";
  followWidth(chart);
  legendExtra(el.querySelector(".legend-extra"), d.rows, whatIf);
  fillTable(el.querySelector("table.numbers"), d.rows, whatIf);
  if (!state.firstChart) {
    state.firstChart = true;
    performance.mark("first-chart");
  }
}

function renderCards() {
  const wanted = new Set(state.stores);
  document.querySelectorAll(".card").forEach((c) => { if (!wanted.has(c.dataset.store)) c.remove(); });
  for (const id of state.stores) {
    drawCard(id);
    $("cards").append(card(id)); // keep the cards in the list's order
  }
}

function renderFleet() {
  const rows = state.stores.filter((id) => state.data.has(id)).map((id) => ({ id, ...demand(state.data.get(id).rows) }));
  $("fleet").hidden = rows.length < 2;
  $("fleet-window").textContent = `next ${state.window} days, open days`;
  const fill = (ol, list, text) => {
    ol.textContent = "";
    for (const r of list) {
      const li = document.createElement("li");
      li.dataset.store = r.id;
      li.innerHTML = "";
      const name = document.createElement("strong");
      name.textContent = `store ${r.id}`;
      const detail = document.createElement("span");
      const t = text(r);
      detail.textContent = ` ${t.text}`;
      if (t.cls) detail.className = t.cls;
      li.append(name, detail);
      ol.append(li);
    }
  };
  fill($("fleet-demand"), [...rows].sort((a, b) => b.total - a.total),
       (r) => ({ text: `${Math.round(r.total).toLocaleString("en-US")}` }));
  fill($("fleet-change"), [...rows].sort((a, b) => Math.abs(b.change ?? 0) - Math.abs(a.change ?? 0)),
       (r) => (r.change === null ? { text: "no last week to compare" }
         : { text: `${r.change >= 0 ? "+" : ""}${(100 * r.change).toFixed(1)}% vs ${r.basis}`,
             cls: r.change >= 0 ? "up" : "down" }));
}

// ---- refresh -----------------------------------------------------------------------------------
/** The actual sales already joined to ``rows``, in the shape of /api/sales. */
function actualOf(rows) {
  const a = { dates: [], sales: [], open: [] };
  for (const r of rows) {
    if (r.actual === null) continue;
    a.dates.push(r.date);
    a.sales.push(r.actual);
    a.open.push(r.actualOpen ? 1 : 0);
  }
  return a;
}

function onRefresh(id) {
  if (state.refreshing.has(id)) return;
  state.refreshing.add(id);
  const el = card(id);
  const button = el.querySelector(".refresh");
  const status = el.querySelector(".job");
  button.disabled = true;
  refreshStore(id, {
    status(kind, text, seconds) {
      status.dataset.state = kind;
      status.textContent = text;
      if (seconds !== undefined) status.dataset.seconds = seconds.toFixed(2);
    },
    current: () => state.data.get(id),
    async fetchLatest() {
      const d = state.data.get(id);
      const dates = d || windowDates();
      const { predictions, version } = await forecast([id], dates.begin, dates.end);
      return { rows: storeRows(predictions[0], actualOf(d ? d.rows : []), windowDates().today), version };
    },
    async redraw(latest, version) {
      const d = state.data.get(id) || windowDates();
      const served = latest.version || version;
      // one version serves the whole fleet: without model_version in the answers, it is every store's now
      const moved = latest.version ? [id] : state.stores.filter((s) => state.data.has(s));
      await Promise.all([loadMetrics(served, moved), loadModel()]);
      state.data.set(id, { ...d, rows: latest.rows, version: served });
      for (const s of moved) if (s !== id) state.data.get(s).version = served;
      state.bad.delete(id);
      for (const s of moved) drawCard(s);
      for (const s of moved) if (!isEmpty(state.whatIf.get(s))) applyWhatIf(s);
      renderFleet();
      renderVersion();
    },
    error: showError,
  }).finally(() => { state.refreshing.delete(id); button.disabled = false; });
}

// ---- sign in / out -----------------------------------------------------------------------------
function enter() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("sign-out").hidden = false;
  renderList();
  loadModel();
  reloadAll();
}

function signOut(clear = true) {
  clearKey();
  $("main").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-key").value = "";
  if (clear) clearError();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("login-key").value.trim();
  const button = document.querySelector("[data-testid=login-submit]");
  button.disabled = true;
  try {
    await call("/api/session", { method: "POST", key, what: "session" });
    setKey(key);
    clearError();
    enter();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

async function boot() {
  try {
    state.config = { ...state.config, ...(await call("/api/config", { what: "config", key: null })).data };
  } catch (err) {
    showError(err);
  }
  loadSaved();
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(true));
  $("error-banner").querySelector(".close").addEventListener("click", clearError);
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    addStores($("store-search").value);
    $("store-search").value = "";
  });
  $("window-select").addEventListener("change", (e) => {
    state.window = Number(e.target.value);
    localStorage.setItem(WINDOW, String(state.window));
    reloadAll();
  });
  $("reload").addEventListener("click", () => reloadAll());
  $("download-csv").addEventListener("click", () => {
    const stores = state.stores.filter((id) => state.data.has(id))
      .map((id) => ({ storeId: id, rows: state.data.get(id).rows, version: state.data.get(id).version }));
    const { today } = windowDates();
    download(`storecast-forecast-${today}-${state.window}d.csv`, toCSV(stores));
  });
  if (getKey() !== null) enter();
  document.body.dataset.ready = "1";
}

boot();
