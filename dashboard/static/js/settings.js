// Where the orchestrator is (from /config.js) and which API token the page uses.

const cfg = window.AETHER_CONFIG || {};
const KEY = "aether.token";

export const config = cfg;
export const apiUrl = (cfg.apiUrl || `${location.protocol}//${location.hostname}:${cfg.orchestratorPort || 8080}`).replace(/\/$/, "");
export const wsUrl = cfg.wsUrl || `${apiUrl.replace(/^http/, "ws")}/v1/ws`;
export const staleAfterMs = (cfg.staleAfterS || 10) * 1000;

function stored() {
  try { return localStorage.getItem(KEY); } catch { return null; }
}

export function token() {
  return stored() || cfg.viewerToken || null;
}

/** "stored" (pasted into this browser), "embedded" (read-only token from the dashboard's config) or "none". */
export function tokenSource() {
  if (stored()) return "stored";
  return cfg.viewerToken ? "embedded" : "none";
}

export function setToken(value) {
  try { localStorage.setItem(KEY, value.trim()); } catch { /* private mode: the token lasts this page only */ }
}

export function forgetToken() {
  try { localStorage.removeItem(KEY); } catch { /* nothing stored */ }
}
