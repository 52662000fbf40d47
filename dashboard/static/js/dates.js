// ISO dates (YYYY-MM-DD) in UTC, as the business API counts days.

export function todayUTC() {
  const asof = new URLSearchParams(location.search).get("asof");
  if (asof && /^\d{4}-\d{2}-\d{2}$/.test(asof)) return asof;
  return new Date().toISOString().slice(0, 10);
}

export function addDays(iso, n) {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

export const seconds = (iso) => Date.parse(`${iso}T00:00:00Z`) / 1000;

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
export const weekday = (iso) => DAYS[new Date(`${iso}T00:00:00Z`).getUTCDay()];
