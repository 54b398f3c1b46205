// One GPU: every reading, its jobs, and charts — the last minutes live, longer ranges from the history API.

import { api, isMissing } from "../api.js";
import { timeChart } from "../charts.js";
import { h, setClass, setText } from "../dom.js";
import * as f from "../format.js";
import { recordLag } from "../perf.js";
import { staleAfterMs } from "../settings.js";
import { gpuStatus, throttleLevel } from "../status.js";
import { store } from "../store.js";
import { jobNamer } from "./overview.js";

const RANGES = [
  { key: "live", label: "Live 10 min", seconds: 600 },
  { key: "1h", label: "1 h", seconds: 3600, bucket: 10 },
  { key: "6h", label: "6 h", seconds: 6 * 3600, bucket: 60 },
  { key: "24h", label: "24 h", seconds: 24 * 3600, bucket: 300 },
];

// Each chart: which fields, how to scale them, and how they are labelled.
export const GPU_CHARTS = [
  { title: "Utilisation · %", range: [0, 100], series: [
    { field: "util_gpu_pct", label: "GPU", unit: "%" }, { field: "util_mem_pct", label: "memory controller", unit: "%" }] },
  { title: "Memory used · GB", series: [
    { field: "mem_used_mb", label: "used", unit: "GB", scale: 1 / 1024, digits: 1 }] },
  { title: "Temperature · °C", series: [
    { field: "temp_c", label: "GPU", unit: "°C" }, { field: "mem_temp_c", label: "memory", unit: "°C" }] },
  { title: "Power · W", series: [
    { field: "power_w", label: "draw", unit: "W" }, { field: "power_limit_w", label: "limit", unit: "W", dash: [4, 4], stroke: "#5b6573" }] },
  { title: "Clocks · MHz", series: [
    { field: "sm_clock_mhz", label: "SM", unit: "MHz" }, { field: "mem_clock_mhz", label: "memory", unit: "MHz" }] },
];

function scaleCols(data, series) {
  return [data[0], ...series.map((s, i) => (s.scale ? data[i + 1].map((v) => (v === null ? null : v * s.scale)) : data[i + 1]))];
}

/** Rows of the history API, whichever shape it answers (list, or {points|samples|rows|data: [...]}). */
export function historyRows(body) {
  if (Array.isArray(body)) return body;
  for (const key of ["points", "samples", "rows", "data", "buckets", "telemetry"]) if (Array.isArray(body?.[key])) return body[key];
  return [];
}

function rowValue(row, field) {
  const v = row[field] ?? row[`${field}_avg`] ?? row.avg?.[field] ?? row[field]?.avg;
  return Number.isFinite(v) ? v : null;
}

export function historyData(rows, fields) {
  const ts = [];
  const cols = fields.map(() => []);
  for (const row of rows) {
    const t = f.parseTime(row.time ?? row.bucket ?? row.t ?? row.ts);
    if (!Number.isFinite(t)) continue;
    ts.push(t / 1000);
    fields.forEach((fl, i) => cols[i].push(rowValue(row, fl)));
  }
  return [ts, ...cols];
}

function tile(label) {
  const value = h("div", { class: "value" });
  return { el: h("div", { class: "tile" }, h("div", { class: "label" }, label), value), value };
}

export function gpuView(uuid) {
  let range = RANGES[0];
  const root = h("div");
  const crumbs = h("div", { class: "crumbs" });
  const title = h("h2");
  const chip = h("span", { class: "badge" });
  const uuidEl = h("span", { class: "mono dim" }, uuid);
  const tiles = {};
  const tileDefs = [["util", "Utilisation"], ["memutil", "Mem-ctl util"], ["mem", "Memory"], ["temp", "Temperature"],
    ["power", "Power"], ["sm", "SM clock"], ["mclk", "Memory clock"], ["fan", "Fan"], ["pstate", "P-state"],
    ["ecc", "ECC sbe / dbe"], ["pcie", "PCIe tx / rx"], ["energy", "Energy counter"], ["age", "Sample age"]];
  const tilesEl = h("div", { class: "tiles" });
  for (const [k, label] of tileDefs) { tiles[k] = tile(label); tilesEl.append(tiles[k].el); }
  const reasons = h("div", { class: "badges" });
  const jobsEl = h("div", { class: "jobs-line" });
  const seg = h("div", { class: "seg" });
  const note = h("span", { class: "muted small" });
  const chartsEl = h("div", { class: "charts" });
  root.append(crumbs, h("div", { class: "detail-head" }, title, chip, uuidEl), tilesEl, reasons, jobsEl,
    h("div", { class: "toolbar", style: { marginTop: "10px" } }, seg, note), chartsEl);
  const charts = GPU_CHARTS.map((c) => {
    const plot = h("div", { class: "plot" });
    chartsEl.append(h("div", { class: "chart-box" }, h("div", { class: "title" }, c.title), plot));
    return { def: c, chart: timeChart(plot, { series: c.series, range: c.range }) };
  });
  for (const r of RANGES) {
    seg.append(h("button", { type: "button", class: r === range ? "on" : "", onclick: () => { range = r; for (const b of seg.children) b.classList.toggle("on", b.textContent === r.label); loadRange(); } }, r.label));
  }
  let lastChartDraw = 0;
  let badgeKey = "";
  let fetchCtl = null;

  function drawLive() {
    const g = store.gpus.get(uuid);
    if (!g) return;
    for (const { def, chart } of charts) chart.setData(scaleCols(g.hist.data(def.series.map((s) => s.field), range.seconds), def.series));
  }

  async function loadRange() {
    fetchCtl?.abort();
    if (range.key === "live") { setText(note, "Full-rate samples received since this page opened."); drawLive(); return; }
    setText(note, "Loading history…");
    fetchCtl = new AbortController();
    const to = new Date();
    const from = new Date(to.getTime() - range.seconds * 1000);
    const q = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
    try {
      let body;
      try {
        body = await api(`/v1/gpus/${encodeURIComponent(uuid)}/telemetry?${q}&bucket=${range.bucket}s`, { signal: fetchCtl.signal });
      } catch (err) {
        // The bucket may be wanted as plain seconds rather than a duration string.
        if (err.status !== 422) throw err;
        body = await api(`/v1/gpus/${encodeURIComponent(uuid)}/telemetry?${q}&bucket=${range.bucket}`, { signal: fetchCtl.signal });
      }
      const rows = historyRows(body);
      const xr = [from.getTime() / 1000, to.getTime() / 1000];
      for (const { def, chart } of charts) chart.setData(scaleCols(historyData(rows, def.series.map((s) => s.field)), def.series), xr);
      setText(note, rows.length ? `${rows.length} points, ${range.bucket} s buckets (avg)` : "No stored samples in this range.");
    } catch (err) {
      if (err.name === "AbortError") return;
      setText(note, isMissing(err) ? "History is not available from this orchestrator yet; showing live samples." : `History unavailable: ${err.message}`);
      if (isMissing(err)) drawLive();
    }
  }

  function draw(measure) {
    const g = store.gpus.get(uuid);
    if (!g) {
      setText(title, "Unknown GPU");
      setText(crumbs, "");
      crumbs.replaceChildren(h("a", { href: "#/" }, "GPUs"), " / ", uuid);
      return;
    }
    crumbs.replaceChildren(h("a", { href: "#/" }, "GPUs"), " / ", h("a", { href: `#/node/${encodeURIComponent(g.node)}` }, g.node), ` / GPU ${g.index}`);
    setText(title, `${g.node} · GPU ${g.index} · ${f.shortModel(g.name)}`);
    const s = g.sample || {};
    const ageMs = store.now() - g.sampleMs;
    const st = gpuStatus(g, store.nodeUp(g.node), ageMs, staleAfterMs);
    setText(chip, st.label);
    setClass(chip, `badge ${st.level === "ok" ? "ok" : st.level === "warn" ? "warn" : st.level === "nodata" ? "" : "crit"}`);
    const set = (k, text) => setText(tiles[k].value, text);
    set("util", f.pct(s.util_gpu_pct));
    set("memutil", f.pct(s.util_mem_pct));
    set("mem", f.memPair(s.mem_used_mb, s.mem_total_mb ?? g.mem_total_mb));
    set("temp", s.mem_temp_c != null ? `${f.temp(s.temp_c)} · mem ${f.temp(s.mem_temp_c)}` : f.temp(s.temp_c));
    set("power", Number.isFinite(s.power_limit_w) ? `${f.num(s.power_w)} / ${f.num(s.power_limit_w)} W` : f.watts(s.power_w));
    set("sm", f.mhz(s.sm_clock_mhz));
    set("mclk", f.mhz(s.mem_clock_mhz));
    set("fan", f.pct(s.fan_pct));
    set("pstate", Number.isFinite(s.pstate) ? `P${s.pstate}` : f.NA);
    set("ecc", `${s.ecc_sbe ?? f.NA} / ${s.ecc_dbe ?? f.NA}`);
    set("pcie", `${f.kbps(s.pcie_tx_kbps)} / ${f.kbps(s.pcie_rx_kbps)}`);
    set("energy", Number.isFinite(s.energy_mj) ? `${(s.energy_mj / 3.6e9).toFixed(2)} kWh` : f.NA);
    set("age", Number.isFinite(ageMs) ? f.age(ageMs / 1000) : f.NA);
    const throttles = s.throttle_reasons || [];
    const key = `${throttles.join("|")}#${st.reasons.join("|")}`;
    if (key !== badgeKey) {
      badgeKey = key;
      reasons.replaceChildren(...st.reasons.map((r) => h("span", { class: `badge ${st.level === "warn" ? "warn" : "crit"}` }, r)),
        ...throttles.map((r) => h("span", { class: `badge ${throttleLevel(r)}`, title: "clock throttle reason" }, `throttle: ${r}`)));
    }
    const ids = g.jobs || [];
    jobsEl.replaceChildren(h("span", { class: "k" }, "Jobs"), ...(ids.length ? ids.map((id) => h("a", { class: "mono", href: `#/jobs/${encodeURIComponent(id)}` }, jobNamer(id))) : [h("span", { class: "dim" }, "none")]));
    if (measure && Number.isFinite(g.newSampleMs)) recordLag(Date.now() - g.newSampleMs);
    g.newSampleMs = NaN;
    if (range.key === "live" && performance.now() - lastChartDraw > 1000) {
      lastChartDraw = performance.now();
      drawLive();
    }
  }

  return {
    el: root,
    title: "GPU",
    mount() { draw(false); loadRange(); },
    update(dirty) { if (dirty.structure || dirty.gpus.has(uuid) || dirty.jobs || dirty.tick) draw(dirty.gpus.has(uuid)); },
    unmount() { fetchCtl?.abort(); for (const { chart } of charts) chart.destroy(); },
  };
}
