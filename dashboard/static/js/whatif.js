// What-if: a promotion or a closure on chosen days of a store's shown window, asked of the business API
// (promoDays / closedDays of a V1 instance), and what it changes against the forecast shown (the baseline).

import { weekday } from "./dates.js";

export const KINDS = { promo: "promotion", closed: "closure" };

/** An empty what-if: the days of each kind (ISO dates, sorted). */
export const emptyWhatIf = () => ({ promo: [], closed: [], values: null });

/** ``wi`` with ``day`` of ``kind`` added (a day is a promotion or a closure, not both). */
export function withDay(wi, kind, day) {
  const other = kind === "promo" ? "closed" : "promo";
  const next = { ...wi, [other]: wi[other].filter((d) => d !== day) };
  next[kind] = [...new Set([...wi[kind], day])].sort();
  return next;
}

/** Keep only the days inside ``[first, last]`` (the window shown). */
export function within(wi, first, last) {
  const keep = (days) => days.filter((d) => d >= first && d <= last);
  return { ...wi, promo: keep(wi.promo), closed: keep(wi.closed) };
}

export const isEmpty = (wi) => !wi || (!wi.promo.length && !wi.closed.length);

/** The V1 instance asking the store's forecast from ``first`` to ``last`` with the what-if days. */
export function instance(storeId, first, last, wi) {
  const inst = { storeId, beginDate: first, endDate: last };
  if (wi.promo.length) inst.promoDays = wi.promo;
  if (wi.closed.length) inst.closedDays = wi.closed;
  return inst;
}

/** Map date -> value of a prediction's forecast rows. */
export function valuesByDate(prediction) {
  return new Map(prediction.forecast.map((r) => [r.timestamp.slice(0, 10), r.value]));
}

const fmt = (v) => Math.round(v).toLocaleString("en-US");
const signed = (v) => `${v >= 0 ? "+" : "−"}${fmt(Math.abs(v))}`;

/** Totals of the shown future days, baseline against what-if, and the days that changed. */
export function compare(rows, values) {
  const future = rows.filter((r) => !r.past);
  let baseline = 0, whatIf = 0;
  const changed = [];
  for (const r of future) {
    const w = values.has(r.date) ? values.get(r.date) : r.value;
    baseline += r.value;
    whatIf += w;
    if (Math.abs(w - r.value) > 1e-9) changed.push({ date: r.date, baseline: r.value, whatIf: w });
  }
  return { days: future.length, baseline, whatIf, diff: whatIf - baseline,
           pct: baseline > 0 ? (whatIf - baseline) / baseline : null, changed };
}

/** One sentence for the planner: what was tried, the window's totals, and the days that changed. */
export function describe(wi, cmp) {
  const tried = [...wi.promo.map((d) => `promotion on ${weekday(d)} ${d}`),
                 ...wi.closed.map((d) => `closed on ${weekday(d)} ${d}`)].join(", ");
  const pct = cmp.pct === null ? "" : `, ${cmp.pct >= 0 ? "+" : "−"}${Math.abs(100 * cmp.pct).toFixed(1)}%`;
  const days = cmp.changed.map((c) => `${c.date}: ${fmt(c.baseline)} → ${fmt(c.whatIf)}`).join("; ");
  return `What-if (${tried}): next ${cmp.days} days ${fmt(cmp.baseline)} → ${fmt(cmp.whatIf)} ` +
    `(${signed(cmp.diff)}${pct})${days ? `. ${days}` : ". No day changed."}`;
}

/** The card's what-if controls for ``rows`` (the days to pick) and ``wi``'s result against the baseline;
 * returns the what-if's values to draw (a Map date -> value) or null. */
export function renderWhatIf(el, rows, wi) {
  const select = el.querySelector(".whatif-day");
  const chosen = select.value;
  select.textContent = "";
  for (const r of rows.filter((row) => !row.past)) {
    const o = document.createElement("option");
    o.value = r.date;
    o.textContent = `${weekday(r.date)} ${r.date}${r.open ? "" : " (closed)"}`;
    select.append(o);
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  const result = el.querySelector(".whatif-result");
  const shown = wi && wi.values && !isEmpty(wi);
  el.querySelector(".whatif-clear").hidden = !shown;
  result.hidden = !shown;
  if (!shown) { result.textContent = ""; delete result.dataset.diff; return null; }
  const cmp = compare(rows, wi.values);
  result.textContent = describe(wi, cmp);
  result.className = `whatif-result ${cmp.diff >= 0 ? "up" : "down"}`;
  Object.assign(result.dataset, { baseline: String(cmp.baseline), whatIf: String(cmp.whatIf), diff: String(cmp.diff),
                                  changed: cmp.changed.map((c) => c.date).join(",") });
  return wi.values;
}
