// The live connection to the orchestrator: snapshot, then diffs; reconnects with back-off and says so.

import { token, wsUrl } from "./settings.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const SILENCE_MS = 45000; // the orchestrator pings when idle; nothing at all for this long means a dead link

/**
 * Events: "state" (detail: {state, attempt, retryAt, code}), "message" (detail: parsed JSON object).
 * States: connecting, live, reconnecting, auth (the server refused the token: waits for a new one).
 */
export class Live extends EventTarget {
  constructor() {
    super();
    this.ws = null;
    this.state = "connecting";
    this.attempt = 0;
    this.retryAt = 0;
    this.timer = null;
    this.watchdog = null;
    this.lastMessage = 0;
    this.topics = new Set();
    this.decoder = new TextDecoder();
    this.connectedOnce = false;
    this.liveSince = 0;
  }

  start() {
    this.connect();
  }

  /** Drop the current socket and connect again now (e.g. after a new token). */
  restart() {
    clearTimeout(this.timer);
    this.attempt = 0;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = null;
      try { ws.close(1000, "restart"); } catch { /* already closed */ }
    }
    this.connect();
  }

  subscribe(topic) {
    this.topics.add(topic);
    this.send({ subscribe: topic });
  }

  unsubscribe(topic) {
    this.topics.delete(topic);
    this.send({ unsubscribe: topic });
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, attempt: this.attempt, retryAt: this.retryAt, ...extra } }));
  }

  connect() {
    clearTimeout(this.timer);
    const t = token();
    const url = t ? `${wsUrl}?token=${encodeURIComponent(t)}` : wsUrl;
    this.setState(this.connectedOnce ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      this.scheduleRetry();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      for (const topic of this.topics) ws.send(JSON.stringify({ subscribe: topic }));
    };
    ws.onmessage = (ev) => {
      this.lastMessage = performance.now();
      let msg;
      try {
        msg = JSON.parse(typeof ev.data === "string" ? ev.data : this.decoder.decode(ev.data));
      } catch {
        return; // one bad frame must not take the page down
      }
      if (msg && msg.type === "snapshot") {
        this.connectedOnce = true;
        this.attempt = 0;
        this.liveSince = Date.now();
        this.setState("live");
        this.armWatchdog();
      }
      this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.watchdog);
      if (ev.code === 4401) {
        // The orchestrator refused the token: retrying with the same one cannot help.
        this.setState("auth", { code: ev.code, reason: ev.reason });
        return;
      }
      this.scheduleRetry(ev.code === 4408 ? 0 : undefined);
    };
    ws.onerror = () => { /* onclose follows and decides */ };
  }

  scheduleRetry(delayMs) {
    this.attempt += 1;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.attempt - 1, 8));
    // Jitter so a hundred open dashboards do not all knock at the same instant after a restart.
    const delay = delayMs ?? Math.round(base * (0.8 + Math.random() * 0.4));
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  armWatchdog() {
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      if (this.ws && performance.now() - this.lastMessage > SILENCE_MS) {
        const ws = this.ws;
        this.ws = null;
        ws.onclose = ws.onmessage = ws.onerror = null;
        try { ws.close(4000, "silent"); } catch { /* gone */ }
        clearInterval(this.watchdog);
        this.scheduleRetry();
      }
    }, 5000);
  }
}
