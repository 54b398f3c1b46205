// The page's model of the cluster, fed by the live connection: GPUs, nodes, jobs, alerts, and short histories.

import { parseTime } from "./format.js";
import { recordPush } from "./perf.js";
import { Series } from "./series.js";

export const GPU_FIELDS = ["util_gpu_pct", "util_mem_pct", "mem_used_mb", "temp_c", "power_w", "sm_clock_mhz",
  "mem_clock_mhz", "mem_temp_c", "power_limit_w"];
export const NODE_FIELDS = ["util_mean", "power_w", "temp_max", "mem_used_mb", "mem_total_mb"];
const FINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]);
const MAX_FINISHED_JOBS = 500;
const MAX_ALERTS = 2000;
const HISTORY_POINTS = 600; // 10 minutes at 1 Hz per GPU

export function jobId(j) { return j?.job_id ?? j?.id ?? null; }
export function isFinal(state) { return FINAL.has(state); }
export function alertKey(a) { return a.id ?? `${a.rule}|${a.node}|${a.gpu_uuid ?? ""}|${a.opened_at}`; }

function jobTimeMs(j) {
  return parseTime(j.finished_at ?? j.ended_at ?? j.updated_at ?? j.started_at ?? j.submitted_at ?? j.created_at);
}

/** Jobs in a snapshot part or an API answer: a list, or an object of lists (queued / running / recent ...). */
export function jobsFrom(part) {
  if (!part) return [];
  if (Array.isArray(part)) return part;
  if (Array.isArray(part.jobs)) return part.jobs;
  if (typeof part === "object") return Object.values(part).filter(Array.isArray).flat();
  return [];
}

export function alertsFrom(part) {
  if (!part) return [];
  if (Array.isArray(part)) return part;
  if (Array.isArray(part.alerts)) return part.alerts;
  if (typeof part === "object") return Object.values(part).filter(Array.isArray).flat();
  return [];
}

/** Log lines in a topic message, whichever shape the jobs component sends. */
export function logLinesFrom(msg) {
  if (Array.isArray(msg.lines)) return msg.lines;
  if (msg.log && typeof msg.log === "object") return [msg.log];
  if (msg.line && typeof msg.line === "object") return [msg.line];
  if (typeof msg.line === "string") return [msg];
  return [];
}

class Store extends EventTarget {
  constructor() {
    super();
    this.gpus = new Map();
    this.nodes = new Map();
    this.jobs = new Map();
    this.alerts = new Map();
    this.skewMs = 0; // server clock minus browser clock, from the snapshot
    this.snapshotAt = 0;
    this.has = { jobs: false, alerts: false }; // whether the orchestrator offers these parts
    this.dirty = { gpus: new Set(), nodes: new Set(), structure: false, jobs: false, alerts: false, tick: false };
    this.version = 0; // bumps on every change: views compare it to know whether to redraw
  }

  now() { return Date.now() + this.skewMs; }

  touch() {
    this.version += 1;
    this.dispatchEvent(new Event("change"));
  }

  takeDirty() {
    const d = this.dirty;
    this.dirty = { gpus: new Set(), nodes: new Set(), structure: false, jobs: false, alerts: false, tick: false };
    return d;
  }

  handle(msg) {
    switch (msg.type) {
      case "snapshot": this.applySnapshot(msg); break;
      case "gpus":
        if (Number.isFinite(msg.t)) recordPush(Date.now() - msg.t * 1000);
        this.applyGpus(msg.gpus || []);
        break;
      case "nodes": this.applyNodes(msg.nodes || []); break;
      case "job": if (msg.job) this.applyJobs([msg.job]); break;
      case "jobs": this.applyJobs(jobsFrom(msg.jobs)); break;
      case "alert": if (msg.alert) this.applyAlerts([msg.alert]); break;
      case "alerts": this.applyAlerts(alertsFrom(msg.alerts)); break;
      case "ping": return;
      default: {
        const lines = logLinesFrom(msg);
        if (lines.length) this.dispatchEvent(new CustomEvent("log", { detail: lines }));
        return;
      }
    }
    this.touch();
  }

  applySnapshot(msg) {
    if (msg.meta && Number.isFinite(msg.meta.now)) {
      // The estimate includes the snapshot's own trip (up to a second with a big cluster): below that, trust the
      // browser's clock (NTP keeps machines far closer) rather than shift every age by the trip time.
      const skew = msg.meta.now * 1000 - Date.now();
      this.skewMs = Math.abs(skew) > 1500 ? skew : 0;
    }
    this.snapshotAt = Date.now();
    const gpus = msg.gpus || [];
    const nodes = msg.nodes || [];
    const seen = new Set(gpus.map((g) => g.uuid));
    for (const uuid of [...this.gpus.keys()]) if (!seen.has(uuid)) this.gpus.delete(uuid);
    const seenNodes = new Set([...nodes.map((n) => n.name), ...gpus.map((g) => g.node)]);
    for (const name of [...this.nodes.keys()]) if (!seenNodes.has(name)) this.nodes.delete(name);
    this.dirty.structure = true;
    this.applyNodes(nodes);
    this.applyGpus(gpus);
    for (const uuid of this.gpus.keys()) this.dirty.gpus.add(uuid);
    for (const name of this.nodes.keys()) this.dirty.nodes.add(name);
    this.has.jobs = "jobs" in msg;
    this.has.alerts = "alerts" in msg;
    if (this.has.jobs) { this.jobs.clear(); this.applyJobs(jobsFrom(msg.jobs)); }
    if (this.has.alerts) { this.alerts.clear(); this.applyAlerts(alertsFrom(msg.alerts)); }
    this.dirty.jobs = this.dirty.alerts = true;
  }

  node(name) {
    let n = this.nodes.get(name);
    if (!n) {
      n = { name, healthy: true, view: null, hbMs: NaN, hist: new Series(NODE_FIELDS, HISTORY_POINTS), gpus: new Set() };
      this.nodes.set(name, n);
      this.dirty.structure = true;
    }
    return n;
  }

  applyNodes(views) {
    for (const v of views) {
      const n = this.node(v.name);
      n.view = v;
      n.healthy = v.healthy !== false;
      n.hbMs = parseTime(v.last_heartbeat);
      this.dirty.nodes.add(v.name);
    }
  }

  applyGpus(views) {
    const touchedNodes = new Set();
    for (const v of views) {
      let g = this.gpus.get(v.uuid);
      if (!g) {
        g = { uuid: v.uuid, sample: null, sampleMs: NaN, newSampleMs: NaN, hist: new Series(GPU_FIELDS, HISTORY_POINTS) };
        this.gpus.set(v.uuid, g);
        this.dirty.structure = true;
      }
      if (g.node !== undefined && g.node !== v.node) {
        this.nodes.get(g.node)?.gpus.delete(g.uuid);
        this.dirty.structure = true;
      }
      g.node = v.node;
      g.index = v.index;
      g.name = v.name;
      g.mem_total_mb = v.mem_total_mb;
      g.healthy = v.healthy;
      g.jobs = v.jobs || [];
      g.excluded_reason = v.excluded_reason;
      const s = v.sample;
      if (s) {
        const ms = parseTime(s.time);
        if (!(ms <= g.sampleMs)) {
          g.sample = s;
          g.sampleMs = ms;
          g.newSampleMs = ms; // cleared when drawn: the draw measures sample-to-screen lag from it
          g.hist.push(ms / 1000, GPU_FIELDS.map((f) => s[f]));
        }
      }
      this.node(v.node).gpus.add(v.uuid);
      touchedNodes.add(v.node);
      this.dirty.gpus.add(v.uuid);
    }
    for (const name of touchedNodes) this.aggregateNode(name);
  }

  /** One point of the node's own series: mean utilisation, total power, hottest GPU, memory. */
  aggregateNode(name) {
    const n = this.nodes.get(name);
    if (!n) return;
    let t = -Infinity; let util = 0; let nUtil = 0; let power = 0; let tmax = -Infinity; let used = 0; let total = 0;
    for (const uuid of n.gpus) {
      const s = this.gpus.get(uuid)?.sample;
      if (!s) continue;
      const ms = parseTime(s.time);
      if (ms > t) t = ms;
      if (Number.isFinite(s.util_gpu_pct)) { util += s.util_gpu_pct; nUtil += 1; }
      if (Number.isFinite(s.power_w)) power += s.power_w;
      if (Number.isFinite(s.temp_c) && s.temp_c > tmax) tmax = s.temp_c;
      if (Number.isFinite(s.mem_used_mb)) used += s.mem_used_mb;
      if (Number.isFinite(s.mem_total_mb)) total += s.mem_total_mb;
    }
    if (!Number.isFinite(t)) return;
    n.agg = { util: nUtil ? util / nUtil : NaN, power, tmax, used, total };
    n.hist.push(t / 1000, [n.agg.util, power, tmax, used, total]);
    this.dirty.nodes.add(name);
  }

  applyJobs(jobs) {
    for (const j of jobs) {
      const id = jobId(j);
      if (!id) continue;
      const prev = this.jobs.get(id);
      // A finished job never changes again: an answer fetched before it finished (a REST reply that crossed the
      // live event on the way) must not bring it back to life on the page.
      if (prev && isFinal(prev.state) && !isFinal(j.state)) continue;
      this.jobs.set(id, prev ? { ...prev, ...j } : { ...j });
    }
    this.pruneJobs();
    this.dirty.jobs = true;
  }

  pruneJobs() {
    const finished = [...this.jobs.values()].filter((j) => isFinal(j.state));
    if (finished.length <= MAX_FINISHED_JOBS) return;
    finished.sort((a, b) => jobTimeMs(a) - jobTimeMs(b));
    for (const j of finished.slice(0, finished.length - MAX_FINISHED_JOBS)) this.jobs.delete(jobId(j));
  }

  applyAlerts(alerts) {
    for (const a of alerts) {
      const key = alertKey(a);
      const prev = this.alerts.get(key);
      this.alerts.set(key, prev ? { ...prev, ...a } : { ...a });
    }
    if (this.alerts.size > MAX_ALERTS) {
      const sorted = [...this.alerts.entries()].sort((x, y) => parseTime(x[1].opened_at) - parseTime(y[1].opened_at));
      for (const [key, a] of sorted) {
        if (this.alerts.size <= MAX_ALERTS) break;
        if (a.state !== "open") this.alerts.delete(key);
      }
    }
    this.dirty.alerts = true;
  }

  openAlerts() {
    return [...this.alerts.values()].filter((a) => a.state === "open" || !a.state);
  }

  nodeUp(name) {
    const n = this.nodes.get(name);
    return !n || n.healthy !== false;
  }

  gpusOf(name) {
    const n = this.nodes.get(name);
    if (!n) return [];
    return [...n.gpus].map((u) => this.gpus.get(u)).filter(Boolean).sort((a, b) => a.index - b.index);
  }

  sortedNodes() {
    return [...this.nodes.values()].sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }));
  }
}

export const store = new Store();
