"""Telemetry ingest: JetStream -> gpu_samples with COPY; acked only after commit, so nothing is lost or stored twice.

Pipeline, one process: PullFeed (pull requests kept in flight) -> decode (pydantic, rows built from each
sample's __dict__) -> a bounded queue -> `ingest_writers` writers, each COPYing whatever has queued up in one
transaction, then acking, then updating the cluster model and the sample listeners. Decoding the next
messages overlaps the database's work on the previous batch; batches grow by themselves under load.

Exactly once: delivery is at least once (a message is acked only after its rows are committed; a crash before
the ack means redelivery), and the primary key (gpu_uuid, time) makes a second copy impossible: a batch that
meets rows already stored goes through a staging table and INSERT ... ON CONFLICT DO NOTHING.

The stream is on file storage; how often nats-server fsyncs it (`sync_interval`) is its config's choice — see
docs/telemetry-storage.md for the trade-off and the recommended setting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import operator
import re
import time
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import orjson
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from orchestrator import throttle
from orchestrator.pullfeed import PullFeed
from orchestrator.runtime import DB_DOWN_ERRORS, Runtime
from services import subjects
from services.bus import dead_letter, decode, ensure_telemetry_stream, js_delivery
from services.errors import MalformedMessage
from services.fastdecode import FastDecoder
from services.schemas import TelemetryBatch, TelemetrySample

log = logging.getLogger("aether.ingest")

# gpu_samples columns, in the order rows are built: all but the last three are TelemetrySample fields of the same
# name, read in one C call (itemgetter on the instance __dict__); then the throttle reasons as a bit mask, the XID
# list (NULL when empty: arrays are costly to COPY) and the processes as JSON text.
COLUMNS = ("time", "gpu_uuid", "node", "gpu_index", "healthy", "util_gpu_pct", "util_mem_pct", "mem_used_mb",
           "mem_total_mb", "temp_c", "mem_temp_c", "power_w", "power_limit_w", "energy_mj", "sm_clock_mhz",
           "mem_clock_mhz", "gfx_clock_mhz", "pstate", "fan_pct", "ecc_sbe", "ecc_dbe", "retired_pages",
           "remapped_rows", "pcie_tx_kbps", "pcie_rx_kbps", "bar1_used_mb", "bar1_total_mb", "mig_mode", "error",
           "throttle_mask", "xid_errors", "processes")
_fields_of = operator.itemgetter(*COLUMNS[:-3])
_COLUMN_LIST = ", ".join(COLUMNS)
_NUL = b"\\u0000"  # PostgreSQL text cannot hold NUL: such a message could never be stored
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # the escape itself, not an escaped backslash + "u0000"
# What a value the table cannot hold raises: PostgreSQL's data exceptions, and asyncpg's own range checks while
# encoding (an int beyond int32/int64, a float beyond float32). Anything else is not the data's fault.
DATA_ERRORS = (asyncpg.DataError, OverflowError, ValueError)
DEADLETTER_STREAM = "AETHER_DEADLETTER"

_LATE_MARK = """
INSERT INTO aether_meta (key, value) VALUES ('rollup_dirty_from', $1)
ON CONFLICT (key) DO UPDATE
SET value = least(aether_meta.value::timestamptz, EXCLUDED.value::timestamptz)::text
"""


def sample_row(s: TelemetrySample) -> tuple:
    """One gpu_samples row, in COLUMNS order."""
    d = s.__dict__
    procs = d["processes"]
    if procs is None:
        pj = None
    elif not procs:
        pj = "[]"
    else:
        pj = orjson.dumps([p.__dict__ for p in procs]).decode()
    tr = d["throttle_reasons"]
    return (*_fields_of(d), throttle.mask(tr) if tr else 0, d["xid_errors"] or None, pj)


async def write_rows(conn: asyncpg.Connection, rows: list[tuple], *, maybe_stored: bool = False,
                     late_from: datetime | None = None) -> int:
    """Store the rows in one transaction; returns how many were new. COPY straight into gpu_samples; if some
    were stored before (a redelivery after a crash between commit and ack) — known up front (`maybe_stored`)
    or found by the COPY — go through a staging table and INSERT ... ON CONFLICT DO NOTHING instead."""
    if not maybe_stored:
        try:
            if late_from is None:
                # One COPY statement is a transaction of its own (autocommit, durable when it returns): no
                # BEGIN and COMMIT round trips, which at a 1 Hz trickle were most of a write's cost.
                await conn.copy_records_to_table("gpu_samples", records=rows, columns=COLUMNS)
            else:
                async with conn.transaction():
                    await conn.copy_records_to_table("gpu_samples", records=rows, columns=COLUMNS)
                    await conn.execute(_LATE_MARK, late_from.isoformat())
            return len(rows)
        except asyncpg.UniqueViolationError:
            pass
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS gpu_samples_stage (LIKE gpu_samples) "
                           "ON COMMIT DELETE ROWS")
        await conn.copy_records_to_table("gpu_samples_stage", records=rows, columns=COLUMNS)
        status = await conn.execute(f"INSERT INTO gpu_samples ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} "
                                    "FROM gpu_samples_stage ON CONFLICT DO NOTHING")
        if late_from is not None:
            await conn.execute(_LATE_MARK, late_from.isoformat())
    return int(status.split()[-1])


def times_delivered(msg: Msg) -> int:
    """How many times JetStream has delivered this message, from its ack subject (no full metadata parse)."""
    d = js_delivery(msg.reply)
    return d[0] if d is not None else 1


@dataclass
class Chunk:
    """Decoded messages on their way to the database."""

    taken: list[Msg]  # everything taken from the feed together (released as one)
    msgs: list[Msg] = field(default_factory=list)  # the well-formed ones, acked after commit
    rows: list[tuple] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # rows per message, to find a poison message
    batches: list[TelemetryBatch] = field(default_factory=list)
    redelivered: bool = False
    oldest: datetime | None = None


class Ingest:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.s = rt.settings
        self.feed: PullFeed | None = None
        self.queue: asyncio.Queue[Chunk] = asyncio.Queue(maxsize=max(1, self.s.ingest_writers))
        self.stored = 0  # samples newly stored by this process (tests and the benchmark read it)
        self.decoder = FastDecoder(TelemetryBatch)

    async def ensure_consumer(self) -> None:
        """Stream and durable consumer, created or brought to this config; every replica shares the consumer."""
        await ensure_telemetry_stream(self.rt.js, max_age_s=self.s.telemetry_stream_max_age_s,
                                      replicas=self.s.stream_replicas)
        cfg = ConsumerConfig(durable_name=self.s.ingest_consumer, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=self.s.ingest_ack_wait_s,
                             max_ack_pending=max(self.s.ingest_max_ack_pending, self.s.ingest_credit),
                             max_deliver=-1, filter_subject=subjects.TELEMETRY_ALL)
        await self.rt.js.add_consumer(subjects.TELEMETRY_STREAM, cfg)

    async def ensure_deadletter_stream(self) -> None:
        """Keep dead letters a week so an operator can read what was set aside; made once, never reconfigured."""
        cfg = StreamConfig(name=DEADLETTER_STREAM, subjects=[f"{subjects.DEADLETTER_PREFIX}.>"],
                           storage=StorageType.FILE, max_age=7 * 24 * 3600, max_bytes=1 << 30,
                           discard=DiscardPolicy.OLD, num_replicas=self.s.stream_replicas)
        try:
            await self.rt.js.add_stream(cfg)
        except BadRequestError as exc:
            if getattr(exc, "err_code", None) not in (10058, 10065):  # exists / subjects overlap another stream
                log.warning("dead-letter stream not created", extra={"error": repr(exc)})

    async def run(self) -> None:
        await self._until_ok(self.ensure_deadletter_stream, "dead-letter stream")
        await self._until_ok(self.ensure_consumer, "telemetry consumer")
        await self.rt.db_ready.wait()
        await self._storage_ready()
        s = self.s
        tune_gc(s.ingest_gc_threshold)
        self.feed = PullFeed(self.rt.nc, subjects.TELEMETRY_STREAM, s.ingest_consumer, batch=s.ingest_batch,
                             credit=s.ingest_credit, expires_s=s.ingest_fetch_timeout_s,
                             heartbeat_s=min(s.ingest_heartbeat_s, s.ingest_fetch_timeout_s / 2),
                             keepalive_s=s.ingest_ack_wait_s / 3, ensure=self.ensure_consumer)
        await self.feed.start()
        for i in range(s.ingest_writers):
            self.rt.spawn(self._writer(), f"ingest-writer-{i}")
        self.rt.spawn(self._stats(), "ingest-stats")
        log.info("ingest started", extra={"consumer": s.ingest_consumer, "credit": s.ingest_credit,
                                          "writers": s.ingest_writers})
        try:
            while True:
                msgs = await self.feed.take(s.ingest_write_max_msgs)
                if len(msgs) < s.ingest_write_max_msgs // 4 and s.ingest_linger_s > 0:
                    # A trickle: wait a moment for more, so a transaction (BEGIN, COPY, COMMIT with its fsync,
                    # ~0.3 ms of CPU) carries tens of messages, not one. Costs at most the linger in lag.
                    await asyncio.sleep(s.ingest_linger_s)
                    self.feed.take_more(msgs, s.ingest_write_max_msgs)
                chunk = await self.decode(msgs)
                if chunk.msgs:
                    await self.queue.put(chunk)
                else:
                    self.feed.release(msgs)
        finally:
            await self.feed.stop()

    async def _storage_ready(self) -> None:
        """Let partition upkeep (orchestrator/partitions.py) make today's partition first; never wait forever."""
        ready = self.rt.components.setdefault("telemetry_storage_ready", asyncio.Event())
        try:
            await asyncio.wait_for(ready.wait(), 60)
        except TimeoutError:
            log.warning("telemetry storage upkeep has not run yet; ingesting anyway (the default partition "
                        "catches the rows)")

    async def _until_ok(self, fn, what: str) -> None:
        delay = 0.5
        while True:
            try:
                await fn()
                return
            except Exception as exc:  # NATS not reachable yet (or JetStream not ready): keep trying
                log.warning(f"{what} not ready, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- decoding -------------------------------------------------------------------------------------------

    async def decode(self, msgs: list[Msg]) -> Chunk:
        """Validate each message against the contract; the bad ones are dead-lettered and acked at once."""
        chunk = Chunk(taken=msgs)
        now = time.time()
        horizon = now + self.s.ingest_max_future_s
        late = now - self.s.ingest_late_after_s
        rows = chunk.rows
        oldest = None
        for i, msg in enumerate(msgs):
            if i % 128 == 127:
                await asyncio.sleep(0)  # a big backlog chunk must not hold the event loop (HTTP, heartbeats)
            try:
                if _NUL in msg.data and _NUL_ESCAPE.search(msg.data):
                    raise MalformedMessage(f"telemetry on {msg.subject} holds a NUL character, which text "
                                           "columns cannot store")
                batch = decode(TelemetryBatch, msg.data, msg.subject, self.decoder)
                if subjects.node_of(msg.subject) != batch.node:
                    raise MalformedMessage(f"telemetry for node {batch.node!r} arrived on {msg.subject}")
                samples = batch.samples
                if samples:
                    times = [s.time for s in samples]
                    first = min(times)
                    last = max(times)
                    if last.timestamp() > horizon:
                        raise MalformedMessage(f"sample time {last.isoformat()} on {msg.subject} is more than "
                                               f"{self.s.ingest_max_future_s:g}s ahead of this orchestrator's clock")
                    if first.timestamp() < late and (oldest is None or first < oldest):
                        oldest = first
            except MalformedMessage as exc:
                await self._reject(msg, exc.message)
                continue
            rows.extend(map(sample_row, samples))
            chunk.counts.append(len(samples))
            chunk.msgs.append(msg)
            chunk.batches.append(batch)
            if times_delivered(msg) > 1:
                chunk.redelivered = True
                self.rt.metrics.ingest_redelivered.inc()
        chunk.oldest = oldest
        return chunk

    async def _reject(self, msg: Msg, reason: str) -> None:
        self.rt.metrics.ingest_malformed.inc()
        log.warning("malformed telemetry dead-lettered", extra={"subject": msg.subject, "error": reason})
        await dead_letter(self.rt.nc, "telemetry", msg.subject, msg.data, reason)
        try:
            await msg.ack()
        except Exception:
            pass  # unacked, it comes back and is judged the same way again

    # -- writing --------------------------------------------------------------------------------------------

    async def _writer(self) -> None:
        limit = self.s.ingest_write_max_msgs
        conn = _HeldConnection(self.rt)
        try:
            while True:
                chunks = [await self.queue.get()]
                n = len(chunks[0].msgs)
                # Whatever else has queued up while the previous write ran goes in the same transaction.
                while n < limit and not self.queue.empty():
                    nxt = self.queue.get_nowait()
                    chunks.append(nxt)
                    n += len(nxt.msgs)
                merged = chunks[0] if len(chunks) == 1 else _merge(chunks)
                await self._commit(merged, conn)
                for c in chunks:
                    self.feed.release(c.taken)
                self.rt.metrics.ingest_held.set(self.feed.held_count + self.feed.buffered)
        finally:
            await conn.release()

    async def _commit(self, chunk: Chunk, conn: _HeldConnection) -> None:
        t0 = time.perf_counter()
        stored, poisoned = await self._write_until_committed(chunk, conn)
        m = self.rt.metrics
        m.ingest_write_seconds.observe(time.perf_counter() - t0)
        good = [msg for i, msg in enumerate(chunk.msgs) if i not in poisoned] if poisoned else chunk.msgs
        await self.feed.ack(good)
        now = time.time()
        self.stored += stored
        m.ingest_messages.inc(len(good))
        m.ingest_samples.inc(stored)
        m.ingest_duplicates.inc(len(chunk.rows) - stored - sum(chunk.counts[i] for i in poisoned))
        m.ingest_batches.inc()
        m.ingest_last_commit.set(now)
        batches = [b for i, b in enumerate(chunk.batches) if i not in poisoned] if poisoned else chunk.batches
        observe = m.ingest_lag.observe
        # The cluster model keeps the latest sample per GPU: when catching up, a chunk holds several ticks of a
        # node, and only its newest batch need reach the model (a batch is one node's GPUs at one tick).
        newest: dict[str, TelemetryBatch] = {}
        for batch in batches:
            observe(max(0.0, now - batch.time.timestamp()))
            prev = newest.get(batch.node)
            if prev is None or batch.time >= prev.time:
                newest[batch.node] = batch
        self.rt.components.setdefault("changed_gpus", set()).update(
            self.rt.cluster.apply_batches(newest.values(), time.monotonic()))
        for listener in self.rt.components.get("sample_listeners", []):
            try:
                listener(batches)
            except Exception:
                log.exception("sample listener failed", extra={"listener": getattr(listener, "__qualname__", "?")})

    async def _write_until_committed(self, chunk: Chunk, conn: _HeldConnection) -> tuple[int, set[int]]:
        """Retry with back-off while PostgreSQL is down (or refuses writes): nothing is acked meanwhile, and the
        feed keeps the held messages from being redelivered. A batch the database rejects as data (a value
        it cannot store) is written message by message and the culprits are dead-lettered."""
        delay = 0.2
        while True:
            try:
                stored = await write_rows(await conn.get(), chunk.rows, maybe_stored=chunk.redelivered,
                                          late_from=chunk.oldest)
                if delay > 0.2:
                    log.info("database back: batch stored", extra={"messages": len(chunk.msgs)})
                return stored, set()
            except DATA_ERRORS:
                await conn.release()
                return await self._write_one_by_one(chunk)
            except Exception as exc:
                await conn.release()  # whatever state it is in, a fresh one from the pool is the safe retry
                # Not the data's fault (database down, read-only, disk full, a bug): keep the messages, retry.
                self.rt.metrics.ingest_db_errors.inc()
                log.log(logging.WARNING if isinstance(exc, DB_DOWN_ERRORS) else logging.ERROR,
                        "batch not stored, retrying", extra={"error": repr(exc), "retry_in_s": delay,
                                                                 "messages": len(chunk.msgs)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write_one_by_one(self, chunk: Chunk) -> tuple[int, set[int]]:
        stored = 0
        poisoned: set[int] = set()
        start = 0
        for i, (msg, count) in enumerate(zip(chunk.msgs, chunk.counts, strict=True)):
            rows = chunk.rows[start:start + count]
            start += count
            while True:
                try:
                    async with self.rt.db() as conn:
                        stored += await write_rows(conn, rows, maybe_stored=True, late_from=chunk.oldest)
                    break
                except DATA_ERRORS as exc:
                    poisoned.add(i)
                    await self._reject(msg, f"database refused the samples: {exc}")
                    break
                except Exception as exc:
                    self.rt.metrics.ingest_db_errors.inc()
                    log.warning("message not stored, retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(1.0)
        return stored, poisoned

    async def _stats(self) -> None:
        """Backlog as JetStream sees it, for /metrics: what waits in the stream, what is delivered unacked."""
        while True:
            await asyncio.sleep(5.0)
            try:
                info = await self.rt.js.consumer_info(subjects.TELEMETRY_STREAM, self.s.ingest_consumer)
                self.rt.metrics.ingest_stream_pending.set(info.num_pending or 0)
                self.rt.metrics.ingest_ack_pending.set(info.num_ack_pending or 0)
            except Exception:
                pass  # NATS away; the gauges keep their last value
            if self.feed is not None:
                self.rt.metrics.ingest_held.set(self.feed.held_count + self.feed.buffered)


def tune_gc(threshold: int) -> None:
    """Every decoded sample is a few GC-tracked objects, and the cluster model keeps the latest of each GPU alive:
    with Python's default threshold (700 allocations) the cyclic collector runs every few messages and rescans
    them, which measured here tripled the cost of decoding. Ingest's objects are acyclic (refcounting frees
    them), so collect far less often, and move what start-up made into the permanent generation. Process-wide,
    on purpose; 0 leaves Python's settings alone."""
    if threshold <= 0:
        return
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(threshold, max(g1, 50), max(g2, 100))
    log.info("garbage collector tuned for ingest", extra={"gc_threshold": gc.get_threshold()})


class _HeldConnection:
    """A writer's own database connection, kept from one write to the next: taking one from the pool and giving
    it back for every transaction costs the pool's reset query (a round trip and a few statements in PostgreSQL)
    each time. Given back after any failure, so a retry starts on a fresh connection (after a PostgreSQL restart
    the old one is dead), and when the writer stops."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._ctx = None
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._conn is None:
            ctx = self.rt.db()
            self._conn = await ctx.__aenter__()
            self._ctx = ctx
        return self._conn

    async def release(self) -> None:
        ctx, self._ctx, self._conn = self._ctx, None, None
        if ctx is not None:
            try:
                await ctx.__aexit__(None, None, None)
            except Exception:
                pass  # a broken connection: the pool closes it; nothing else to do


def _merge(chunks: list[Chunk]) -> Chunk:
    out = Chunk(taken=[])
    for c in chunks:
        out.msgs.extend(c.msgs)
        out.rows.extend(c.rows)
        out.counts.extend(c.counts)
        out.batches.extend(c.batches)
        out.redelivered = out.redelivered or c.redelivered
        if c.oldest is not None and (out.oldest is None or c.oldest < out.oldest):
            out.oldest = c.oldest
    return out


async def start(rt: Runtime) -> None:
    ingest = Ingest(rt)
    rt.components["ingest"] = ingest
    rt.spawn(ingest.run(), "ingest")
