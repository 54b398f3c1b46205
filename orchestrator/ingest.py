"""Telemetry ingest: a durable JetStream pull consumer, rows written with COPY, acked only after commit."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import orjson
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from orchestrator.runtime import DB_DOWN_ERRORS, Runtime
from services import subjects
from services.bus import dead_letter, decode, ensure_telemetry_stream
from services.errors import MalformedMessage
from services.schemas import TelemetryBatch, TelemetrySample

log = logging.getLogger("aether.ingest")

COLUMNS = ("time", "gpu_uuid", "node", "gpu_index", "healthy", "util_gpu_pct", "util_mem_pct", "mem_used_mb",
           "mem_total_mb", "temp_c", "power_w", "power_limit_w", "sm_clock_mhz", "mem_clock_mhz", "pstate",
           "throttle_reasons", "fan_pct", "energy_mj", "ecc_sbe", "ecc_dbe", "pcie_tx_kbps", "pcie_rx_kbps",
           "xid_errors", "extra")
_EXTRA = ("pci_bus_id", "gfx_clock_mhz", "mem_temp_c", "bar1_used_mb", "bar1_total_mb", "retired_pages",
          "remapped_rows", "mig_mode", "error")


def sample_row(s: TelemetrySample) -> tuple:
    """One gpu_samples row; readings without a column of their own go to `extra` (jsonb)."""
    extra = {k: getattr(s, k) for k in _EXTRA if getattr(s, k) is not None}
    if s.processes is not None:
        extra["processes"] = [p.model_dump() for p in s.processes]
    return (s.time, s.gpu_uuid, s.node, s.gpu_index, s.healthy, s.util_gpu_pct, s.util_mem_pct, s.mem_used_mb,
            s.mem_total_mb, s.temp_c, s.power_w, s.power_limit_w, s.sm_clock_mhz, s.mem_clock_mhz, s.pstate,
            s.throttle_reasons, s.fan_pct, s.energy_mj, s.ecc_sbe, s.ecc_dbe, s.pcie_tx_kbps, s.pcie_rx_kbps,
            s.xid_errors, orjson.dumps(extra).decode() if extra else None)


async def write_rows(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """COPY the rows; if some were stored before (a redelivery after a crash between commit and ack), fall
    back to a staging table and INSERT ... ON CONFLICT DO NOTHING. Returns the rows newly stored."""
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("gpu_samples", records=rows, columns=COLUMNS)
        return len(rows)
    except asyncpg.UniqueViolationError:
        pass
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS gpu_samples_stage (LIKE gpu_samples) ON COMMIT DELETE ROWS")
        await conn.copy_records_to_table("gpu_samples_stage", records=rows, columns=COLUMNS)
        status = await conn.execute("INSERT INTO gpu_samples SELECT * FROM gpu_samples_stage ON CONFLICT DO NOTHING")
    return int(status.split()[-1])


class Ingest:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.s = rt.settings

    async def run(self) -> None:
        await ensure_telemetry_stream(self.rt.js, max_age_s=self.s.telemetry_stream_max_age_s,
                                      replicas=self.s.stream_replicas)
        await self.rt.db_ready.wait()
        # max_ack_pending above the fetch batch: with explicit acks a batch larger than the pending limit stalls.
        cfg = ConsumerConfig(durable_name=self.s.ingest_consumer, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=self.s.ingest_ack_wait_s,
                             max_ack_pending=max(self.s.ingest_max_ack_pending, self.s.ingest_batch * 4),
                             max_deliver=-1, filter_subject=subjects.TELEMETRY_ALL)
        psub = await self.rt.js.pull_subscribe(subjects.TELEMETRY_ALL, durable=self.s.ingest_consumer,
                                               stream=subjects.TELEMETRY_STREAM, config=cfg)
        log.info("ingest started", extra={"consumer": self.s.ingest_consumer, "batch": self.s.ingest_batch})
        while True:
            try:
                msgs = await psub.fetch(self.s.ingest_batch, timeout=self.s.ingest_fetch_timeout_s)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # NATS reconnecting: try again shortly
                log.warning("fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            await self.handle(msgs)

    async def handle(self, msgs) -> None:
        rows: list[tuple] = []
        good = []
        batches: list[TelemetryBatch] = []
        for msg in msgs:
            try:
                batch = decode(TelemetryBatch, msg.data, msg.subject)
                if subjects.node_of(msg.subject) != batch.node:
                    raise MalformedMessage(f"telemetry for node {batch.node!r} arrived on {msg.subject}")
            except MalformedMessage as exc:
                self.rt.metrics.ingest_malformed.inc()
                log.warning("malformed telemetry dead-lettered", extra={"subject": msg.subject, "error": exc.message})
                await dead_letter(self.rt.nc, "telemetry", msg.subject, msg.data, exc.message)
                await msg.ack()
                continue
            rows.extend(sample_row(s) for s in batch.samples)
            good.append(msg)
            batches.append(batch)
        if not good:
            return
        stored = await self._write_until_committed(rows, good)
        for msg in good:
            await msg.ack()
        now = time.time()
        m = self.rt.metrics
        m.ingest_messages.inc(len(good))
        m.ingest_samples.inc(stored)
        m.ingest_duplicates.inc(len(rows) - stored)
        m.ingest_batches.inc()
        m.ingest_last_commit.set(now)
        arrived = time.monotonic()
        changed = []
        for batch in batches:
            m.ingest_lag.observe(max(0.0, now - batch.time.timestamp()))
            for s in batch.samples:
                changed.append(self.rt.cluster.apply_sample(s, arrived))
        listeners = self.rt.components.get("sample_listeners", [])
        for listener in listeners:
            listener(batches)
        pending = self.rt.components.setdefault("changed_gpus", set())
        pending.update(g.uuid for g in changed)

    async def _write_until_committed(self, rows: list[tuple], msgs) -> int:
        """Retry with back-off while PostgreSQL is down, telling JetStream we are still working on the batch."""
        delay = 0.2
        while True:
            try:
                async with self.rt.db() as conn:
                    return await write_rows(conn, rows)
            except DB_DOWN_ERRORS as exc:
                self.rt.metrics.ingest_db_errors.inc()
                log.warning("batch not stored, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                for msg in msgs:
                    try:
                        await msg.in_progress()
                    except Exception:
                        pass  # NATS may be away too; redelivery then covers us (writes are idempotent)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def start(rt: Runtime) -> None:
    ingest = Ingest(rt)
    rt.components["ingest"] = ingest
    rt.spawn(ingest.run(), "ingest")

