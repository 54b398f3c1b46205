// Jobs: the queue, what runs, what finished; and one job's page with its history, logs, placement and cancel.

import { api, ApiError, isMissing } from "../api.js";
import { h, setText } from "../dom.js";
import * as f from "../format.js";
import { isFinal, jobId, jobsFrom, store } from "../store.js";

const QUEUED = new Set(["PENDING", "SCHEDULED", "LOST"]);
const MAX_LOG_LINES = 5000;

export const jobName = (j) => j.name ?? j.spec?.name ?? f.shortId(jobId(j));
const tenantOf = (j) => j.tenant ?? j.spec?.tenant ?? "";
const typeOf = (j) => j.job_type ?? j.spec?.job_type ?? "";
const submittedMs = (j) => f.parseTime(j.submitted_at ?? j.created_at ?? j.submitted);
const startedMs = (j) => f.parseTime(j.started_at);
const finishedMs = (j) => f.parseTime(j.finished_at ?? j.ended_at ?? j.completed_at);

/** Where the job runs: "node · GPU 2" (or several GPUs), from whichever fields the job carries. */
export function placementText(j) {
  const list = Array.isArray(j.assigned_gpus) && j.assigned_gpus.length ? j.assigned_gpus : Array.isArray(j.gpus) ? j.gpus : j.gpu ? [j.gpu] : [];
  const objs = list.filter((g) => g && typeof g === "object");
  if (objs.length) return `${objs[0].node ?? j.node ?? ""} · GPU ${objs.map((g) => g.index ?? f.shortUuid(g.uuid)).join(",")}`;
  if (j.node) return `${j.node}${Array.isArray(j.gpu_indices) ? ` · GPU ${j.gpu_indices.join(",")}` : ""}`;
  return "";
}

function requested(j) {
  const n = j.gpus_requested ?? (typeof j.gpus === "number" ? j.gpus : j.spec?.gpus ?? j.gpu_count);
  const mem = j.gpu_mem_mb ?? j.spec?.gpu_mem_mb;
  return [n ? `${n}×GPU` : "", Number.isFinite(mem) ? f.mem(mem) : ""].filter(Boolean).join(" · ");
}

function stateChip(state) {
  return h("span", { class: `state-chip state-${state || "PENDING"}` }, state || "?");
}

function jobRow(j, nowMs) {
  const id = jobId(j);
  const sub = submittedMs(j);
  const start = startedMs(j);
  const end = finishedMs(j);
  const dur = Number.isFinite(start) ? ((Number.isFinite(end) ? end : nowMs) - start) / 1000 : Number.isFinite(sub) && !isFinal(j.state) ? (nowMs - sub) / 1000 : NaN;
  return h("tr", { class: "clickable", "data-job-id": id, onclick: () => { location.hash = `#/jobs/${encodeURIComponent(id)}`; } },
    h("td", null, h("a", { href: `#/jobs/${encodeURIComponent(id)}` }, jobName(j)), " ", h("span", { class: "mono dim" }, f.shortId(id))),
    h("td", null, stateChip(j.state)),
    h("td", null, tenantOf(j)),
    h("td", null, typeOf(j)),
    h("td", null, requested(j)),
    h("td", null, placementText(j)),
    h("td", { class: "num" }, Number.isFinite(sub) ? `${f.age((nowMs - sub) / 1000)} ago` : f.NA),
    h("td", { class: "num" }, f.duration(dur)),
    h("td", null, j.error ? String(j.error).slice(0, 80) : j.exit_code != null ? `exit ${j.exit_code}` : ""));
}

function table(rows, empty) {
  if (!rows.length) return h("div", { class: "body muted small" }, empty);
  return h("table", { class: "table" },
    h("thead", null, h("tr", null, ...["Job", "State", "Tenant", "Type", "Asks", "Placed on", "Submitted", "Time", "Outcome"].map((c, i) => h("th", { class: i >= 6 && i <= 7 ? "num" : "" }, c)))),
    h("tbody", null, rows));
}

export function jobsView() {
  const root = h("div");
  const note = h("div", { class: "unavailable" });
  const search = h("input", { class: "search", type: "search", placeholder: "Filter: name, id, tenant, node…" });
  const panels = h("div");
  root.append(h("div", { class: "toolbar" }, search), note, panels);
  let available = store.has.jobs;
  let loadedAt = 0;
  search.addEventListener("input", () => draw());

  async function load() {
    try {
      const body = await api("/v1/jobs?limit=200");
      store.applyJobs(jobsFrom(body));
      available = true;
      loadedAt = Date.now();
      setText(note, "");
      store.touch();
    } catch (err) {
      if (isMissing(err)) setText(note, store.has.jobs ? "" : "Jobs are not available from this orchestrator yet.");
      else setText(note, `Could not load jobs: ${err.message}`);
    }
  }

  function draw() {
    const nowMs = store.now();
    const q = search.value.trim().toLowerCase();
    const jobs = [...store.jobs.values()].filter((j) => !q || [jobName(j), jobId(j), tenantOf(j), placementText(j), j.state].join(" ").toLowerCase().includes(q));
    const byTime = (a, b) => (submittedMs(b) || 0) - (submittedMs(a) || 0);
    const queued = jobs.filter((j) => QUEUED.has(j.state)).sort((a, b) => (b.priority ?? b.spec?.priority ?? 0) - (a.priority ?? a.spec?.priority ?? 0) || submittedMs(a) - submittedMs(b));
    const running = jobs.filter((j) => j.state === "RUNNING").sort(byTime);
    const recent = jobs.filter((j) => isFinal(j.state)).sort((a, b) => (finishedMs(b) || submittedMs(b) || 0) - (finishedMs(a) || submittedMs(a) || 0)).slice(0, 200);
    if (!available && !jobs.length) { panels.replaceChildren(); return; }
    panels.replaceChildren(
      h("div", { class: "panel" }, h("h3", null, "Running ", h("span", { class: "n" }, String(running.length))), table(running.map((j) => jobRow(j, nowMs)), "Nothing running.")),
      h("div", { class: "panel" }, h("h3", null, "Queue ", h("span", { class: "n" }, String(queued.length))), table(queued.map((j) => jobRow(j, nowMs)), "The queue is empty.")),
      h("div", { class: "panel" }, h("h3", null, "Recent ", h("span", { class: "n" }, String(recent.length))), table(recent.map((j) => jobRow(j, nowMs)), "No finished jobs yet.")));
  }

  let lastDraw = 0;
  return {
    el: root,
    title: "Jobs",
    mount() { draw(); load(); },
    update(dirty) {
      // Ages tick every second; job changes redraw at once.
      if (dirty.jobs || performance.now() - lastDraw > 1000) { lastDraw = performance.now(); draw(); }
      if (!loadedAt && store.has.jobs) available = true;
    },
    unmount() {},
  };
}

function historyOf(detail) {
  const list = detail?.events ?? detail?.history ?? detail?.transitions ?? [];
  return Array.isArray(list) ? list : [];
}

function contributions(list, title) {
  if (!Array.isArray(list) || !list.length) return null;
  const max = Math.max(...list.map((c) => Math.abs(c.contribution || 0)), 1e-9);
  return h("div", null, h("div", { class: "muted small", style: { margin: "8px 0 4px" } }, title),
    h("div", { class: "contrib" }, list.slice(0, 12).flatMap((c) => {
      const w = (Math.abs(c.contribution || 0) / max) * 50;
      const pos = (c.contribution || 0) >= 0;
      return [h("span", null, c.feature), h("span", { class: "mono dim" }, Number.isFinite(c.value) ? (+c.value.toFixed(3)).toString() : f.NA),
        h("div", { class: "hbar", title: pos ? "raises predicted completion time" : "lowers predicted completion time" },
          h("i", { class: pos ? "pos" : "neg", style: pos ? { left: "50%", width: `${w}%` } : { left: `${50 - w}%`, width: `${w}%` } })),
        h("span", { class: "mono" }, `${pos ? "+" : ""}${(c.contribution || 0).toFixed(2)}`)];
    })));
}

function placementPanel(p) {
  if (!p || typeof p !== "object") return h("div", { class: "muted small" }, "No placement recorded yet.");
  const scores = Object.entries(p.scores || {}).sort((a, b) => a[1] - b[1]);
  const gpuLabel = (uuid) => {
    const g = store.gpus.get(uuid);
    return g ? `${g.node} · GPU ${g.index}` : f.shortUuid(uuid);
  };
  const chosen = p.chosen_uuid;
  // The model's scores are costs in seconds (completion time plus the delay caused to co-runners); the fallback
  // heuristic's are a ranking (memory left over, then utilisation) with no unit.
  const byModel = p.policy !== "heuristic";
  const scoreHead = byModel ? "Predicted cost" : "Heuristic score (lower first)";
  const scoreText = (score) => (byModel ? `${f.num(score, 1)} s` : f.num(score, 1));
  return h("div", null,
    h("dl", { class: "kv" },
      h("dt", null, "Chosen"), h("dd", null, chosen ? gpuLabel(chosen) : f.NA),
      h("dt", null, "Policy"), h("dd", null, `${p.policy ?? f.NA}${p.model_version ? ` · model ${p.model_version}` : ""}`),
      p.fallback_reason ? [h("dt", null, "Fallback"), h("dd", { class: "t-warn" }, p.fallback_reason)] : null,
      Number.isFinite(p.candidates) ? [h("dt", null, "Candidates"), h("dd", null, `${p.candidates} GPUs could hold it`)] : null,
      Number.isFinite(p.latency_ms) ? [h("dt", null, "Decision took"), h("dd", null, `${p.latency_ms.toFixed(1)} ms`)] : null),
    scores.length ? h("table", { class: "table", style: { marginTop: "8px" } },
      h("thead", null, h("tr", null, h("th", null, "Candidate"), h("th", { class: "num", title: byModel ? "predicted completion time plus the delay caused to the jobs already on the GPU" : "" }, scoreHead), h("th", null, ""))),
      h("tbody", null, scores.slice(0, 15).map(([uuid, score]) => h("tr", null,
        h("td", null, h("a", { href: `#/gpu/${encodeURIComponent(uuid)}` }, gpuLabel(uuid))),
        h("td", { class: "num" }, scoreText(score)),
        h("td", null, uuid === chosen ? h("span", { class: "badge ok" }, "chosen") : uuid === p.runner_up_uuid ? h("span", { class: "badge" }, "runner-up") : ""))))) : null,
    scores.length > 15 ? h("div", { class: "muted small" }, `… and ${scores.length - 15} more candidates`) : null,
    contributions(p.contributions, "Why this GPU (feature contributions to the predicted time)"),
    contributions(p.runner_up_contributions, "Runner-up"));
}

export function jobView(id, ctx) {
  const root = h("div");
  const title = h("h2", null, f.shortId(id));
  const chipBox = h("span");
  const cancelBtn = h("button", { type: "button", class: "danger", "data-action": "cancel" }, "Cancel job");
  const msg = h("span", { class: "small" });
  const facts = h("dl", { class: "kv" });
  const history = h("ul", { class: "history" });
  const placement = h("div");
  const logs = h("div", { class: "logs", "aria-label": "Job logs" });
  const follow = h("input", { type: "checkbox", checked: true });
  const logNote = h("span", { class: "muted small" });
  root.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), ` / ${id}`),
    h("div", { class: "detail-head" }, title, chipBox, h("span", { class: "spacer" }), msg, cancelBtn),
    h("div", { class: "two-col" },
      h("div", null,
        h("div", { class: "panel" }, h("h3", null, "Job"), h("div", { class: "body" }, facts)),
        h("div", { class: "panel" }, h("h3", null, "State history"), h("div", { class: "body" }, history)),
        h("div", { class: "panel" }, h("h3", null, "Placement"), h("div", { class: "body" }, placement))),
      h("div", null,
        h("div", { class: "panel" }, h("h3", null, "Logs", h("span", { class: "spacer" }), logNote, h("label", { class: "small", style: { textTransform: "none", letterSpacing: 0 } }, follow, " follow")),
          h("div", { class: "body" }, logs)))));
  let detail = null;
  let events = [];
  let missing = false;
  const seen = new Set();
  let lineCount = 0;
  let lastState = null;
  let refetchTimer = null;

  function job() { return { ...(detail || {}), ...(store.jobs.get(id) || {}) }; }

  // Lines are kept in (attempt, seq) order whichever way they come: stored ones over REST and live ones over
  // the WebSocket can overtake each other while the page opens.
  const orderKey = (l) => (l.attempt ?? 1) * 1e9 + (l.seq ?? 0);

  function lineEl(l) {
    const el = h("div", { class: `line ${l.stream || ""}`, "data-seq": l.seq ?? "" },
      h("span", { class: "ts" }, f.clock(f.parseTime(l.time))), h("span", { class: "txt" }, l.line ?? ""));
    el.k = orderKey(l);
    return el;
  }

  function insertOrdered(el) {
    const last = logs.lastElementChild;
    if (!last || !(last.k > el.k)) { logs.append(el); return; }
    let lo = 0;
    let hi = logs.childElementCount;
    const kids = logs.children;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (kids[mid].k > el.k) hi = mid; else lo = mid + 1;
    }
    logs.insertBefore(el, kids[lo] || null);
  }

  function appendLines(lines) {
    for (const l of lines) {
      if (typeof l === "string") {
        const el = h("div", { class: "line" }, h("span", { class: "ts" }, ""), h("span", { class: "txt" }, l));
        el.k = Infinity;
        logs.append(el);
        lineCount += 1;
        continue;
      }
      if (l.job_id && l.job_id !== id) continue;
      const key = `${l.attempt ?? 1}:${l.seq ?? `${l.time}|${l.line}`}`;
      if (seen.has(key)) continue;
      seen.add(key);
      insertOrdered(lineEl(l));
      lineCount += 1;
    }
    while (logs.childElementCount > MAX_LOG_LINES) logs.firstElementChild.remove();
    if (follow.checked) logs.scrollTop = logs.scrollHeight;
    setText(logNote, lineCount ? `${lineCount} lines` : "");
  }

  const onLog = (ev) => appendLines(ev.detail);

  async function loadDetail() {
    try {
      detail = await api(`/v1/jobs/${encodeURIComponent(id)}`);
      missing = false;
      store.applyJobs([detail]);
      store.touch();
      loadEvents();
    } catch (err) {
      if (err instanceof ApiError && err.code === "JOB_NOT_FOUND") { missing = true; setText(msg, "No such job (or not visible to this token)."); }
      else if (isMissing(err)) setText(msg, "Job details are not available from this orchestrator yet.");
      else setText(msg, `Could not load the job: ${err.message}`);
    }
    draw();
  }

  async function loadEvents() {
    try {
      const body = await api(`/v1/jobs/${encodeURIComponent(id)}/events`);
      events = Array.isArray(body) ? body : historyOf(body);
    } catch {
      events = historyOf(detail); // older orchestrators carry the history in the job itself, if at all
    }
    draw();
  }

  async function loadLogs() {
    try {
      const body = await api(`/v1/jobs/${encodeURIComponent(id)}/logs`);
      const lines = typeof body === "string" ? body.split("\n").filter(Boolean) : Array.isArray(body) ? body : body?.lines ?? body?.logs ?? [];
      appendLines(lines);
      if (!lineCount) setText(logNote, "no output yet");
    } catch (err) {
      setText(logNote, isMissing(err) ? "logs not available from this orchestrator yet" : `logs: ${err.message}`);
    }
  }

  cancelBtn.addEventListener("click", async () => {
    cancelBtn.disabled = true;
    setText(msg, "Cancelling…");
    try {
      await api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
      setText(msg, "Cancel requested.");
      loadDetail();
    } catch (err) {
      cancelBtn.disabled = false;
      if (err.status === 403 || err.status === 401) {
        setText(msg, "Cancelling needs an operator token.");
        ctx.needToken(`Cancelling a job needs an operator (or admin) token; the orchestrator said: ${err.message}`);
      } else setText(msg, `Not cancelled: ${err.code} ${err.message}`);
    }
  });

  function draw() {
    const j = job();
    if (!detail && !store.jobs.has(id)) { if (missing) cancelBtn.hidden = true; return; }
    setText(title, jobName(j));
    chipBox.replaceChildren(stateChip(j.state));
    cancelBtn.hidden = isFinal(j.state);
    const spec = j.spec || j;
    const start = startedMs(j);
    const end = finishedMs(j);
    const rows = [
      ["Id", h("span", { class: "mono" }, id)],
      ["Tenant", tenantOf(j) || f.NA],
      ["Type", typeOf(j) || f.NA],
      ["Asks", requested(j) || f.NA],
      ["Priority", String(j.priority ?? spec.priority ?? 0)],
      ["Placed on", placementText(j) || f.NA],
      ["Command", spec.command ? h("span", { class: "mono" }, spec.command.join(" ")) : spec.script ? h("span", { class: "mono" }, "python script") : f.NA],
      ["Submitted", f.dateTime(submittedMs(j))],
      ["Started", f.dateTime(start)],
      ["Finished", f.dateTime(end)],
      ["Run time", Number.isFinite(start) ? f.duration(((Number.isFinite(end) ? end : store.now()) - start) / 1000) : f.NA],
      ["Attempt", String(j.attempt ?? 1)],
      ["Exit code", j.exit_code ?? f.NA],
      j.error ? ["Error", h("span", { class: "t-crit" }, String(j.error))] : null,
      j.result !== undefined && j.result !== null ? ["Result", h("span", { class: "mono" }, JSON.stringify(j.result).slice(0, 2000))] : null,
    ].filter(Boolean);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
    history.replaceChildren(...(events.length ? events.map((e) => h("li", null,
      h("span", { class: "mono dim" }, f.clock(f.parseTime(e.time ?? e.at))),
      stateChip(e.state ?? e.to ?? e.to_state),
      h("span", { class: "muted small" }, [e.prev_state ?? e.from ?? e.from_state ? `from ${e.prev_state ?? e.from ?? e.from_state}` : "",
        Number.isFinite(e.duration_s) ? `after ${f.duration(e.duration_s)}` : "", e.source ?? "", e.reason ?? e.error ?? ""].filter(Boolean).join(" · "))))
      : [h("li", { class: "muted" }, detail ? "No transitions recorded." : "—")]));
    placement.replaceChildren(placementPanel(detail?.placement ?? (detail?.scores ? detail : null)));
    if (lastState && lastState !== j.state) {
      // A transition arrived live: show it now, then fetch the stored history (once, shortly after).
      const last = events[events.length - 1];
      if (!last || (last.to_state ?? last.state) !== j.state) {
        events = [...events, { from_state: lastState, to_state: j.state, source: "live",
          time: j.finished_at ?? j.started_at ?? new Date(store.now()).toISOString() }];
        lastState = j.state;
        draw();
      }
      clearTimeout(refetchTimer);
      refetchTimer = setTimeout(loadDetail, 300);
    }
    lastState = j.state;
  }

  return {
    el: root,
    title: "Job",
    mount() {
      store.addEventListener("log", onLog);
      ctx.live.subscribe(`job:${id}`);
      loadDetail();
      loadLogs();
    },
    update(dirty) { if (dirty.jobs) draw(); },
    unmount() {
      store.removeEventListener("log", onLog);
      ctx.live.unsubscribe(`job:${id}`);
      clearTimeout(refetchTimer);
    },
  };
}
