// Number and time formatting: short, fixed-width friendly, "—" for a reading the device could not give.

export const NA = "—";

const ok = (v) => v !== null && v !== undefined && Number.isFinite(Number(v));

export function pct(v, digits = 0) {
  return ok(v) ? `${Number(v).toFixed(digits)}%` : NA;
}

export function num(v, digits = 0) {
  return ok(v) ? Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : NA;
}

/** Memory given in MiB, shown in GiB above 1 GiB. */
export function mem(mb) {
  if (!ok(mb)) return NA;
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${Math.round(mb)} MB`;
}

export function memPair(used, total) {
  if (!ok(total)) return mem(used);
  if (total >= 1024) return `${ok(used) ? (used / 1024).toFixed(1) : NA} / ${(total / 1024).toFixed(0)} GB`;
  return `${ok(used) ? Math.round(used) : NA} / ${Math.round(total)} MB`;
}

export function watts(w) {
  if (!ok(w)) return NA;
  return Math.abs(w) >= 10000 ? `${(w / 1000).toFixed(1)} kW` : Math.abs(w) >= 1000 ? `${(w / 1000).toFixed(2)} kW` : `${Math.round(w)} W`;
}

export function temp(c) {
  return ok(c) ? `${Math.round(c)} °C` : NA;
}

export function mhz(v) {
  return ok(v) ? `${Math.round(v)} MHz` : NA;
}

export function kbps(v) {
  if (!ok(v)) return NA;
  return v >= 1e6 ? `${(v / 1e6).toFixed(1)} GB/s` : v >= 1e3 ? `${(v / 1e3).toFixed(1)} MB/s` : `${Math.round(v)} KB/s`;
}

/** Seconds as a short age: 0.4 s, 12 s, 3 min, 2 h 5 min, 3 d. */
export function age(seconds) {
  if (!ok(seconds)) return NA;
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

export function duration(seconds) {
  if (!ok(seconds)) return NA;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function clock(ms) {
  if (!ok(ms)) return NA;
  const d = new Date(ms);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}

export function dateTime(ms) {
  if (!ok(ms)) return NA;
  const d = new Date(ms);
  return `${d.toLocaleDateString("en-CA")} ${d.toLocaleTimeString("en-GB", { hour12: false })}`;
}

/** Parse an ISO-8601 time (microseconds allowed) to epoch ms; NaN when absent. */
export function parseTime(v) {
  if (v === null || v === undefined || v === "") return NaN;
  if (typeof v === "number") return v > 1e12 ? v : v * 1000;
  return Date.parse(v);
}

export function shortModel(name) {
  return (name || "").replace(/^NVIDIA\s+/i, "");
}

export function shortId(id) {
  const s = String(id ?? "");
  return s.length > 10 ? s.slice(0, 8) : s;
}

export function shortUuid(uuid) {
  const s = String(uuid ?? "");
  return s.length > 16 ? `${s.slice(0, 12)}…${s.slice(-4)}` : s;
}
