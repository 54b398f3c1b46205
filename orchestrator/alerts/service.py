"""The alerts component: takes committed telemetry from ingest (queued, never evaluated on the ingest path),
runs the engine, keeps critical GPUs out of placement, stores alerts and publishes them (NATS, dashboard, webhooks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from orchestrator.alerts import store
from orchestrator.alerts.config import AlertSettings
from orchestrator.alerts.engine import AlertEngine
from orchestrator.alerts.hysteresis import AlertRecord
from orchestrator.alerts.webhook import WebhookSender
from orchestrator.errors import AlertNotFound
from orchestrator.runtime import DB_DOWN_ERRORS, Runtime
from services import subjects
from services.schemas import Alert, AlertSeverity, AlertState, TelemetryBatch

log = logging.getLogger("aether.alerts")

EXCLUDE_PREFIX = "alert "  # excluded_reason values this component owns start with it
YIELD_EVERY = 2000  # samples evaluated between yields to the event loop


def _batch_time(b: TelemetryBatch):
    return b.time


class _OpenCollector:
    """`aether_alerts_open{severity,rule}`, read from the engine at scrape time, so it cannot drift."""

    def __init__(self, svc: AlertService) -> None:
        self.svc = svc

    def collect(self):
        g = GaugeMetricFamily("aether_alerts_open", "Open alerts", labels=["severity", "rule"])
        counts: dict[tuple[str, str], int] = {}
        for rec in self.svc.engine.open_alerts():
            k = (rec.severity.value, rec.rule)
            counts[k] = counts.get(k, 0) + 1
        for (sev, rule), n in sorted(counts.items()):
            g.add_metric([sev, rule], n)
        yield g

    def describe(self):
        return []


class AlertService:
    def __init__(self, rt: Runtime, settings: AlertSettings) -> None:
        self.rt = rt
        self.s = settings
        self.engine = AlertEngine(settings, has_jobs=self._has_jobs)
        self.queue: deque[list[TelemetryBatch]] = deque()
        self.queued_samples = 0
        self._wake = asyncio.Event()
        self.outbox: deque[tuple[str, AlertRecord]] = deque()
        self._outbox_wake = asyncio.Event()
        self.published: set[tuple[str, int]] = set()  # (event, id(record)) published before being stored
        self.recent: deque[AlertRecord] = deque(maxlen=settings.recent_keep or 1)
        self.excluded: dict[str, dict[str, str]] = {}  # gpu uuid -> alert key -> reason
        self.loaded = asyncio.Event()
        self.started_mono = time.monotonic()
        r = rt.metrics.registry
        self.m_opened = Counter("aether_alerts_opened_total", "Alerts opened", ["severity", "rule"], registry=r)
        self.m_resolved = Counter("aether_alerts_resolved_total", "Alerts resolved", ["severity", "rule"], registry=r)
        self.m_dropped = Counter("aether_alerts_eval_dropped_batches_total",
                                 "Telemetry batches not evaluated because the evaluation queue was full", registry=r)
        self.m_queue = Gauge("aether_alerts_eval_queue_batches", "Telemetry batches waiting for evaluation",
                             registry=r)
        self.m_store_errors = Counter("aether_alerts_store_errors_total", "Alert writes retried (database down)",
                                      registry=r)
        self.m_excluded = Gauge("aether_alerts_excluded_gpus", "GPUs kept out of placement by a critical alert",
                                registry=r)
        r.register(_OpenCollector(self))
        self.webhooks = WebhookSender(settings.webhooks, queue_size=settings.webhook_queue,
                                      workers=settings.webhook_workers, registry=r)

    # ---- hooks -----------------------------------------------------------------------------------------------
    def on_batches(self, batches: list[TelemetryBatch]) -> None:
        """Ingest's listener: O(1), never blocks; the evaluator task does the work."""
        if len(self.queue) >= self.s.queue_batches:
            self.queue.popleft()
            self.m_dropped.inc()
        self.queue.append(batches)
        self._wake.set()

    def _has_jobs(self, node: str, uuid: str) -> bool:
        gpu = self.rt.cluster.gpus.get(uuid)
        if gpu is not None and gpu.jobs:
            return True
        n = self.rt.cluster.nodes.get(node)
        # The agent's own list covers jobs the scheduler has not attributed to a GPU (yet).
        return bool(n is not None and n.heartbeat is not None and n.heartbeat.running_jobs)

    # ---- loops -----------------------------------------------------------------------------------------------
    async def load(self) -> None:
        """Adopt the alerts left open by a previous run before judging anything, so none opens twice."""
        await self.rt.db_ready.wait()
        delay = 0.5
        while True:
            try:
                async with self.rt.db() as conn:
                    open_alerts = await store.load_open(conn)
                break
            except DB_DOWN_ERRORS as exc:
                log.warning("open alerts not loaded yet", extra={"error": repr(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        now = time.time()
        for rec in open_alerts:
            self.engine.adopt(rec, now)
            self._track_exclusion("opened", rec)
        log.info("alerts loaded", extra={"open": len(open_alerts)})
        self.loaded.set()

    async def evaluate(self) -> None:
        await self.loaded.wait()
        while True:
            while not self.queue:
                self.m_queue.set(0)
                self._wake.clear()
                await self._wake.wait()
            # Ingest commits chunks concurrently, so batches can arrive out of order: gather what arrives within
            # the reorder window and judge it in sample-time order (a sample older than one already judged for
            # its GPU is skipped, so order matters).
            if self.s.reorder_s > 0:
                await asyncio.sleep(self.s.reorder_s)
            self.m_queue.set(len(self.queue))
            pending: list[TelemetryBatch] = []
            while self.queue:
                pending.extend(self.queue.popleft())
            pending.sort(key=_batch_time)
            n = 0
            for batch in pending:
                for s in batch.samples:
                    self.engine.on_sample(s)
                n += len(batch.samples)
                if n >= YIELD_EVERY:
                    self._drain()
                    n = 0
                    await asyncio.sleep(0)
            self._drain()

    async def watch(self) -> None:
        await self.loaded.wait()
        while True:
            await asyncio.sleep(self.s.check_interval_s)
            self.engine.check_stale(self.rt.cluster, time.monotonic(), time.time(), self.started_mono)
            self._drain()
            self._apply_exclusions()

    async def write(self) -> None:
        """Store each event in order, then publish it. While PostgreSQL is down an event is published at once
        (without its id) and stored when the database is back: an alert must not wait for the database."""
        delay = 0.2
        while True:
            while not self.outbox:
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
            event, rec = self.outbox[0]
            try:
                fresh = await self._store(event, rec)
            except DB_DOWN_ERRORS as exc:
                self.m_store_errors.inc()
                if (event, id(rec)) not in self.published:
                    self.published.add((event, id(rec)))
                    await self._publish(event, rec)
                log.warning("alert not stored, retrying", extra={"error": repr(exc), "retry_in_s": delay,
                                                                 "rule": rec.rule, "event": event})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception:
                # A bug or a constraint we did not foresee: log it and move on rather than stall every alert.
                log.exception("alert write failed; event dropped", extra={"rule": rec.rule, "event": event})
                self.outbox.popleft()
                continue
            delay = 0.2
            self.outbox.popleft()
            if (event, id(rec)) in self.published:
                self.published.discard((event, id(rec)))
            elif fresh:
                await self._publish(event, rec)

    async def _store(self, event: str, rec: AlertRecord) -> bool:
        async with self.rt.db() as conn:
            if event == "opened":
                rec.id, fresh = await store.insert_open(conn, rec)
                return fresh
            if rec.id is not None:
                await store.resolve(conn, rec.id, rec.resolved_at)
            return True

    # ---- events ----------------------------------------------------------------------------------------------
    def _drain(self) -> None:
        events = self.engine.events
        if not events:
            return
        self.engine.events = []
        for event, rec in events:
            counter = self.m_opened if event == "opened" else self.m_resolved
            counter.labels(rec.severity.value, rec.rule).inc()
            log.log(logging.WARNING if rec.severity is AlertSeverity.CRITICAL else logging.INFO, f"alert {event}",
                    extra={"rule": rec.rule, "severity": rec.severity.value, "node": rec.node,
                           "gpu_uuid": rec.gpu_uuid, "metric": rec.metric, "value": rec.value,
                           "alert_message": rec.message})
            if event == "resolved":
                self.recent.append(rec)
            self._track_exclusion(event, rec)
            self.outbox.append((event, rec))
        self._apply_exclusions()
        self._outbox_wake.set()

    def _track_exclusion(self, event: str, rec: AlertRecord) -> None:
        if rec.severity is not AlertSeverity.CRITICAL or rec.gpu_uuid is None:
            return
        keys = self.excluded.setdefault(rec.gpu_uuid, {})
        if event == "opened":
            keys[rec.key] = f"{EXCLUDE_PREFIX}{rec.rule}: {rec.message}"[:300]
        else:
            keys.pop(rec.key, None)

    def _apply_exclusions(self) -> None:
        """Mirror the open critical alerts onto `GpuState.excluded_reason`, which the scheduler honours."""
        for uuid, keys in list(self.excluded.items()):
            gpu = self.rt.cluster.gpus.get(uuid)
            if gpu is None:
                continue  # not known yet (just restarted): applied when it appears
            if keys:
                reason = next(iter(keys.values()))
                if gpu.excluded_reason is None or gpu.excluded_reason.startswith(EXCLUDE_PREFIX):
                    if gpu.excluded_reason != reason:
                        gpu.excluded_reason = reason
                        self.rt.components.setdefault("changed_gpus", set()).add(uuid)
            else:
                if gpu.excluded_reason is not None and gpu.excluded_reason.startswith(EXCLUDE_PREFIX):
                    gpu.excluded_reason = None
                    self.rt.components.setdefault("changed_gpus", set()).add(uuid)
                del self.excluded[uuid]
        self.m_excluded.set(sum(1 for k in self.excluded.values() if k))

    async def _publish(self, event: str, rec: AlertRecord) -> None:
        alert = rec.to_model()
        try:
            await self.rt.nc.publish(subjects.alert(alert.severity.value, alert.node), alert.to_bytes(),
                                     headers={"Aether-Alert-Event": event})
        except Exception as exc:  # NATS away: the dashboard, the store and webhooks still get it
            log.warning("alert not published on NATS", extra={"error": repr(exc), "rule": rec.rule})
        self.rt.hub.publish({"type": "alert", "event": event, "alert": alert.model_dump(mode="json")})
        self.webhooks.submit(event, alert)

    # ---- operator actions ------------------------------------------------------------------------------------
    async def acknowledge(self, alert_id: int, by: str) -> Alert:
        async with self.rt.db() as conn:
            row = await store.acknowledge(conn, alert_id, by, datetime.now(UTC))
        if row is None:
            raise AlertNotFound(f"no alert {alert_id}")
        live = self.engine.find_open(alert_id)
        if live is not None:
            live.acknowledged_at, live.acknowledged_by = row.acknowledged_at, row.acknowledged_by
        await self._publish("acknowledged", live or row)
        return (live or row).to_model()

    async def resolve_manually(self, alert_id: int, by: str) -> Alert:
        async with self.rt.db() as conn:
            row = await store.get(conn, alert_id)
        if row is None:
            raise AlertNotFound(f"no alert {alert_id}")
        if row.state is AlertState.RESOLVED:
            return row.to_model()
        live = self.engine.find_open(alert_id)
        if live is None or not self.engine.force_resolve(live, time.time()):
            # Open in the table but unknown here (another replica's): resolve the row itself.
            row.state, row.resolved_at = AlertState.RESOLVED, datetime.now(UTC)
            row.message = f"{row.message} (resolved by {by})"[:1024]
            self.engine.events.append(("resolved", row))
        log.info("alert resolved by operator", extra={"alert_id": alert_id, "by": by})
        self._drain()
        return (live or row).to_model()

    def snapshot(self) -> list[dict]:
        """Open alerts, then the most recently resolved, newest first: what the dashboard shows on connect."""
        open_ = sorted(self.engine.open_alerts(), key=lambda a: a.opened_at, reverse=True)
        recent = list(reversed(self.recent)) if self.s.recent_keep else []
        return [a.to_model().model_dump(mode="json") for a in [*open_, *recent]]


async def start(rt: Runtime) -> None:
    settings: AlertSettings = rt.settings.alerts
    svc = AlertService(rt, settings)
    rt.components["alerts"] = svc
    if not settings.enabled:
        log.info("alerts disabled by configuration")
        svc.loaded.set()
        return
    rt.components.setdefault("sample_listeners", []).append(svc.on_batches)

    async def part():
        return svc.snapshot()

    rt.hub.snapshot_parts["alerts"] = part
    rt.spawn(svc.load(), "alerts-load")
    rt.spawn(svc.evaluate(), "alerts-evaluate")
    rt.spawn(svc.watch(), "alerts-watch")
    rt.spawn(svc.write(), "alerts-write")
    if settings.webhooks:
        rt.spawn(svc.webhooks.run(), "alerts-webhooks")
