// Fixed-size ring buffers of recent samples (the "last minutes at full rate" behind the live charts).

export class Series {
  /** fields: names of the values kept beside the time (seconds since epoch, as uPlot wants). */
  constructor(fields, capacity = 600) {
    this.fields = fields;
    this.cap = capacity;
    this.t = new Float64Array(capacity);
    this.v = fields.map(() => new Float32Array(capacity));
    this.start = 0;
    this.len = 0;
  }

  lastTime() {
    return this.len ? this.t[(this.start + this.len - 1) % this.cap] : -Infinity;
  }

  /** Append a point; a point not newer than the last one replaces it (same tick) or is ignored (older). */
  push(tSec, values) {
    const last = this.lastTime();
    let i;
    if (tSec < last) return;
    if (tSec === last) {
      i = (this.start + this.len - 1) % this.cap;
    } else if (this.len < this.cap) {
      i = (this.start + this.len) % this.cap;
      this.len += 1;
    } else {
      i = this.start;
      this.start = (this.start + 1) % this.cap;
    }
    this.t[i] = tSec;
    for (let k = 0; k < this.fields.length; k++) {
      const x = values[k];
      this.v[k][i] = x === null || x === undefined || !Number.isFinite(x) ? NaN : x;
    }
  }

  /** uPlot data [times, ...series] for the named fields over the last `windowSec` seconds (NaN -> null gaps). */
  data(names, windowSec = Infinity) {
    const idx = names.map((n) => this.fields.indexOf(n));
    const lastT = this.lastTime();
    const ts = [];
    const cols = names.map(() => []);
    for (let j = 0; j < this.len; j++) {
      const i = (this.start + j) % this.cap;
      if (lastT - this.t[i] > windowSec) continue;
      ts.push(this.t[i]);
      idx.forEach((k, c) => {
        const x = k < 0 ? NaN : this.v[k][i];
        cols[c].push(Number.isNaN(x) ? null : x);
      });
    }
    return [ts, ...cols];
  }
}
