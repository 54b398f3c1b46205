// Carbon: energy and emissions over a range as charts, by tenant and by job, and the grid's carbon intensity ahead.

import { api, isMissing } from "../api.js";
import { COLOURS, timeChart } from "../charts.js";
import { h, setText } from "../dom.js";
import * as f from "../format.js";
import { store } from "../store.js";

const RANGES = [
  { key: "24h", label: "24 h", seconds: 86400, bucket: 3600 },
  { key: "7d", label: "7 days", seconds: 7 * 86400, bucket: 6 * 3600 },
  { key: "30d", label: "30 days", seconds: 30 * 86400, bucket: 86400 },
];
const REFRESH_MS = 60000;

const grams = (g) => (!Number.isFinite(g) ? f.NA : g >= 1e6 ? `${(g / 1e6).toFixed(2)} t` : g >= 1000 ? `${(g / 1000).toFixed(2)} kg` : `${Math.round(g)} g`);
const kwh = (v) => (!Number.isFinite(v) ? f.NA : v >= 1000 ? `${(v / 1000).toFixed(2)} MWh` : `${v.toFixed(2)} kWh`);

function tile(label) {
  const value = h("div", { class: "value" });
  const el = h("div", { class: "tile" }, h("div", { class: "label" }, label), value);
  return { el, value };
}

function rowsTable(rows, keyLabel, link) {
  if (!rows?.length) return h("div", { class: "muted small", style: { padding: "8px 12px" } }, "Nothing in this range.");
  const sorted = [...rows].sort((a, b) => b.co2_g - a.co2_g).slice(0, 20);
  return h("table", { class: "table" },
    h("thead", null, h("tr", null, h("th", null, keyLabel), h("th", { class: "num" }, "Energy"), h("th", { class: "num" }, "CO₂"))),
    h("tbody", null, sorted.map((r) => h("tr", null,
      h("td", null, link ? h("a", { href: link(r.key) }, r.key) : r.key),
      h("td", { class: "num" }, kwh(r.energy_kwh)), h("td", { class: "num" }, grams(r.co2_g))))));
}

export function carbonView() {
  let range = RANGES[0];
  const root = h("div");
  const note = h("div", { class: "unavailable" });
  const seg = h("div", { class: "seg" });
  const tiles = { co2: tile("CO₂"), energy: tile("GPU energy"), now: tile("Intensity now"), mean: tile("Mean intensity"), source: tile("Intensity source"), cleanest: tile("Cleanest next 24 h") };
  const tilesEl = h("div", { class: "tiles" }, Object.values(tiles).map((t) => t.el));
  const co2Plot = h("div", { class: "plot" });
  const kwhPlot = h("div", { class: "plot" });
  const intensityPlot = h("div", { class: "plot" });
  const tenants = h("div");
  const jobs = h("div");
  root.append(h("div", { class: "toolbar" }, seg, h("span", { class: "muted small" }, "GPU energy, integrated from power samples; emissions at the configured carbon intensity.")), note, tilesEl,
    h("div", { class: "charts" },
      h("div", { class: "chart-box" }, h("div", { class: "title" }, "Emissions · g CO₂ per bucket"), co2Plot),
      h("div", { class: "chart-box" }, h("div", { class: "title" }, "Energy · kWh per bucket"), kwhPlot),
      h("div", { class: "chart-box" }, h("div", { class: "title" }, "Carbon intensity ahead · g CO₂/kWh"), intensityPlot)),
    h("div", { class: "two-col", style: { marginTop: "12px" } },
      h("div", { class: "panel" }, h("h3", null, "By tenant"), tenants),
      h("div", { class: "panel" }, h("h3", null, "Top jobs"), jobs)));
  const co2Chart = timeChart(co2Plot, { series: [{ label: "CO₂", unit: "g", stroke: COLOURS[2], fill: "rgba(63,185,80,.35)", bars: true }] });
  const kwhChart = timeChart(kwhPlot, { series: [{ label: "energy", unit: "kWh", digits: 3, stroke: COLOURS[1], fill: "rgba(227,160,8,.35)", bars: true }] });
  const intensityChart = timeChart(intensityPlot, { series: [{ label: "intensity", unit: "g/kWh", stroke: COLOURS[0], stepped: true }], range: (u, min, max) => [0, Math.max(100, max * 1.15)] });
  for (const r of RANGES) {
    seg.append(h("button", { type: "button", class: r === range ? "on" : "", onclick: () => { range = r; for (const b of seg.children) b.classList.toggle("on", b.textContent === r.label); load(); } }, r.label));
  }
  let timer = null;

  async function load() {
    clearTimeout(timer);
    const to = new Date(store.now());
    const from = new Date(to.getTime() - range.seconds * 1000);
    const q = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
    try {
      const [cluster, byTenant, byJob] = await Promise.all([
        api(`/v1/carbon?${q}&by=cluster&bucket=${range.bucket}`),
        api(`/v1/carbon?${q}&by=tenant`),
        api(`/v1/carbon?${q}&by=job`),
      ]);
      setText(note, "");
      setText(tiles.co2.value, grams(cluster.total_co2_g));
      setText(tiles.energy.value, kwh(cluster.total_energy_kwh));
      const i = cluster.intensity || {};
      setText(tiles.now.value, Number.isFinite(i.now_g_per_kwh) ? `${Math.round(i.now_g_per_kwh)} g/kWh` : f.NA);
      setText(tiles.mean.value, Number.isFinite(i.mean_g_per_kwh) ? `${Math.round(i.mean_g_per_kwh)} g/kWh` : f.NA);
      setText(tiles.source.value, [i.source, i.region, i.pue && i.pue !== 1 ? `PUE ${i.pue}` : ""].filter(Boolean).join(" · ") || f.NA);
      const series = cluster.series || [];
      const ts = series.map((p) => f.parseTime(p.time) / 1000);
      // Bars are drawn at their bucket's middle, over the whole range asked for.
      const mid = ts.map((t) => t + range.bucket / 2);
      const xr = [from.getTime() / 1000, to.getTime() / 1000];
      co2Chart.setData([mid, series.map((p) => p.co2_g)], xr);
      kwhChart.setData([mid, series.map((p) => p.energy_kwh)], xr);
      tenants.replaceChildren(rowsTable(byTenant.rows, "Tenant"));
      jobs.replaceChildren(rowsTable(byJob.rows, "Job", (id) => `#/jobs/${encodeURIComponent(id)}`));
    } catch (err) {
      setText(note, isMissing(err) || err.code === "NOT_FOUND" ? "Carbon accounting is not available from this orchestrator." : `Could not load carbon figures: ${err.message}`);
    }
    try {
      const ahead = await api("/v1/carbon/intensity");
      const pts = ahead.points?.length ? ahead.points : [ahead.now];
      const t0 = Date.now() / 1000;
      const ts = pts.map((p) => Math.max(t0, f.parseTime(p.time) / 1000));
      const vals = pts.map((p) => p.g_per_kwh);
      // A step series holds its last value to the end of the next 24 hours.
      intensityChart.setData([[...ts, t0 + 86400], [...vals, vals[vals.length - 1]]], [t0, t0 + 86400]);
      setText(tiles.cleanest.value, ahead.cleanest ? `${Math.round(ahead.cleanest.g_per_kwh)} g at ${f.clock(f.parseTime(ahead.cleanest.time))}` : f.NA);
    } catch {
      setText(tiles.cleanest.value, f.NA);
    }
    timer = setTimeout(load, REFRESH_MS);
  }

  return {
    el: root,
    title: "Carbon",
    mount() { load(); },
    update() {},
    unmount() { clearTimeout(timer); co2Chart.destroy(); kwhChart.destroy(); intensityChart.destroy(); },
  };
}
