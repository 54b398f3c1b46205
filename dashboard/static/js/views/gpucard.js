// One GPU card: utilisation, memory, power against its limit, temperature, clocks, throttling, jobs.

import { bar, h, setClass, setText } from "../dom.js";
import * as f from "../format.js";
import { gpuStatus, TEMP_CRIT_C, TEMP_WARN_C, throttleLevel } from "../status.js";

/** ctx: {nodeUp, nowMs, staleMs, jobName(id)}. Returns {el, update(g, ctx) -> status}. */
export function createCard(g) {
  const idx = h("span", { class: "idx" });
  const model = h("span", { class: "model" });
  const state = h("span", { class: "state" });
  const util = h("span", { class: "num" });
  const [utilBar, setUtil] = bar();
  const memV = h("span", { class: "v" });
  const [memBar, setMem] = bar();
  const pwrV = h("span", { class: "v" });
  const [pwrBar, setPwr] = bar();
  const tempV = h("span", { class: "v" });
  const [tempBar, setTemp] = bar();
  const sm = h("b");
  const mclk = h("b");
  const pstate = h("span");
  const fan = h("span");
  const badges = h("div", { class: "badges" });
  const jobs = h("div", { class: "jobs-line" });
  const uuid = h("span", { class: "mono" });
  const ageEl = h("span");
  const el = h("div", { class: "card", tabindex: "0", role: "link", "data-gpu-uuid": g.uuid },
    h("div", { class: "card-head" }, idx, model, state),
    h("div", { class: "util" }, h("span", { class: "big" }, util, h("span", { class: "unit" }, "%")), utilBar),
    h("div", { class: "row" }, h("span", { class: "k" }, "Mem"), memBar, memV),
    h("div", { class: "row" }, h("span", { class: "k" }, "Pwr"), pwrBar, pwrV),
    h("div", { class: "row" }, h("span", { class: "k" }, "Temp"), tempBar, tempV),
    h("div", { class: "facts-line" }, h("span", null, "SM ", sm), h("span", null, "Mem ", mclk, " MHz"), pstate, fan),
    badges, jobs,
    h("div", { class: "card-foot" }, uuid, ageEl));
  el.addEventListener("click", (ev) => {
    if (ev.target.closest("a")) return;
    location.hash = `#/gpu/${encodeURIComponent(g.uuid)}`;
  });
  el.addEventListener("keydown", (ev) => { if (ev.key === "Enter") location.hash = `#/gpu/${encodeURIComponent(g.uuid)}`; });
  let badgeKey = "";
  let jobsKey = "";

  function update(gpu, ctx) {
    const s = gpu.sample || {};
    const ageMs = ctx.nowMs - gpu.sampleMs;
    const st = gpuStatus(gpu, ctx.nodeUp, ageMs, ctx.staleMs);
    setClass(el, `card ${st.level === "ok" ? "" : st.level}`.trim());
    el.dataset.level = st.level;
    setText(idx, `GPU ${gpu.index ?? "?"}`);
    setText(model, f.shortModel(gpu.name));
    setText(state, st.label);
    el.title = st.reasons.join("\n");
    setText(util, Number.isFinite(s.util_gpu_pct) ? Math.round(s.util_gpu_pct) : f.NA);
    setUtil((s.util_gpu_pct ?? NaN) / 100);
    const total = s.mem_total_mb ?? gpu.mem_total_mb;
    const memFrac = (s.mem_used_mb ?? NaN) / total;
    setMem(memFrac, memFrac >= 0.95 ? "crit" : memFrac >= 0.85 ? "warn" : "");
    setText(memV, f.memPair(s.mem_used_mb, total));
    const pFrac = (s.power_w ?? NaN) / s.power_limit_w;
    setPwr(pFrac, pFrac >= 0.98 ? "warn" : "");
    setText(pwrV, Number.isFinite(s.power_limit_w) ? `${f.num(s.power_w)} / ${f.num(s.power_limit_w)} W` : f.watts(s.power_w));
    // Temperature bar from 20 °C (idle in a cool room) to 100 °C (well past any slowdown threshold).
    const t = s.temp_c;
    const tLevel = t >= TEMP_CRIT_C ? "crit" : t >= TEMP_WARN_C ? "warn" : "";
    setTemp((t - 20) / 80, tLevel);
    setText(tempV, f.temp(t));
    setClass(tempV, `v ${tLevel ? `t-${tLevel}` : ""}`.trim());
    setText(sm, Number.isFinite(s.sm_clock_mhz) ? Math.round(s.sm_clock_mhz) : f.NA);
    setText(mclk, Number.isFinite(s.mem_clock_mhz) ? Math.round(s.mem_clock_mhz) : f.NA);
    setText(pstate, Number.isFinite(s.pstate) ? `P${s.pstate}` : "");
    setText(fan, Number.isFinite(s.fan_pct) ? `fan ${Math.round(s.fan_pct)}%` : "");
    const throttles = s.throttle_reasons || [];
    const extra = [];
    if (s.ecc_dbe > 0) extra.push(["crit", `ECC DBE ${s.ecc_dbe}`]);
    if (s.ecc_sbe > 0) extra.push(["warn", `ECC SBE ${s.ecc_sbe}`]);
    if (s.xid_errors?.length) extra.push(["crit", `XID ${s.xid_errors.join(",")}`]);
    if (gpu.excluded_reason) extra.push(["crit", "excluded"]);
    if (s.healthy === false) extra.push(["crit", s.error ? `lost: ${s.error}`.slice(0, 40) : "unhealthy"]);
    const key = throttles.join("|") + "#" + extra.map((e) => e[1]).join("|");
    if (key !== badgeKey) {
      badgeKey = key;
      badges.replaceChildren(
        ...extra.map(([lvl, text]) => h("span", { class: `badge ${lvl}` }, text)),
        ...throttles.filter((r) => r !== "none").map((r) => h("span", { class: `badge ${throttleLevel(r)}`, title: "clock throttle reason" }, r)));
    }
    const ids = gpu.jobs || [];
    const jk = ids.map((id) => `${id}:${ctx.jobName(id)}`).join("|");
    if (jk !== jobsKey) {
      jobsKey = jk;
      jobs.replaceChildren(...(ids.length ? [h("span", { class: "k" }, "Jobs"), ...ids.slice(0, 4).map((id) =>
        h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono" }, ctx.jobName(id))),
      ids.length > 4 ? h("span", { class: "dim" }, `+${ids.length - 4}`) : null] : []));
    }
    setText(uuid, f.shortUuid(gpu.uuid));
    setText(ageEl, Number.isFinite(ageMs) ? `${f.age(ageMs / 1000)} ago` : "no sample");
    return st;
  }

  return { el, update };
}
