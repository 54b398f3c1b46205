// uPlot (from npm, served by the dashboard from node_modules) with the dashboard's dark styling.

import { h } from "./dom.js";

let loading = null;

/** uPlot's constructor; loaded on first use so the rest of the page works even when it is not installed. */
export function loadUplot() {
  if (!loading) {
    const css = h("link", { rel: "stylesheet", href: "/vendor/uplot/uPlot.min.css" });
    document.head.insertBefore(css, document.head.querySelector("link[rel=stylesheet]"));
    loading = import("/vendor/uplot/uPlot.esm.js").then((m) => m.default);
  }
  return loading;
}

export const COLOURS = ["#6cb6ff", "#e3a008", "#3fb950", "#d2a8ff", "#f0524a", "#56d4dd", "#ff9bce", "#c9d1d9"];

const AXIS = {
  stroke: "#8a95a5",
  grid: { stroke: "#202731", width: 1 },
  ticks: { stroke: "#2a323e", width: 1, size: 4 },
  font: "11px system-ui, sans-serif",
};

function unavailable(container, err) {
  container.replaceChildren(h("div", { class: "chart-note" },
    "Charts unavailable: uPlot is not installed on the dashboard server (run npm ci in dashboard/).",
  ));
  console.warn("uPlot failed to load", err);
}

/**
 * A time-series chart filling `container`'s width. series: [{label, stroke, unit, digits, dash}].
 * Returns {setData([times, ...cols]), destroy()}; data set before uPlot loads is kept and drawn once it has.
 */
export function timeChart(container, { series, height = 180, range, spark = false }) {
  let plot = null;
  let pending = null;
  let xRange = null;
  let dead = false;
  let ro = null;
  const fmt = (s) => (u, v) => (v === null || v === undefined ? "—" : `${v.toFixed(s.digits ?? 0)}${s.unit ? ` ${s.unit}` : ""}`);
  loadUplot().then((uPlot) => {
    if (dead) return;
    const width = Math.max(120, container.clientWidth || 400);
    const opts = {
      width,
      height,
      pxAlign: 0,
      legend: { show: !spark, live: true },
      cursor: spark ? { show: false } : { points: { size: 5 }, drag: { x: true, y: false } },
      padding: spark ? [2, 0, 2, 0] : [8, 8, 0, 0],
      // A fixed x range (history, buckets) keeps one or two points from stretching over years.
      scales: { x: { time: true, range: (u, min, max) => xRange || [min, max] }, y: range ? { range } : { auto: true } },
      axes: spark ? [{ show: false }, { show: false }] : [
        { ...AXIS, space: 60, incrs: TIME_INCRS, values: (u, splits, ax, space, incr) => splits.map((t) => timeTick(t, incr)) },
        { ...AXIS, size: 52, values: (u, vals) => vals.map((v) => formatTick(v, series[0].unit)) },
      ],
      series: [
        { value: (u, v) => (v === null ? "—" : new Date(v * 1000).toLocaleTimeString("en-GB", { hour12: false })) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.stroke || COLOURS[i % COLOURS.length],
          width: spark ? 1 : 1.25,
          dash: s.dash,
          spanGaps: false,
          points: { show: false },
          value: fmt(s),
          fill: s.fill,
          paths: s.bars ? uPlot.paths.bars({ size: [0.8, 60] }) : s.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        })),
      ],
    };
    plot = new uPlot(opts, pending || [[], ...series.map(() => [])], container);
    ro = new ResizeObserver(() => {
      const w = container.clientWidth;
      if (plot && w > 0 && Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height });
    });
    ro.observe(container);
  }).catch((err) => { if (!dead) unavailable(container, err); });
  return {
    /** data: [times (s), ...columns]; xr: optional [min, max] in seconds for the time axis. */
    setData(data, xr) {
      xRange = xr || null;
      if (plot) plot.setData(data);
      else pending = data;
    },
    destroy() {
      dead = true;
      ro?.disconnect();
      plot?.destroy();
      plot = null;
    },
  };
}

const pad = (n) => String(n).padStart(2, "0");
// Whole seconds and up: sub-second ticks only repeat the same label.
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
  2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** 24-hour clock ticks: seconds when they matter, the date once ticks are days apart. */
function timeTick(t, incr) {
  if (t === null || t === undefined) return "";
  const d = new Date(t * 1000);
  if (incr >= 86400) return `${d.getDate()} ${MONTHS[d.getMonth()]}`;
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (incr < 60) return `${hm}:${pad(d.getSeconds())}`;
  return d.getHours() === 0 && d.getMinutes() === 0 ? `${d.getDate()} ${MONTHS[d.getMonth()]}` : hm;
}

function formatTick(v, unit) {
  if (v === null || v === undefined) return "";
  const abs = Math.abs(v);
  const s = abs >= 10000 ? `${(v / 1000).toFixed(0)}k` : abs >= 1000 ? `${(v / 1000).toFixed(1)}k` :
    abs > 0 && abs < 1 ? `${+v.toPrecision(2)}` : `${+v.toFixed(1)}`;
  return unit ? `${s}${unit === "%" ? "%" : ""}` : s;
}
