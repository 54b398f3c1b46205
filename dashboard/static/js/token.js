// Asking for the API token once and keeping it in localStorage; the top bar says which token is in use.

import { config, forgetToken, setToken, tokenSource } from "./settings.js";

const dialog = () => document.getElementById("token-dialog");

export function describeToken() {
  switch (tokenSource()) {
    case "stored": return ["token: this browser", "Using the token stored in this browser. Click to change or forget it."];
    case "embedded": return ["read-only", "Using the read-only viewer token embedded by the dashboard server (DASHBOARD_VIEWER_TOKEN). Cancelling jobs and acknowledging alerts need an operator token: click to enter one."];
    default: return ["no token", "No API token: click to enter one."];
  }
}

export function refreshTokenButton() {
  const btn = document.getElementById("token-btn");
  const [text, title] = describeToken();
  btn.textContent = text;
  btn.title = title;
}

/** Open the token dialog with a reason; `onChange` runs after a token is saved or forgotten. */
export function askForToken(reason, onChange) {
  const d = dialog();
  document.getElementById("token-reason").textContent = reason || "";
  const input = document.getElementById("token-input");
  input.value = "";
  const save = document.getElementById("token-save");
  const forget = document.getElementById("token-forget");
  const close = document.getElementById("token-cancel");
  forget.hidden = tokenSource() !== "stored";
  const done = (changed) => {
    save.onclick = forget.onclick = close.onclick = null;
    if (d.open) d.close();
    refreshTokenButton();
    if (changed) onChange?.();
  };
  save.onclick = (ev) => {
    ev.preventDefault();
    if (!input.value.trim()) { input.focus(); return; }
    setToken(input.value);
    done(true);
  };
  forget.onclick = () => { forgetToken(); done(true); };
  close.onclick = () => done(false);
  if (!d.open) d.showModal();
  input.focus();
  return config;
}
