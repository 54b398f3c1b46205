// REST calls to the orchestrator with the bearer token; errors become ApiError with the server's stable code.

import { apiUrl, token } from "./settings.js";

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

const listeners = new Set();
/** Called with the ApiError on every 401, so the page can ask for a token. */
export function onUnauthorized(fn) { listeners.add(fn); }

export async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(apiUrl + path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "UNREACHABLE", `orchestrator unreachable (${apiUrl})`, null);
  }
  if (res.ok) {
    if (raw) return res;
    if (res.status === 204) return null;
    const type = res.headers.get("content-type") || "";
    return type.includes("json") ? res.json() : res.text();
  }
  let data = null;
  try { data = await res.json(); } catch { /* not JSON */ }
  // A route the orchestrator does not have (yet) answers FastAPI's bare {"detail": "Not Found"}, without a code.
  const code = data?.code || (res.status === 404 || res.status === 405 ? "ENDPOINT_MISSING" : `HTTP_${res.status}`);
  const err = new ApiError(res.status, code, data?.message || data?.detail || res.statusText, data);
  if (res.status === 401) for (const fn of listeners) fn(err);
  throw err;
}

/** True when the error means "this orchestrator does not offer that endpoint". */
export function isMissing(err) {
  return err instanceof ApiError && err.code === "ENDPOINT_MISSING";
}
