// The cluster overview strip: nodes, GPUs, utilisation, memory, power, jobs, alerts, energy and CO2.

import { api, isMissing } from "./api.js";
import { h, setClass, setText } from "./dom.js";
import * as f from "./format.js";
import { staleAfterMs } from "./settings.js";
import { gpuStatus } from "./status.js";
import { isFinal, store } from "./store.js";

const CARBON_EVERY_MS = 30000;

function kpi(label, title, href) {
  const value = h("div", { class: "value" });
  const sub = h("div", { class: "sub" });
  const el = h(href ? "a" : "div", { class: "kpi", title, href }, h("div", { class: "label" }, label), value, sub);
  return { el, value, sub, key: "", base: href ? "kpi link" : "kpi" };
}

function show(k, value, unit, sub, level = "") {
  const key = `${value}|${unit}|${sub}|${level}`;
  if (key === k.key) return;
  k.key = key;
  k.value.replaceChildren(String(value), unit ? h("span", { class: "unit" }, ` ${unit}`) : "");
  setText(k.sub, sub);
  setClass(k.el, `${k.base} ${level}`.trim());
}

/** Find the first number under a key matching `re` (depth-first, two levels): the carbon API's shape may grow. */
function findNumber(obj, re, depth = 0) {
  if (!obj || typeof obj !== "object" || depth > 2) return NaN;
  for (const [k, v] of Object.entries(obj)) if (re.test(k) && Number.isFinite(v)) return v;
  for (const v of Object.values(obj)) {
    const x = findNumber(v, re, depth + 1);
    if (Number.isFinite(x)) return x;
  }
  return NaN;
}

export function createSummary(root, navJobs, navAlerts) {
  const k = {
    nodes: kpi("Nodes", "Nodes heartbeating / known"),
    gpus: kpi("GPUs", "GPUs reporting, and how many need attention"),
    util: kpi("Utilisation", "Mean GPU utilisation over GPUs with a sample"),
    mem: kpi("Memory", "GPU memory used / total"),
    power: kpi("Power", "Power drawn now / sum of power limits"),
    jobs: kpi("Jobs", "Running and queued jobs", "#/jobs"),
    alerts: kpi("Alerts", "Open alerts", "#/alerts"),
    carbon: kpi("CO₂ · 24 h", "Emissions from GPU energy over the last 24 hours (carbon accounting)", "#/carbon"),
  };
  root.replaceChildren(...Object.values(k).map((x) => x.el));
  let carbon = { state: "loading" };
  let carbonTimer = null;

  async function pollCarbon() {
    try {
      const body = await api("/v1/carbon");
      // CarbonReport: totals over the last 24 h unless asked otherwise.
      const g = Number.isFinite(body?.total_co2_g) ? body.total_co2_g : findNumber(body, /co2|emission|carbon/i);
      const kwh = Number.isFinite(body?.total_energy_kwh) ? body.total_energy_kwh : findNumber(body, /kwh|energy/i);
      carbon = { state: "ok", g, kwh };
    } catch (err) {
      carbon = { state: isMissing(err) ? "missing" : err.status === 401 || err.status === 403 ? "auth" : "error", err };
    }
    draw();
    carbonTimer = setTimeout(pollCarbon, carbon.state === "missing" ? CARBON_EVERY_MS * 4 : CARBON_EVERY_MS);
  }

  function draw() {
    const nowMs = store.now();
    const nodes = [...store.nodes.values()];
    const up = nodes.filter((n) => n.healthy !== false).length;
    show(k.nodes, store.snapshotAt ? `${up} / ${nodes.length}` : "—", "", nodes.length === up ? (nodes.length ? "all heartbeating" : "none yet") : `${nodes.length - up} not heartbeating`, nodes.length !== up ? "crit" : "");
    let util = 0; let nUtil = 0; let used = 0; let total = 0; let power = 0; let limit = 0; let trouble = 0; let crit = 0; let busy = 0;
    for (const g of store.gpus.values()) {
      const s = g.sample;
      const st = gpuStatus(g, store.nodeUp(g.node), nowMs - g.sampleMs, staleAfterMs);
      if (st.level !== "ok") trouble += 1;
      if (st.level === "crit" || st.level === "stale") crit += 1;
      if (!s) continue;
      if (Number.isFinite(s.util_gpu_pct)) { util += s.util_gpu_pct; nUtil += 1; if (s.util_gpu_pct >= 10) busy += 1; }
      if (Number.isFinite(s.mem_used_mb)) used += s.mem_used_mb;
      if (Number.isFinite(s.mem_total_mb ?? g.mem_total_mb)) total += s.mem_total_mb ?? g.mem_total_mb;
      if (Number.isFinite(s.power_w)) power += s.power_w;
      if (Number.isFinite(s.power_limit_w)) limit += s.power_limit_w;
    }
    const n = store.gpus.size;
    show(k.gpus, n, "", trouble ? `${trouble} need attention` : n ? "all healthy" : "none reporting", crit ? "crit" : trouble ? "warn" : "");
    show(k.util, nUtil ? Math.round(util / nUtil) : "—", nUtil ? "%" : "", nUtil ? `${busy} of ${nUtil} busy (≥10%)` : "");
    const tb = total >= 1024 * 1024;
    const div = tb ? 1024 * 1024 : 1024;
    show(k.mem, total ? (used / div).toFixed(tb ? 2 : 0) : "—", total ? `/ ${(total / div).toFixed(tb ? 1 : 0)} ${tb ? "TB" : "GB"}` : "", total ? `${Math.round((100 * used) / total)}% used` : "");
    show(k.power, power >= 1000 ? (power / 1000).toFixed(2) : Math.round(power), power >= 1000 ? "kW" : "W", limit ? `of ${f.watts(limit)} limit` : "");
    if (store.has.jobs || store.jobs.size) {
      const jobs = [...store.jobs.values()];
      const running = jobs.filter((j) => j.state === "RUNNING").length;
      const queued = jobs.filter((j) => j.state === "PENDING" || j.state === "SCHEDULED").length;
      const failed = jobs.filter((j) => j.state === "FAILED" || j.state === "LOST" || j.state === "TIMED_OUT").length;
      show(k.jobs, running, "running", `${queued} queued · ${jobs.filter((j) => isFinal(j.state)).length} recent${failed ? ` · ${failed} failed` : ""}`);
      setText(navJobs, running + queued ? String(running + queued) : "");
    } else {
      show(k.jobs, "—", "", "not available");
    }
    if (store.has.alerts || store.alerts.size) {
      const open = store.openAlerts();
      const critN = open.filter((a) => a.severity === "critical").length;
      const unacked = open.filter((a) => !a.acknowledged_at).length;
      show(k.alerts, open.length, "open", open.length ? `${critN} critical · ${unacked} unacknowledged` : "all clear", critN ? "crit" : open.length ? "warn" : "");
      setText(navAlerts, open.length ? String(open.length) : "");
      navAlerts.classList.toggle("crit", critN > 0);
    } else {
      show(k.alerts, "—", "", "not available");
    }
    if (carbon.state === "ok" && Number.isFinite(carbon.g)) {
      const kg = carbon.g >= 1000;
      show(k.carbon, kg ? (carbon.g / 1000).toFixed(2) : Math.round(carbon.g), kg ? "kg" : "g", Number.isFinite(carbon.kwh) ? `${carbon.kwh.toFixed(2)} kWh` : "");
    } else {
      show(k.carbon, "—", "", { missing: "not available", loading: "", auth: "needs a token" }[carbon.state] ?? "unreachable");
    }
  }

  pollCarbon();
  return {
    draw,
    /** Ask the REST endpoints again now (e.g. with a new token). */
    refresh() { clearTimeout(carbonTimer); pollCarbon(); },
    stop() { clearTimeout(carbonTimer); },
  };
}
