// Calls to the dashboard server (same origin) with the signed-in key, and errors a planner understands.

const KEY = "storecast.key";

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }
export function clearKey() { sessionStorage.removeItem(KEY); }

/** An HTTP answer that was not a success, with what the server said and the wait it asked for. */
export class ApiError extends Error {
  constructor(status, serverMessage, retryAfter, what) {
    super(explain(status, serverMessage, retryAfter, what));
    this.status = status;
    this.serverMessage = serverMessage;
    this.retryAfter = retryAfter;
    this.what = what;
  }
}

const SERVICES = { forecast: "forecast service", session: "forecast service", retrain: "retrain service",
                   job: "retrain service", model: "model registry", metrics: "model registry",
                   sales: "sales data" };

/** The sentence shown in the banner for an error answer. */
export function explain(status, message, retryAfter, what) {
  const service = SERVICES[what] || "service";
  const said = message ? `: ${message}` : "";
  if (status === 0) return "The dashboard server cannot be reached. Check your network connection and reload the page.";
  if (status === 401) return `Your key was not accepted (HTTP 401). Check it and sign in again${said}.`;
  if (status === 403) return `Your key is not allowed to do this (HTTP 403)${said}.`;
  if (status === 429) {
    const wait = retryAfter ? `wait ${retryAfter} s` : "wait a moment";
    return `Too many requests for this key (HTTP 429): ${wait} and try again.`;
  }
  if (status === 400 || status === 404 || status === 413 || status === 422) {
    return `The ${service} refused the request (HTTP ${status})${said}.`;
  }
  if (status === 502 || status === 503 || status === 504) {
    const when = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again in a minute.";
    return `The ${service} is not available right now (HTTP ${status})${said}.${when}`;
  }
  return `The ${service} failed (HTTP ${status})${said}.`;
}

/** fetch with the key; resolves to the JSON body (and status) or throws ApiError. */
export async function call(path, { method = "GET", body, what = "forecast", key = getKey() } = {}) {
  const headers = { accept: "application/json" };
  if (key) headers["x-api-key"] = key;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   cache: "no-store", credentials: "omit" });
  } catch (err) {
    throw new ApiError(0, "", null, what);
  }
  let data = null;
  const text = await response.text();
  try { data = text ? JSON.parse(text) : null; } catch (err) { data = null; }
  if (!response.ok) {
    const message = (data && (data.error || data.detail || data.message)) || text.slice(0, 300);
    const retry = response.headers.get("retry-after");
    throw new ApiError(response.status, typeof message === "string" ? message : JSON.stringify(message),
                       retry ? Number(retry) || retry : null, what);
  }
  return { status: response.status, data };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
