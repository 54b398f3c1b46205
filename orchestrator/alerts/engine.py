"""The alert engine: evaluates every rule on each sample and on a periodic staleness check, and emits
("opened" | "resolved", AlertRecord) events. Pure computation, no I/O: the service stores and publishes."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

from orchestrator.alerts.anomaly import DetectorParams, GpuAnomaly, MetricDetector
from orchestrator.alerts.config import AlertSettings
from orchestrator.alerts.hysteresis import AlertRecord, Watch, step, tracker_name, ts
from services.schemas.alerts import AlertSeverity, AlertState
from services.schemas.telemetry import TelemetrySample

Event = tuple[str, AlertRecord]
NODE_RULE = "node_silent"
# A metric whose threshold rule is pending or open needs no anomaly alert as well: the threshold one says more,
# and the episode lasts until the metric is back near its baseline.
COVERED_BY = {"temp_c": ("temperature", "thermal_throttling"), "mem_temp_c": ("temperature",),
              "power_w": ("power_at_limit", "power_throttling"),
              "sm_clock_mhz": ("thermal_throttling", "power_throttling"), "mem_used_mb": ("memory_full",)}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


class AlertEngine:
    def __init__(self, settings: AlertSettings, has_jobs: Callable[[str, str], bool] | None = None) -> None:
        self.s = settings
        self.r = settings.rules
        self.gpus: dict[str, Watch] = {}
        self.nodes: dict[str, Watch] = {}
        self.events: list[Event] = []
        self.has_jobs = has_jobs or (lambda node, uuid: False)
        self.anomaly = DetectorParams(self.r.anomaly)
        self._xid_app = frozenset(self.r.xid.app_codes)
        self._xid_ignore = frozenset(self.r.xid.ignore_codes)
        self._thermal = frozenset(self.r.thermal_throttling.reasons)
        self._power = frozenset(self.r.power_throttling.reasons)
        self.samples_seen = 0
        self.samples_out_of_order = 0

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def gpu_watch(self, node: str, uuid: str) -> Watch:
        w = self.gpus.get(uuid)
        if w is None:
            w = self.gpus[uuid] = Watch(node, uuid)
            w.state["last_t"] = -math.inf
        elif w.node != node:
            w.node = node  # a GPU moved (or the node was renamed); alerts follow the GPU
        return w

    def node_watch(self, node: str) -> Watch:
        w = self.nodes.get(node)
        if w is None:
            w = self.nodes[node] = Watch(node, None)
        return w

    def open_alerts(self) -> list[AlertRecord]:
        out = [a for w in self.gpus.values() for a in w.open.values()]
        out.extend(a for w in self.nodes.values() for a in w.open.values())
        return out

    def adopt(self, rec: AlertRecord, now_t: float) -> None:
        """Take over an alert that was open before a restart, so it is resolved, not opened a second time."""
        w = self.node_watch(rec.node) if rec.gpu_uuid is None else self.gpu_watch(rec.node, rec.gpu_uuid)
        name = rec.name
        w.open[name] = rec
        step(w, name, True, now_t, 0.0, 0.0)
        if rec.rule in ("xid", "xid_app", "ecc_dbe"):
            # The quiet period of an event alert starts again from the restart.
            w.state[f"{rec.rule}_event_t"] = now_t

    def _open(self, w: Watch, name: str, rule: str, severity: AlertSeverity, metric: str | None,
              message: str) -> None:
        tr = w.trackers[name]
        rec = AlertRecord(rule=rule, severity=severity, node=w.node, gpu_uuid=w.gpu_uuid, metric=metric,
                          value=tr.value, threshold=tr.threshold, message=message, opened_at=ts(tr.active_since))
        w.open[name] = rec
        self.events.append(("opened", rec))

    def _resolve(self, w: Watch, name: str, at: float | None = None) -> None:
        tr = w.trackers.pop(name, None)
        rec = w.open.pop(name)
        rec.state = AlertState.RESOLVED
        when = at if at is not None else (tr.clear_since if tr and tr.clear_since is not None else None)
        rec.resolved_at = ts(when) if when is not None else datetime.now(UTC)
        self.events.append(("resolved", rec))

    def _cond(self, w: Watch, rule, name: str, active: bool, t: float, value: float | None,
              threshold: float | None, s: TelemetrySample, metric: str | None = None) -> None:
        act = step(w, name, active, t, rule.for_s, rule.clear_for_s, value, threshold)
        if act == "open":
            self._open(w, name, name.split(":")[0], rule.severity, metric, self._describe(name, s, rule))
        elif act == "resolve":
            self._resolve(w, name)

    def _describe(self, name: str, s: TelemetrySample, rule) -> str:
        """The human sentence of an alert, built only when one opens."""
        gpu = f"GPU {s.gpu_index} on {s.node}"
        if name == "gpu_unhealthy":
            return f"{gpu} reports unhealthy: {s.error or 'no reason given'}"
        if name == "temperature":
            return f"{gpu} at {s.temp_c:.1f} °C, at or above {rule.threshold_c:g} °C for {rule.for_s:g} s"
        if name == "memory_full":
            pct = 100.0 * s.mem_used_mb / s.mem_total_mb
            return (f"{gpu} memory {pct:.1f} % full ({s.mem_used_mb:.0f} of {s.mem_total_mb:.0f} MB) "
                    f"for {rule.for_s:g} s")
        if name in ("thermal_throttling", "power_throttling"):
            hit = [x for x in s.throttle_reasons if x in set(rule.reasons)]
            kind = "thermally" if name == "thermal_throttling" else "power"
            return f"{gpu} {kind} throttled ({', '.join(hit)}) for {rule.for_s:g} s at {_fmt(s.temp_c)} °C"
        if name == "power_at_limit":
            return f"{gpu} drawing {s.power_w:.0f} W of its {s.power_limit_w:.0f} W limit for {rule.for_s:g} s"
        if name == "busy_without_job":
            return (f"{gpu} {s.util_gpu_pct:.0f} % busy with no job placed on it for {rule.for_s:g} s "
                    "(stuck kernel or work outside Aether)")
        if name.startswith("anomaly:"):
            return self._anomaly_message(s, name.split(":", 1)[1], w=self.gpus[s.gpu_uuid])
        return f"{name} on {gpu}"

    # ---- samples -------------------------------------------------------------------------------------------
    def on_sample(self, s: TelemetrySample) -> None:
        w = self.gpus.get(s.gpu_uuid)
        if w is None or w.node != s.node:
            w = self.gpu_watch(s.node, s.gpu_uuid)
        st = w.state
        t = s.time.timestamp()
        if t <= st["last_t"]:
            # A redelivery, a replay, or batches committed out of order by concurrent writers: the states are
            # judged already, but an XID is an event that must not be missed.
            self.samples_out_of_order += 1
            if s.xid_errors and t not in st.get("xid_times", ()):
                self._xid(w, s, st["last_t"], t)
            return
        st["last_t"] = t
        self.samples_seen += 1
        r = self.r
        tracked = w.trackers  # a condition neither active nor tracked needs no work at all: the common case
        opened = w.open
        if (not s.healthy or "gpu_unhealthy" in tracked) and r.gpu_unhealthy.enabled:
            self._cond(w, r.gpu_unhealthy, "gpu_unhealthy", not s.healthy, t, None, None, s)
        if s.xid_errors or "xid_event_t" in st or "xid_app_event_t" in st:
            self._xid(w, s, t, t)
        if s.ecc_dbe is not None and r.ecc_dbe.enabled:
            self._ecc(w, s, t)
        if not s.healthy:
            return  # a placeholder sample carries no readings to judge
        rule = r.temperature
        if s.temp_c is not None and rule.enabled:
            thr = rule.threshold_c - rule.clear_margin_c if "temperature" in opened else rule.threshold_c
            active = s.temp_c >= thr
            if active or "temperature" in tracked:
                self._cond(w, rule, "temperature", active, t, s.temp_c, rule.threshold_c, s)
        rule = r.memory_full
        if s.mem_used_mb is not None and s.mem_total_mb and rule.enabled:
            pct = 100.0 * s.mem_used_mb / s.mem_total_mb
            active = pct >= (rule.clear_pct if "memory_full" in opened else rule.threshold_pct)
            if active or "memory_full" in tracked:
                self._cond(w, rule, "memory_full", active, t, round(pct, 2), rule.threshold_pct, s)
        reasons = s.throttle_reasons
        if reasons or "thermal_throttling" in tracked or "power_throttling" in tracked:
            for name, rule, wanted in (("thermal_throttling", r.thermal_throttling, self._thermal),
                                       ("power_throttling", r.power_throttling, self._power)):
                active = not wanted.isdisjoint(reasons)
                if rule.enabled and (active or name in tracked):
                    self._cond(w, rule, name, active, t, s.temp_c if name[0] == "t" else s.power_w,
                               None if name[0] == "t" else s.power_limit_w, s)
        rule = r.power_at_limit
        if s.power_w is not None and s.power_limit_w and rule.enabled:
            ratio = s.power_w / s.power_limit_w
            active = ratio >= (rule.clear_ratio if "power_at_limit" in opened else rule.threshold_ratio)
            if active or "power_at_limit" in tracked:
                self._cond(w, rule, "power_at_limit", active, t, s.power_w, s.power_limit_w, s)
        rule = r.busy_without_job
        if s.util_gpu_pct is not None and rule.enabled:
            thr = rule.clear_util_pct if "busy_without_job" in opened else rule.util_pct
            active = s.util_gpu_pct >= thr and not self.has_jobs(s.node, s.gpu_uuid)
            if active or "busy_without_job" in tracked:
                self._cond(w, rule, "busy_without_job", active, t, s.util_gpu_pct, rule.util_pct, s)
        if r.anomaly.enabled:
            self._anomaly(w, s, t)

    def _xid(self, w: Watch, s: TelemetrySample, t: float, sample_t: float) -> None:
        rule = self.r.xid
        if not rule.enabled:
            return
        if s.xid_errors:
            # Remember which samples carried XIDs, so a redelivered one is not a new event.
            seen_at = w.state.setdefault("xid_times", set())
            if len(seen_at) >= 64:
                seen_at.clear()
            seen_at.add(sample_t)
        crit = [c for c in s.xid_errors if c not in self._xid_app and c not in self._xid_ignore]
        app = [c for c in s.xid_errors if c in self._xid_app and c not in self._xid_ignore]
        for name, codes, severity in (("xid", crit, rule.severity), ("xid_app", app, rule.app_severity)):
            key = f"{name}_event_t"
            if codes:
                # A late sample's event counts from its own time (it may be older than the last one judged).
                w.state[key] = max(w.state.get(key, sample_t), sample_t)
                if name not in w.open and name not in w.trackers:
                    w.state[f"{name}_first_t"] = sample_t
                w.state[f"{name}_codes"] = codes
            last = w.state.get(key)
            if last is None:
                continue
            active = t - last < rule.quiet_s
            if not active and name not in w.open:
                w.state.pop(key, None)
            seen = w.state.get(f"{name}_codes") or []
            act = step(w, name, active, t, 0.0, 0.0, float(seen[0]) if seen else None, None)
            if act == "open":
                w.trackers[name].active_since = w.state.pop(f"{name}_first_t", t)
                self._open(w, name, name, severity, "xid",
                           f"XID {', '.join(map(str, seen))} on GPU {s.gpu_index} of {s.node}"
                           + (" (application-level)" if name == "xid_app" else ""))
            elif act == "resolve":
                self._resolve(w, name, last + rule.quiet_s)
                w.state.pop(key, None)

    def _ecc(self, w: Watch, s: TelemetrySample, t: float) -> None:
        rule = self.r.ecc_dbe
        prev = w.state.get("ecc_last")
        w.state["ecc_last"] = s.ecc_dbe
        # The first count seen is a baseline: errors from before Aether watched this GPU are in its telemetry.
        if prev is not None and s.ecc_dbe > prev:
            w.state["ecc_dbe_event_t"] = t
            w.state["ecc_new"] = s.ecc_dbe - prev
        last = w.state.get("ecc_dbe_event_t")
        if last is None:
            return
        active = t - last < rule.quiet_s
        act = step(w, "ecc_dbe", active, t, 0.0, 0.0, float(s.ecc_dbe), None)
        if act == "open":
            self._open(w, "ecc_dbe", "ecc_dbe", rule.severity, "ecc_dbe",
                       f"{w.state.get('ecc_new', 1)} uncorrectable (double-bit) ECC error(s) on GPU {s.gpu_index} "
                       f"of {s.node}; {s.ecc_dbe} since driver load")
        elif act == "resolve":
            self._resolve(w, "ecc_dbe", last + rule.quiet_s)
            w.state.pop("ecc_dbe_event_t", None)

    def _anomaly(self, w: Watch, s: TelemetrySample, t: float) -> None:
        rule = self.r.anomaly
        p = self.anomaly
        ga: GpuAnomaly | None = w.state.get("anomaly")  # type: ignore[assignment]
        if ga is None:
            ga = w.state["anomaly"] = GpuAnomaly()
        elif ga.last_t is not None and t - ga.last_t < rule.min_interval_s:
            return
        ga.begin(t, s.util_gpu_pct, p)
        tracked = w.trackers
        for metric, direction, floor in p.metrics:
            x = getattr(s, metric)
            if x is None:
                continue
            det = ga.detectors.get(metric)
            if det is None:
                det = ga.detectors[metric] = MetricDetector(metric, direction, floor)
            name = "anomaly:" + metric
            threshold = False
            for other in COVERED_BY.get(metric, ()):
                if other in tracked:
                    threshold = True
                    break
            if threshold and det.covered_since is None:
                det.covered_since = t
            z = ga.score(det, x, p, may_learn=det.covered_since is None and name not in tracked)
            if z is None:
                continue  # learning or settling: no evidence either way
            if det.covered_since is not None:
                # The episode belongs to the threshold alert until the metric is back near its baseline (the
                # cooling tail of an overheat is not a second problem).
                if not threshold and (z < rule.z_clear or t - det.covered_since > rule.relearn_after_s):
                    det.covered_since = None
                else:
                    z = 0.0
            rec = w.open.get(name)
            if rec is not None and t - rec.opened_at.timestamp() > rule.relearn_after_s:
                det.reset()  # open this long: the new level is the normal one now
                self._resolve(w, name, t)
                continue
            active = z >= (rule.z_clear if rec is not None else rule.z_open)
            if active or name in tracked:
                b = det.baselines.get(ga.band)
                self._cond(w, rule, name, active, t, float(x), b.mean if b else None, s, metric=metric)

    def _anomaly_message(self, s: TelemetrySample, metric: str, w: Watch) -> str:
        ga: GpuAnomaly = w.state["anomaly"]  # type: ignore[assignment]
        det = ga.detectors[metric]
        b = det.baselines.get(ga.band)
        where = "below" if det.direction == "low" else "above"
        base = f"{b.mean:.1f} ± {math.sqrt(max(b.var, 0.0)):.1f}" if b else "n/a"
        z = abs(det.last_z or 0.0)
        return (f"{metric} on GPU {s.gpu_index} of {s.node} at {getattr(s, metric):.1f}, {z:.1f} σ {where} its "
                f"usual {base} at this load (util {self.anomaly.band_label(ga.band)}) for "
                f"{self.r.anomaly.for_s:g} s")

    # ---- staleness (orchestrator clock) --------------------------------------------------------------------
    def check_stale(self, cluster, now_mono: float, now_t: float, started_mono: float) -> None:
        """Open/resolve `telemetry_stale` per GPU and `node_silent` per node from the live cluster model."""
        rule = self.r.telemetry_stale
        if not rule.enabled:
            return
        quiet_nodes = set()
        for node in cluster.nodes.values():
            hb = node.heartbeat
            if hb is None:
                continue  # learnt from telemetry only: no heartbeat to go silent
            age = now_mono - max(node.last_heartbeat_mono, started_mono)
            silent = age > rule.node_after_s
            if age > rule.gpu_after_s:
                # Heartbeats stopped too: the node is going silent, and its alert will say so for every GPU.
                quiet_nodes.add(node.name)
            w = self.node_watch(node.name)
            act = step(w, NODE_RULE, silent, now_t, 0.0, rule.clear_for_s, round(age, 1), rule.node_after_s)
            if act == "open":
                self._open(w, NODE_RULE, NODE_RULE, rule.node_severity, "heartbeat",
                           f"node {node.name} sent no heartbeat for {rule.node_after_s:g} s")
            elif act == "resolve":
                self._resolve(w, NODE_RULE)
        for node in cluster.nodes.values():
            hb = node.heartbeat
            if hb is None:
                continue
            for inv in hb.gpus:
                gpu = cluster.gpus.get(inv.uuid)
                if gpu is None:
                    continue
                w = self.gpu_watch(node.name, inv.uuid)
                first = w.state.setdefault("first_seen_mono", now_mono)
                age = now_mono - max(gpu.sample_mono, first, started_mono)
                stale = age > rule.gpu_after_s
                if stale and node.name in quiet_nodes and "telemetry_stale" not in w.open:
                    continue  # one node alert, not one per GPU
                act = step(w, "telemetry_stale", stale, now_t, 0.0, rule.clear_for_s, round(age, 1),
                           rule.gpu_after_s)
                if act == "open":
                    self._open(w, "telemetry_stale", "telemetry_stale", rule.severity, "telemetry",
                               f"no telemetry from GPU {inv.index} of {node.name} for {rule.gpu_after_s:g} s "
                               "while its node heartbeats")
                elif act == "resolve":
                    self._resolve(w, "telemetry_stale")

    # ---- operator actions ----------------------------------------------------------------------------------
    def find_open(self, alert_id: int) -> AlertRecord | None:
        for rec in self.open_alerts():
            if rec.id == alert_id:
                return rec
        return None

    def force_resolve(self, rec: AlertRecord, now_t: float) -> bool:
        """An operator resolves an alert whose subject is gone for good (a decommissioned node or GPU)."""
        w = self.nodes.get(rec.node) if rec.gpu_uuid is None else self.gpus.get(rec.gpu_uuid)
        if w is None or w.open.get(rec.name) is not rec:
            return False
        self._resolve(w, rec.name, now_t)
        for key in ("xid_event_t", "xid_app_event_t", "ecc_dbe_event_t"):
            if key.startswith(rec.rule + "_event"):
                w.state.pop(key, None)
        return True


__all__ = ["NODE_RULE", "AlertEngine", "Event", "tracker_name"]
