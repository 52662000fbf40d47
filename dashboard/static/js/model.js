// One store's numbers as the page shows them: the API's rows (past and next days) with actual sales beside.

export const HOLIDAYS = { a: "public holiday", b: "Easter holiday", c: "Christmas" };

/** Rows of one prediction ({request, forecast}) joined with actual sales ({dates, sales, open}) by date. */
export function storeRows(prediction, actual, today) {
  const sold = new Map();
  if (actual) actual.dates.forEach((d, i) => sold.set(d, { sales: actual.sales[i], open: actual.open[i] }));
  return prediction.forecast.map((r) => {
    const date = r.timestamp.slice(0, 10);
    const a = sold.get(date);
    return {
      date, value: r.value, lower: r.lower, upper: r.upper,
      open: r.open !== false, promo: r.promo === true, holiday: r.holiday && r.holiday !== "0" ? r.holiday : null,
      calendar: r.calendar ?? null, hasPromo: "promo" in r, hasHoliday: "holiday" in r,
      past: date < today, actual: a ? a.sales : null, actualOpen: a ? a.open === 1 : null,
    };
  });
}

/** What a row's notes column says (closed, promotion, holiday, default calendar). */
export function notes(row) {
  const out = [];
  if (!row.open) out.push(row.calendar === "calendar" || row.calendar === "what-if" ? "closed" : "usually closed");
  if (row.promo) out.push("promotion");
  if (row.holiday) out.push(HOLIDAYS[row.holiday] || `holiday ${row.holiday}`);
  if (row.calendar === "default") out.push("no calendar: defaults");
  if (row.calendar === "what-if") out.push("what-if");
  return out.join(", ");
}

const sum = (xs) => xs.reduce((a, b) => a + b, 0);

/** Demand of the next days (open days) and the change of the next 7 days against the last 7. */
export function demand(rows) {
  const future = rows.filter((r) => !r.past);
  const past = rows.filter((r) => r.past);
  const total = sum(future.filter((r) => r.open).map((r) => r.value));
  const next7 = sum(future.slice(0, 7).filter((r) => r.open).map((r) => r.value));
  const last = past.slice(-7);
  const haveActual = last.length === 7 && last.every((r) => r.actual !== null);
  const last7 = haveActual ? sum(last.map((r) => r.actual)) : sum(last.filter((r) => r.open).map((r) => r.value));
  const change = last7 > 0 && last.length === 7 ? next7 / last7 - 1 : null;
  return { total, next7, last7, change, basis: haveActual ? "actual sales" : "the version's forecast" };
}
