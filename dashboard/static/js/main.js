// Boot: live connection -> store -> one redraw per animation frame of whatever changed; hash routes pick the view.

import { onUnauthorized } from "./api.js";
import { h, setText } from "./dom.js";
import * as f from "./format.js";
import { Live } from "./live.js";
import { quantile, recent } from "./perf.js";
import { wsUrl } from "./settings.js";
import { store } from "./store.js";
import { createSummary } from "./summary.js";
import { askForToken, refreshTokenButton } from "./token.js";
import { alertsView } from "./views/alerts.js";
import { carbonView } from "./views/carbon.js";
import { gpuView } from "./views/gpu.js";
import { jobView, jobsView } from "./views/jobs.js";
import { nodeView } from "./views/node.js";
import { overviewView } from "./views/overview.js";

const live = new Live();
const viewRoot = document.getElementById("view");
const conn = document.getElementById("conn");
const banner = document.getElementById("banner");
const freshness = document.getElementById("freshness");
const summary = createSummary(document.getElementById("summary"), document.getElementById("nav-jobs"), document.getElementById("nav-alerts"));

const ROUTES = [
  [/^\/?$/, () => overviewView(), "gpus"],
  [/^\/gpu\/(.+)$/, (m) => gpuView(decodeURIComponent(m[1]), ctx), "gpus"],
  [/^\/node\/(.+)$/, (m) => nodeView(decodeURIComponent(m[1]), ctx), "gpus"],
  [/^\/jobs\/?$/, () => jobsView(ctx), "jobs"],
  [/^\/jobs\/(.+)$/, (m) => jobView(decodeURIComponent(m[1]), ctx), "jobs"],
  [/^\/alerts\/?$/, () => alertsView(ctx), "alerts"],
  [/^\/carbon\/?$/, () => carbonView(), "carbon"],
];

const ctx = {
  live,
  /** Ask for a (better) token, e.g. after a 403 on an action; reconnects and reloads the view once saved. */
  needToken(reason) { askForToken(reason, tokenChanged); },
};

let view = null;

function route() {
  const path = location.hash.replace(/^#/, "") || "/";
  let found = null;
  for (const [re, make, nav] of ROUTES) {
    const m = path.match(re);
    if (m) { found = [make(m), nav]; break; }
  }
  if (!found) found = [overviewView(), "gpus"];
  view?.unmount?.();
  view = found[0];
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === found[1]);
  viewRoot.replaceChildren(view.el);
  document.title = `${view.title || "Aether"} · Aether`;
  view.mount?.();
  window.scrollTo(0, 0);
}

function tokenChanged() {
  refreshTokenButton();
  summary.refresh();
  live.restart();
  route();
}

// One redraw per frame at most, of what changed since the last one.
let scheduled = false;
let lastSummary = 0;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    const dirty = store.takeDirty();
    // The strip sums over every GPU: twice a second is plenty, and keeps big clusters cheap.
    const now = performance.now();
    if (dirty.tick || dirty.structure || dirty.jobs || dirty.alerts || now - lastSummary > 500) {
      lastSummary = now;
      summary.draw();
    }
    view?.update?.(dirty);
  });
}
store.addEventListener("change", schedule);

// Once a second: ages, staleness and heartbeat clocks move on even when no message arrives.
setInterval(() => {
  store.dirty.tick = true; // views redraw what time changes (ages, staleness), not everything
  const lags = recent(400);
  setText(freshness, lags.length && live.state === "live" ? `sample → screen ${Math.round(quantile(lags, 0.5))} ms` : "");
  drawBanner();
  schedule();
}, 1000);

live.addEventListener("message", (ev) => store.handle(ev.detail));
live.addEventListener("state", (ev) => {
  const { state } = ev.detail;
  conn.dataset.state = state;
  conn.textContent = { live: "live", connecting: "connecting", reconnecting: "reconnecting", auth: "token refused" }[state] || state;
  document.body.classList.toggle("disconnected", state !== "live");
  drawBanner();
  if (state === "auth") ctx.needToken("The orchestrator refused the API token for the live connection (or none was given).");
});

function drawBanner() {
  const state = live.state;
  if (state === "live" || (state === "connecting" && !live.connectedOnce)) {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  if (state === "auth") {
    banner.className = "banner crit";
    banner.replaceChildren(h("span", null, "The orchestrator refused the API token: live data is paused."),
      h("button", { type: "button", onclick: () => ctx.needToken("Enter a viewer or operator token.") }, "Enter token"));
    return;
  }
  banner.className = "banner";
  const wait = Math.max(0, Math.ceil((live.retryAt - Date.now()) / 1000));
  const asOf = store.snapshotAt ? ` Values below are from before ${f.clock(lastMessageWall)}.` : "";
  banner.replaceChildren(
    h("span", null, `Lost the live connection to the orchestrator (${wsUrl}). Reconnecting — attempt ${live.attempt}${wait ? `, next try in ${wait} s` : ""}.${asOf}`),
    h("button", { type: "button", onclick: () => live.restart() }, "Retry now"));
}

let lastMessageWall = 0;
live.addEventListener("message", () => { lastMessageWall = Date.now(); });

onUnauthorized(() => {
  if (!document.getElementById("token-dialog").open) ctx.needToken("The orchestrator needs an API token (it answered 401).");
});

window.addEventListener("hashchange", route);
refreshTokenButton();
document.getElementById("token-btn").addEventListener("click", () => ctx.needToken(""));
route();
live.start();
