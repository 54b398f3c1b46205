// One node: heartbeat and agent facts, node-level charts (utilisation per GPU, power, temperature, memory), its GPUs.

import { COLOURS, timeChart } from "../charts.js";
import { h, setText } from "../dom.js";
import * as f from "../format.js";
import { recordLag } from "../perf.js";
import { staleAfterMs } from "../settings.js";
import { store } from "../store.js";
import { createCard } from "./gpucard.js";
import { jobNamer } from "./overview.js";

const WINDOW_S = 600;
const MAX_LINES = 16; // one line per GPU is readable up to about this many

/** Merge the GPUs' own series on their shared sample times (one node's GPUs are sampled on the same tick). */
function perGpu(gpus, field) {
  const times = new Set();
  const per = gpus.map((g) => g.hist.data([field], WINDOW_S));
  for (const [ts] of per) for (const t of ts) times.add(t);
  const ts = [...times].sort((a, b) => a - b);
  const idx = new Map(ts.map((t, i) => [t, i]));
  const cols = per.map(([t, v]) => {
    const col = new Array(ts.length).fill(null);
    t.forEach((x, i) => { col[idx.get(x)] = v[i]; });
    return col;
  });
  return [ts, ...cols];
}

export function nodeView(name) {
  const root = h("div");
  const facts = h("dl", { class: "kv" });
  const chartsEl = h("div", { class: "charts" });
  const cardsEl = h("div", { class: "cards", style: { borderRadius: "6px" } });
  const title = h("h2", null, name);
  const chip = h("span", { class: "badge" });
  root.append(h("div", { class: "crumbs" }, h("a", { href: "#/" }, "GPUs"), ` / ${name}`),
    h("div", { class: "detail-head" }, title, chip),
    h("div", { class: "panel" }, h("div", { class: "body" }, facts)),
    chartsEl, h("h3", { class: "muted small", style: { textTransform: "uppercase", letterSpacing: ".06em", margin: "16px 0 6px" } }, "GPUs"), cardsEl);
  const cards = new Map();
  let utilChart = null;
  let utilLines = -1;
  const utilBox = h("div", { class: "plot" });
  const boxes = [
    { title: "Utilisation per GPU · %", plot: utilBox },
    { title: "Power, all GPUs · W", field: "power_w", series: [{ label: "total", unit: "W" }] },
    { title: "Hottest GPU · °C", field: "temp_max", series: [{ label: "max", unit: "°C", stroke: COLOURS[1] }] },
    { title: "Memory used, all GPUs · GB", field: "mem_used_mb", series: [{ label: "used", unit: "GB", digits: 1, stroke: COLOURS[2] }], scale: 1 / 1024 },
  ];
  for (const b of boxes) {
    const plot = b.plot || h("div", { class: "plot" });
    chartsEl.append(h("div", { class: "chart-box" }, h("div", { class: "title" }, b.title), plot));
    if (!b.plot) b.chart = timeChart(plot, { series: b.series });
  }
  let lastCharts = 0;

  function drawCharts() {
    const n = store.nodes.get(name);
    if (!n) return;
    const gpus = store.gpusOf(name);
    const lines = Math.min(gpus.length, MAX_LINES);
    if (lines !== utilLines) {
      utilChart?.destroy();
      utilBox.replaceChildren();
      utilLines = lines;
      const series = lines === gpus.length
        ? gpus.map((g, i) => ({ label: `GPU ${g.index}`, unit: "%", stroke: COLOURS[i % COLOURS.length] }))
        : [{ label: "mean", unit: "%" }];
      utilChart = timeChart(utilBox, { series, range: [0, 100] });
    }
    if (utilLines === gpus.length) utilChart.setData(perGpu(gpus, "util_gpu_pct"));
    else utilChart.setData(n.hist.data(["util_mean"], WINDOW_S));
    for (const b of boxes) {
      if (!b.chart) continue;
      const d = n.hist.data([b.field], WINDOW_S);
      b.chart.setData(b.scale ? [d[0], d[1].map((v) => (v === null ? null : v * b.scale))] : d);
    }
  }

  function draw(measure, dirty) {
    const n = store.nodes.get(name);
    const gpus = store.gpusOf(name);
    if (!n) { setText(chip, "unknown node"); return; }
    const up = n.healthy !== false;
    setText(chip, up ? "heartbeating" : "not heartbeating");
    chip.className = `badge ${up ? "ok" : "crit"}`;
    const v = n.view || {};
    const hb = (store.now() - n.hbMs) / 1000;
    const rows = [
      ["Last heartbeat", Number.isFinite(hb) ? `${f.age(hb)} ago (${f.clock(n.hbMs)})` : "none yet"],
      ["Agent", `${v.agent_version ?? f.NA}${v.simulated ? " · simulated GPUs" : ""}`],
      ["Sampling interval", Number.isFinite(v.interval_s) ? `${v.interval_s} s` : f.NA],
      ["GPUs", String(gpus.length)],
      ["Running jobs", (v.running_jobs || []).map(jobNamer).join(", ") || "none"],
    ];
    facts.replaceChildren(...rows.flatMap(([k, val]) => [h("dt", null, k), h("dd", null, val)]));
    if (dirty?.structure || cards.size !== gpus.length) {
      cardsEl.replaceChildren();
      cards.clear();
      for (const g of gpus) {
        const c = createCard(g);
        cards.set(g.uuid, c);
        cardsEl.append(c.el);
      }
    }
    for (const g of gpus) {
      if (dirty && !dirty.gpus.has(g.uuid) && !dirty.structure) continue;
      cards.get(g.uuid)?.update(g, { nodeUp: up, nowMs: store.now(), staleMs: staleAfterMs, jobName: jobNamer });
      if (measure && Number.isFinite(g.newSampleMs)) recordLag(Date.now() - g.newSampleMs);
      g.newSampleMs = NaN;
    }
    if (performance.now() - lastCharts > 1000) {
      lastCharts = performance.now();
      drawCharts();
    }
  }

  return {
    el: root,
    title: name,
    mount() { draw(false, { structure: true, gpus: new Set() }); },
    update(dirty) {
      if (dirty.tick) for (const g of store.gpusOf(name)) dirty.gpus.add(g.uuid); // ages move on
      if (dirty.structure || dirty.tick || dirty.nodes.has(name) || dirty.jobs || [...dirty.gpus].some((u) => store.gpus.get(u)?.node === name)) draw(true, dirty);
    },
    unmount() { utilChart?.destroy(); for (const b of boxes) b.chart?.destroy(); },
  };
}
