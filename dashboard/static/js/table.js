// The numbers of a store's chart as a table, and every selected store's rows as one CSV file.

import { weekday } from "./dates.js";
import { notes } from "./model.js";

const fmt = (v) => (v === null || v === undefined ? "" : Math.round(v).toLocaleString("en-US"));

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
}

/** Fill ``table`` with one row per day: date, weekday, actual, forecast, lower, upper, notes (and with
 * ``whatIf``, a Map date -> value, the what-if's forecast last). */
export function fillTable(table, rows, whatIf = null) {
  table.textContent = "";
  const head = table.createTHead().insertRow();
  for (const h of ["date", "day", "actual", "forecast", "lower", "upper", "notes", ...(whatIf ? ["what-if"] : [])]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  const body = table.createTBody();
  rows.forEach((r, i) => {
    const tr = body.insertRow();
    tr.dataset.date = r.date;
    tr.className = [r.past ? "past" : "", r.open ? "" : "closed", !r.past && i > 0 && rows[i - 1].past ? "today" : ""]
      .filter(Boolean).join(" ");
    cell(tr, r.date);
    cell(tr, weekday(r.date));
    cell(tr, r.actual === null ? "" : fmt(r.actual));
    cell(tr, fmt(r.value));
    cell(tr, fmt(r.lower));
    cell(tr, fmt(r.upper));
    cell(tr, notes(r), "note");
    if (whatIf) cell(tr, !r.past && whatIf.has(r.date) ? fmt(whatIf.get(r.date)) : "");
  });
}

const COLUMNS = ["store_id", "date", "kind", "actual", "forecast", "lower", "upper", "open", "promo", "holiday",
                 "calendar", "model_version"];

function csvValue(v) {
  if (v === null || v === undefined) return "";
  let s = String(v);
  // text a spreadsheet would run as a formula (a store id such as "=cmd()") is quoted; numbers stay exact
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s) && !/^-?\d/.test(s)) s = `'${s}`;
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** CSV text of every store's rows, numbers exactly as the API sent them. */
export function toCSV(stores) {
  const lines = [COLUMNS.join(",")];
  for (const { storeId, rows, version } of stores) {
    for (const r of rows) {
      lines.push([storeId, r.date, r.past ? "past" : "forecast", r.actual, r.value, r.lower, r.upper, r.open,
                  r.hasPromo ? r.promo : "", r.hasHoliday ? (r.holiday || "0") : "", r.calendar, version]
        .map(csvValue).join(","));
    }
  }
  return `${lines.join("\n")}\n`;
}

/** Offer ``text`` as a file download. */
export function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
