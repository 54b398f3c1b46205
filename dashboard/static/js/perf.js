// Sample-to-screen lag, measured in the page when a value is drawn; read by the benchmark and the top bar.

const CAP = 20000;
const lags = new Float64Array(CAP);
let n = 0;

/** Record the lag of one drawn sample (ms from the sample's time to the frame that shows it). */
export function recordLag(ms) {
  if (!Number.isFinite(ms)) return;
  lags[n % CAP] = ms;
  n += 1;
}

export function recent(count = 500) {
  const k = Math.min(count, n, CAP);
  const out = new Array(k);
  for (let i = 0; i < k; i++) out[i] = lags[(n - k + i) % CAP];
  return out;
}

export function quantile(values, q) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

// Push-to-receipt delay of each "gpus" message (server stamp `t`): the delivery part of the lag.
const pushes = [];
export function recordPush(ms) {
  if (Number.isFinite(ms) && pushes.length < CAP) pushes.push(ms);
}

// For tooling (the benchmark reads it): window.aetherPerf.take() returns and forgets the lags recorded so far.
let taken = 0;
window.aetherPerf = {
  count: () => n,
  takePush() { return pushes.splice(0, pushes.length); },
  take() {
    const from = Math.max(taken, n - CAP);
    const out = [];
    for (let i = from; i < n; i++) out.push(lags[i % CAP]);
    taken = n;
    return out;
  },
};
