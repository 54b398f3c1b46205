// What is wrong with a GPU, if anything: one level for colour, and reasons an operator can read.

// Throttle reasons (NVML names, as the agent reports them) by how much they matter.
const THROTTLE_LEVEL = {
  hw_slowdown: "crit", hw_thermal: "crit", hw_power_brake: "crit",
  thermal: "warn", sw_thermal: "warn",
  power_cap: "notice", sw_power_cap: "notice",
  idle: "", applications_clocks: "", sync_boost: "", display_clocks: "",
};

export function throttleLevel(reason) {
  return THROTTLE_LEVEL[reason] ?? "notice";
}

export const TEMP_WARN_C = 83;
export const TEMP_CRIT_C = 90;
export const MEM_WARN = 0.95;

/**
 * level: "ok" | "warn" | "crit" | "nodata" | "stale"; label: a short word for the card; reasons: longer text.
 * `nodeUp` false when the node stopped heartbeating; `ageMs` is the age of the latest sample.
 */
export function gpuStatus(g, nodeUp, ageMs, staleMs) {
  const s = g.sample;
  const reasons = [];
  if (!s) return { level: "nodata", label: "no data", reasons: ["no sample received yet"] };
  if (!nodeUp) reasons.push("node not heartbeating");
  if (ageMs > staleMs) reasons.push(`no sample for ${Math.round(ageMs / 1000)} s`);
  if (s.healthy === false) reasons.push(s.error || "unhealthy");
  if (g.excluded_reason) reasons.push(`excluded from placement: ${g.excluded_reason}`);
  if (s.ecc_dbe > 0) reasons.push(`${s.ecc_dbe} uncorrectable ECC errors`);
  if (s.xid_errors && s.xid_errors.length) reasons.push(`XID ${s.xid_errors.join(", ")}`);
  if (s.temp_c >= TEMP_CRIT_C) reasons.push(`temperature ${Math.round(s.temp_c)} °C`);
  const crit = reasons.length > 0 || (s.throttle_reasons || []).some((r) => throttleLevel(r) === "crit");
  if (crit) {
    if (!nodeUp) return { level: "crit", label: "node down", reasons };
    if (ageMs > staleMs && s.healthy !== false) return { level: "stale", label: "stale", reasons };
    const label = s.healthy === false ? "failed" : g.excluded_reason ? "excluded" : s.ecc_dbe > 0 ? "ECC" :
      s.xid_errors?.length ? `XID ${s.xid_errors[0]}` : s.temp_c >= TEMP_CRIT_C ? "hot" : "hw slowdown";
    if (!reasons.length) reasons.push("hardware slowdown");
    return { level: "crit", label, reasons };
  }
  const warn = [];
  if (s.temp_c >= TEMP_WARN_C) warn.push(`temperature ${Math.round(s.temp_c)} °C`);
  if (s.mem_used_mb && s.mem_total_mb && s.mem_used_mb / s.mem_total_mb >= MEM_WARN) warn.push("memory nearly full");
  if ((s.throttle_reasons || []).some((r) => throttleLevel(r) === "warn")) warn.push("thermal throttling");
  if (s.ecc_sbe > 0) warn.push(`${s.ecc_sbe} corrected ECC errors`);
  if (warn.length) return { level: "warn", label: warn[0].startsWith("temp") ? "hot" : warn[0].startsWith("mem") ? "mem full" : warn[0].startsWith("thermal") ? "throttled" : "ECC", reasons: warn };
  return { level: "ok", label: g.jobs && g.jobs.length ? "busy" : "ok", reasons: [] };
}

/** Colour of a map cell for a value in [0, 1]: a calm blue ramp; trouble is shown by the outline, not the fill. */
export function rampColour(frac) {
  if (!Number.isFinite(frac)) return "#1d2531";
  const f = Math.max(0, Math.min(1, frac));
  const stops = [[0, [29, 37, 49]], [0.35, [31, 78, 122]], [0.7, [59, 130, 196]], [1, [140, 200, 255]]];
  for (let i = 1; i < stops.length; i++) {
    if (f <= stops[i][0]) {
      const [f0, c0] = stops[i - 1];
      const [f1, c1] = stops[i];
      const k = (f - f0) / (f1 - f0);
      const c = c0.map((x, j) => Math.round(x + (c1[j] - x) * k));
      return `rgb(${c[0]},${c[1]},${c[2]})`;
    }
  }
  return "rgb(140,200,255)";
}
