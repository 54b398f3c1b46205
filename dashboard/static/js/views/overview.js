// The GPU overview: a cluster map (one cell per GPU), then one section per node with its GPU cards.
// Built to stay smooth at 1,000 GPUs: cards off screen are not redrawn, node charts exist only while visible.

import { timeChart } from "../charts.js";
import { clear, h, setClass, setText } from "../dom.js";
import * as f from "../format.js";
import { recordLag } from "../perf.js";
import { staleAfterMs } from "../settings.js";
import { gpuStatus, rampColour } from "../status.js";
import { store } from "../store.js";
import { createCard } from "./gpucard.js";

const PREFS = "aether.overview";
const MAP_METRICS = {
  util: { label: "Utilisation", value: (s) => s.util_gpu_pct / 100, text: (s) => f.pct(s.util_gpu_pct) },
  mem: { label: "Memory", value: (s) => s.mem_used_mb / s.mem_total_mb, text: (s) => f.memPair(s.mem_used_mb, s.mem_total_mb) },
  temp: { label: "Temperature", value: (s) => (s.temp_c - 25) / 65, text: (s) => f.temp(s.temp_c) },
  power: { label: "Power", value: (s) => s.power_w / s.power_limit_w, text: (s) => `${f.watts(s.power_w)} of ${f.watts(s.power_limit_w)}` },
};

function loadPrefs() {
  try { return { q: "", problems: false, metric: "util", ...JSON.parse(localStorage.getItem(PREFS) || "{}") }; } catch { return { q: "", problems: false, metric: "util" }; }
}

export function jobNamer(id) {
  const j = store.jobs.get(id);
  return j?.name || j?.spec?.name || f.shortId(id);
}

export function overviewView() {
  const prefs = loadPrefs();
  const cards = new Map(); // uuid -> {card, visible, level}
  const cells = new Map(); // uuid -> {el, key}
  const sections = new Map(); // node -> section refs
  const root = h("div", { class: "overview" });
  const search = h("input", { class: "search", type: "search", placeholder: "Filter: node, GPU model, uuid, job…", value: prefs.q });
  const problems = h("input", { type: "checkbox", checked: prefs.problems || null });
  const metricSeg = h("div", { class: "seg", role: "group", "aria-label": "Map colour" });
  const countEl = h("span", { class: "muted small" });
  const toolbar = h("div", { class: "toolbar" }, search, h("label", null, problems, "Problems only"),
    h("span", { class: "spacer" }), h("span", { class: "muted small" }, "Map:"), metricSeg, countEl);
  const map = h("div", { class: "map", "aria-label": "Cluster map" });
  const nodesEl = h("div", { class: "nodes" });
  const emptyEl = h("div", { class: "empty", hidden: true });
  root.append(toolbar, map, emptyEl, nodesEl);

  for (const [key, m] of Object.entries(MAP_METRICS)) {
    metricSeg.append(h("button", { type: "button", "data-metric": key, class: key === prefs.metric ? "on" : "", onclick: () => {
      prefs.metric = key;
      for (const b of metricSeg.children) b.classList.toggle("on", b.dataset.metric === key);
      save();
      for (const c of cells.values()) c.key = "";
      for (const uuid of store.gpus.keys()) drawCell(uuid);
    } }, m.label));
  }

  function save() {
    try { localStorage.setItem(PREFS, JSON.stringify(prefs)); } catch { /* not persisted */ }
  }

  let filterTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => { prefs.q = search.value.trim(); save(); build(); }, 120);
  });
  problems.addEventListener("change", () => { prefs.problems = problems.checked; save(); build(); });

  // Cards are drawn only while on screen (or about to be); the rest wait with a "pending" mark.
  const pending = new Set();
  const io = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const uuid = e.target.dataset.gpuUuid;
      const c = cards.get(uuid);
      if (!c) continue;
      c.visible = e.isIntersecting;
      if (c.visible && pending.has(uuid)) { pending.delete(uuid); drawCard(uuid, false); }
    }
  }, { rootMargin: "300px 0px" });
  const sectionIo = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const sec = sections.get(e.target.dataset.node);
      if (!sec) continue;
      sec.visible = e.isIntersecting;
      if (sec.visible && sec.pending) drawNode(sec.name);
      if (sec.visible && !sec.chart) {
        sec.chart = timeChart(sec.spark, { spark: true, height: 36, series: [
          { label: "mean util", stroke: "#6cb6ff", unit: "%" },
        ], range: [0, 100] });
        sec.chartAt = 0;
        drawNode(sec.name);
      } else if (!sec.visible && sec.chart) {
        sec.chart.destroy(); // never more live charts than fit on the screen
        sec.chart = null;
        clear(sec.spark);
      }
    }
  }, { rootMargin: "200px 0px" });

  function matches(g, level) {
    if (prefs.problems && (level === "ok" || level === undefined)) return false;
    if (!prefs.q) return true;
    const q = prefs.q.toLowerCase();
    const hay = [g.node, g.name, g.uuid, `gpu ${g.index}`, ...(g.jobs || []), ...(g.jobs || []).map(jobNamer)].join(" ").toLowerCase();
    return q.split(/\s+/).every((w) => hay.includes(w));
  }

  function statusOf(g) {
    return gpuStatus(g, store.nodeUp(g.node), store.now() - g.sampleMs, staleAfterMs);
  }

  function section(name) {
    let sec = sections.get(name);
    if (sec) return sec;
    const dot = h("span", { class: "dot" });
    const facts = h("div", { class: "facts" });
    const spark = h("div", { class: "spark", title: "Mean utilisation, last minutes" });
    const cardsEl = h("div", { class: "cards" });
    const el = h("section", { class: "node", "data-node": name },
      h("div", { class: "node-head" }, h("span", { class: "name" }, dot, h("a", { href: `#/node/${encodeURIComponent(name)}` }, name)), facts, spark),
      cardsEl);
    sec = { name, el, dot, facts, spark, cardsEl, chart: null, visible: false, factsKey: "" };
    sections.set(name, sec);
    sectionIo.observe(el);
    return sec;
  }

  function build() {
    const nodes = store.sortedNodes();
    const total = store.gpus.size;
    emptyEl.hidden = total > 0;
    map.hidden = total === 0;
    if (total === 0) {
      emptyEl.replaceChildren(...(store.snapshotAt ? [
        h("h3", null, "No GPUs have reported yet"),
        h("div", null, "Start an agent on each GPU node and its GPUs appear here within a second, e.g. ",
          h("code", null, "python -m agent --simulated --node sim-1 --gpus 4 --nats nats://127.0.0.1:4222")),
      ] : [h("h3", null, "Waiting for the orchestrator…"), h("div", null, "The first snapshot of the cluster shows here as soon as the live connection opens.")]));
    }
    const keepNodes = new Set();
    const frag = document.createDocumentFragment();
    const mapFrag = document.createDocumentFragment();
    let shown = 0;
    for (const n of nodes) {
      const gpus = store.gpusOf(n.name);
      if (!gpus.length && !n.view) continue;
      keepNodes.add(n.name);
      const sec = section(n.name);
      const cardEls = [];
      const mapCells = [];
      let any = false;
      for (const g of gpus) {
        let c = cards.get(g.uuid);
        if (!c) {
          c = { card: createCard(g), visible: false };
          cards.set(g.uuid, c);
          io.observe(c.card.el);
          pending.add(g.uuid);
        }
        const st = statusOf(g);
        const show = matches(g, st.level);
        c.card.el.hidden = !show;
        if (show) { any = true; shown += 1; }
        cardEls.push(c.card.el);
        let cell = cells.get(g.uuid);
        if (!cell) {
          const el = h("div", { class: "cell", "data-cell-uuid": g.uuid, onclick: () => { location.hash = `#/gpu/${encodeURIComponent(g.uuid)}`; } });
          cell = { el, key: "" };
          cells.set(g.uuid, cell);
        }
        mapCells.push(cell.el);
      }
      sec.cardsEl.replaceChildren(...cardEls);
      sec.el.hidden = !any && (prefs.problems || !!prefs.q || gpus.length > 0);
      if (!gpus.length && !prefs.q && !prefs.problems) {
        sec.el.hidden = false;
        sec.cardsEl.replaceChildren(h("div", { class: "card" }, h("span", { class: "muted" }, "No GPUs reported by this node.")));
      }
      frag.append(sec.el);
      const label = h("div", { class: "map-label", title: n.name }, n.name);
      mapFrag.append(h("div", { class: `map-node ${n.healthy === false ? "down" : ""}`.trim() }, label, h("div", { class: "map-cells" }, mapCells)));
    }
    for (const [name, sec] of sections) {
      if (!keepNodes.has(name)) { sectionIo.unobserve(sec.el); sec.chart?.destroy(); sections.delete(name); }
    }
    for (const [uuid, c] of cards) {
      if (!store.gpus.has(uuid)) { io.unobserve(c.card.el); cards.delete(uuid); cells.delete(uuid); pending.delete(uuid); }
    }
    const legend = h("div", { class: "map-legend" }, "0", h("div", { class: "ramp", style: { background: `linear-gradient(90deg, ${rampColour(0)}, ${rampColour(0.35)}, ${rampColour(0.7)}, ${rampColour(1)})` } }), "100%");
    mapFrag.append(legend);
    map.replaceChildren(mapFrag);
    map.classList.toggle("dense", total > 256); // smaller cells so a big cluster's map stays on one screen
    nodesEl.replaceChildren(frag);
    setText(countEl, total ? `${shown} of ${total} GPUs` : "");
    for (const uuid of store.gpus.keys()) drawCell(uuid);
    for (const name of keepNodes) drawNode(name);
  }

  function drawCell(uuid) {
    const cell = cells.get(uuid);
    const g = store.gpus.get(uuid);
    if (!cell || !g) return;
    const st = statusOf(g);
    const m = MAP_METRICS[prefs.metric] || MAP_METRICS.util;
    const s = g.sample;
    const frac = s ? m.value(s) : NaN;
    const colour = st.level === "nodata" ? "" : rampColour(frac);
    const key = `${colour}|${st.level}`;
    if (key === cell.key) return;
    cell.key = key;
    setClass(cell.el, `cell ${st.level === "ok" ? "" : st.level === "stale" ? "crit" : st.level}`.trim());
    cell.el.style.background = colour;
  }

  // A cell's tooltip is written when the pointer reaches it, not on every sample of 1,000 GPUs.
  map.addEventListener("mouseover", (ev) => {
    const uuid = ev.target.dataset?.cellUuid;
    const g = uuid && store.gpus.get(uuid);
    if (!g) return;
    const st = statusOf(g);
    const m = MAP_METRICS[prefs.metric] || MAP_METRICS.util;
    const s = g.sample;
    ev.target.title = `${g.node} · GPU ${g.index} · ${f.shortModel(g.name)}\n${m.label}: ${s ? m.text(s) : "no data"}${st.reasons.length ? `\n${st.reasons.join("\n")}` : ""}`;
  });

  function drawCard(uuid, measure) {
    const c = cards.get(uuid);
    const g = store.gpus.get(uuid);
    if (!c || !g) return;
    c.card.update(g, { nodeUp: store.nodeUp(g.node), nowMs: store.now(), staleMs: staleAfterMs, jobName: jobNamer });
    if (measure && Number.isFinite(g.newSampleMs)) recordLag(Date.now() - g.newSampleMs);
    g.newSampleMs = NaN;
  }

  function drawNode(name) {
    const sec = sections.get(name);
    const n = store.nodes.get(name);
    if (!sec || !n) return;
    // Off screen: only the health colour matters now; the rest is drawn when the section scrolls into view.
    sec.el.classList.toggle("down", n.healthy === false);
    if (!sec.visible && sec.factsKey) { sec.pending = true; return; }
    sec.pending = false;
    const gpus = store.gpusOf(name);
    const up = n.healthy !== false;
    const trouble = gpus.some((g) => { const l = statusOf(g).level; return l === "crit" || l === "stale"; });
    setClass(sec.dot, `dot ${!up ? "down" : trouble ? "warn" : ""}`.trim());
    sec.el.classList.toggle("down", !up);
    const a = n.agg || {};
    const hbAge = (store.now() - n.hbMs) / 1000;
    const v = n.view || {};
    const items = [
      [`${gpus.length} GPU${gpus.length === 1 ? "" : "s"}`],
      ["util ", f.pct(a.util)],
      ["power ", f.watts(a.power)],
      ["hottest ", f.temp(a.tmax)],
      ["mem ", f.memPair(a.used, a.total)],
      [up ? "heartbeat " : "no heartbeat for ", Number.isFinite(hbAge) ? `${f.age(hbAge)}${up ? " ago" : ""}` : "—"],
    ];
    if (v.simulated) items.push(["simulated"]);
    const key = items.map((i) => i.join("")).join("|");
    if (key !== sec.factsKey) {
      sec.factsKey = key;
      sec.facts.replaceChildren(...items.map(([k, val]) => h("span", null, k, val !== undefined ? h("b", null, val) : null)));
    }
    if (sec.chart && performance.now() - sec.chartAt > 1000) {
      sec.chartAt = performance.now();
      sec.chart.setData(n.hist.data(["util_mean"], 600));
    }
  }

  /** Once a second: sample ages on screen, and map cells of GPUs that may have just gone stale. */
  function tick() {
    const now = store.now();
    for (const [uuid, c] of cards) if (c.visible) drawCard(uuid, false);
    for (const [uuid, cell] of cells) {
      const g = store.gpus.get(uuid);
      if (g && (now - g.sampleMs > staleAfterMs - 1500 || cell.key.endsWith("stale") || !store.nodeUp(g.node))) drawCell(uuid);
    }
    for (const sec of sections.values()) if (sec.visible) drawNode(sec.name);
  }

  return {
    el: root,
    title: "GPUs",
    mount() { build(); },
    update(dirty) {
      if (dirty.structure) { build(); return; }
      for (const uuid of dirty.gpus) {
        drawCell(uuid);
        const c = cards.get(uuid);
        if (!c) continue;
        if (prefs.problems) {
          const g = store.gpus.get(uuid);
          const show = g && matches(g, statusOf(g).level);
          if (c.card.el.hidden === show) { build(); return; }
        }
        if (c.visible) drawCard(uuid, true);
        else {
          pending.add(uuid);
          const g = store.gpus.get(uuid);
          if (g) g.newSampleMs = NaN; // not shown: no lag to measure
        }
      }
      for (const name of dirty.nodes) drawNode(name);
      if (dirty.tick) tick();
    },
    unmount() {
      io.disconnect();
      sectionIo.disconnect();
      for (const sec of sections.values()) sec.chart?.destroy();
    },
  };
}
