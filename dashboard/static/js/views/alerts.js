// Alerts feed: newest first, filter by severity / state / text, acknowledge with an operator token.

import { api, isMissing } from "../api.js";
import { h, setText } from "../dom.js";
import * as f from "../format.js";
import { alertsFrom, alertKey, store } from "../store.js";

const PREFS = "aether.alerts";
const SEV_ORDER = { critical: 0, warning: 1, info: 2 };

function loadPrefs() {
  try { return { severity: "all", state: "open", unacked: false, q: "", ...JSON.parse(localStorage.getItem(PREFS) || "{}") }; } catch { return { severity: "all", state: "open", unacked: false, q: "" }; }
}

function where(a) {
  const g = a.gpu_uuid ? store.gpus.get(a.gpu_uuid) : null;
  if (a.gpu_uuid) return h("a", { href: `#/gpu/${encodeURIComponent(a.gpu_uuid)}` }, g ? `${a.node} · GPU ${g.index}` : `${a.node} · ${f.shortUuid(a.gpu_uuid)}`);
  return h("a", { href: `#/node/${encodeURIComponent(a.node)}` }, a.node);
}

export function alertsView(ctx) {
  const prefs = loadPrefs();
  const root = h("div");
  const note = h("div", { class: "unavailable" });
  const sev = h("select", { "aria-label": "Severity" }, ...["all", "critical", "warning", "info"].map((s) => h("option", { value: s, selected: s === prefs.severity || null }, s === "all" ? "All severities" : s)));
  const state = h("select", { "aria-label": "State" }, ...[["open", "Open"], ["resolved", "Resolved"], ["all", "Open and resolved"]].map(([v, l]) => h("option", { value: v, selected: v === prefs.state || null }, l)));
  const unacked = h("input", { type: "checkbox", checked: prefs.unacked || null });
  const search = h("input", { class: "search", type: "search", placeholder: "Filter: node, rule, message…", value: prefs.q });
  const count = h("span", { class: "muted small" });
  const body = h("div", { class: "panel" });
  root.append(h("div", { class: "toolbar" }, sev, state, h("label", null, unacked, "Unacknowledged only"), search, h("span", { class: "spacer" }), count), note, body);
  let available = store.has.alerts;
  const busy = new Set();

  const save = () => { try { localStorage.setItem(PREFS, JSON.stringify(prefs)); } catch { /* not kept */ } };
  const changed = () => { prefs.severity = sev.value; prefs.state = state.value; prefs.unacked = unacked.checked; prefs.q = search.value.trim(); save(); draw(); };
  for (const el of [sev, state, unacked]) el.addEventListener("change", changed);
  search.addEventListener("input", changed);

  async function load() {
    try {
      const res = await api("/v1/alerts?limit=500");
      store.applyAlerts(alertsFrom(res));
      available = true;
      setText(note, "");
      store.touch();
    } catch (err) {
      if (isMissing(err)) setText(note, store.has.alerts ? "" : "Alerts are not available from this orchestrator yet.");
      else setText(note, `Could not load alerts: ${err.message}`);
    }
    draw();
  }

  async function ack(a) {
    const key = alertKey(a);
    busy.add(key);
    draw();
    try {
      const res = await api(`/v1/alerts/${encodeURIComponent(a.id)}/ack`, { method: "POST" });
      store.applyAlerts([res && typeof res === "object" && (res.alert || res.id !== undefined) ? (res.alert || res) : { ...a, acknowledged_at: new Date().toISOString(), acknowledged_by: "you" }]);
      store.touch();
    } catch (err) {
      if (err.status === 403 || err.status === 401) ctx.needToken(`Acknowledging an alert needs an operator (or admin) token; the orchestrator said: ${err.message}`);
      else setText(note, `Not acknowledged: ${err.code} ${err.message}`);
    } finally {
      busy.delete(key);
      draw();
    }
  }

  function draw() {
    const nowMs = store.now();
    const q = prefs.q.toLowerCase();
    const all = [...store.alerts.values()];
    const list = all.filter((a) => {
      const open = a.state === "open" || !a.state;
      if (prefs.state === "open" && !open) return false;
      if (prefs.state === "resolved" && open) return false;
      if (prefs.severity !== "all" && a.severity !== prefs.severity) return false;
      if (prefs.unacked && a.acknowledged_at) return false;
      return !q || [a.node, a.rule, a.message, a.metric, a.gpu_uuid].join(" ").toLowerCase().includes(q);
    }).sort((a, b) => (SEV_ORDER[a.severity] ?? 3) - (SEV_ORDER[b.severity] ?? 3) || f.parseTime(b.opened_at) - f.parseTime(a.opened_at));
    setText(count, `${list.length} of ${all.length}`);
    if (!available && !all.length) { body.replaceChildren(); return; }
    if (!list.length) {
      body.replaceChildren(h("div", { class: "body muted" }, all.length ? "No alert matches these filters." : "No alerts. All clear."));
      return;
    }
    body.replaceChildren(h("table", { class: "table" },
      h("thead", null, h("tr", null, ...["Severity", "Rule", "Where", "Message", "Value", "Opened", "State", "Acknowledged"].map((c) => h("th", null, c)))),
      h("tbody", null, list.slice(0, 500).map((a) => {
        const opened = f.parseTime(a.opened_at);
        const resolved = f.parseTime(a.resolved_at);
        const open = a.state === "open" || !a.state;
        return h("tr", { class: open ? (a.severity === "critical" ? "crit" : a.severity === "warning" ? "warn" : "") : "", "data-alert-id": a.id ?? "" },
          h("td", null, h("span", { class: `sev sev-${a.severity}` }, a.severity)),
          h("td", { class: "mono" }, a.rule),
          h("td", null, where(a)),
          h("td", { style: { whiteSpace: "normal" } }, a.message),
          h("td", { class: "num" }, Number.isFinite(a.value) ? `${+a.value.toFixed(2)}${Number.isFinite(a.threshold) ? ` / ${+a.threshold.toFixed(2)}` : ""}` : ""),
          h("td", { title: f.dateTime(opened) }, `${f.clock(opened)} · ${f.age((nowMs - opened) / 1000)} ago`),
          h("td", null, open ? h("span", { class: "badge crit" }, "open") : h("span", { class: "badge", title: f.dateTime(resolved) }, `resolved ${f.clock(resolved)}`)),
          h("td", null, a.acknowledged_at ? h("span", { class: "muted small" }, `${a.acknowledged_by || "someone"} · ${f.clock(f.parseTime(a.acknowledged_at))}`)
            : a.id != null && open ? h("button", { type: "button", "data-action": "ack", disabled: busy.has(alertKey(a)) || null, onclick: () => ack(a) }, "Acknowledge") : ""));
      }))));
  }

  let lastDraw = 0;
  return {
    el: root,
    title: "Alerts",
    mount() { draw(); load(); },
    update(dirty) { if (dirty.alerts || performance.now() - lastDraw > 5000) { lastDraw = performance.now(); draw(); } },
    unmount() {},
  };
}
