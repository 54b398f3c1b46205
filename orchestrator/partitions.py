"""Telemetry storage upkeep. Plain PostgreSQL: daily partitions made ahead, the 1-minute rollup kept current,
partitions and rollup rows past retention dropped. TimescaleDB: its policies set to the configured periods, and
minutes that got samples later than the aggregate's refresh window re-materialised. One replica at a time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from orchestrator.runtime import DB_DOWN_ERRORS, Runtime
from orchestrator.settings import OrchestratorSettings
from services.schemas.telemetry_series import BUCKETED_METRICS

log = logging.getLogger("aether.partitions")

LOCK_KEY = 0x41657468_01  # one upkeep at a time across replicas
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)  # time_bucket's default origin: date_bin uses the same, buckets agree
ROLLUP_METRICS = BUCKETED_METRICS  # the columns of migrations/006_telemetry_rollup.*.sql
_AGG = ", ".join(f"avg({m}), min({m}), max({m})" for m in ROLLUP_METRICS)
_AGG_COLS = ", ".join(f"{m}_avg, {m}_min, {m}_max" for m in ROLLUP_METRICS)
_AGG_SET = ", ".join(f"{m}_{k} = EXCLUDED.{m}_{k}" for m in ROLLUP_METRICS for k in ("avg", "min", "max"))

ROLLUP_SQL = f"""
INSERT INTO gpu_samples_1m (bucket, gpu_uuid, node, n, unhealthy_n, {_AGG_COLS}, energy_mj_min, energy_mj_max)
SELECT date_bin(INTERVAL '1 minute', time, $3::timestamptz) AS b, gpu_uuid, min(node), count(*),
       count(*) FILTER (WHERE NOT healthy), {_AGG}, min(energy_mj), max(energy_mj)
FROM gpu_samples WHERE time >= $1 AND time < $2
GROUP BY b, gpu_uuid
ON CONFLICT (gpu_uuid, bucket) DO UPDATE SET node = EXCLUDED.node, n = EXCLUDED.n,
    unhealthy_n = EXCLUDED.unhealthy_n, {_AGG_SET}, energy_mj_min = EXCLUDED.energy_mj_min,
    energy_mj_max = EXCLUDED.energy_mj_max
"""


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def partition_name(day: datetime) -> str:
    return f"gpu_samples_p{day:%Y%m%d}"


def refresh_start_offset(s: OrchestratorSettings) -> timedelta:
    """The aggregate's refresh window: a day, but always well inside raw retention (a refresh over dropped
    chunks would empty the minutes it covers)."""
    return min(timedelta(days=1), timedelta(days=s.telemetry_raw_retention_days) / 2)


# -- plain PostgreSQL ---------------------------------------------------------------------------------------

async def existing_partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = 'gpu_samples'::regclass")
    return {r["relname"] for r in rows}


async def ensure_partition(conn: asyncpg.Connection, day: datetime) -> bool:
    """Make the partition for `day` (UTC). Rows of that day already caught by the default partition are moved
    into it first; the default is locked meanwhile so none slips in between (briefly: lock_timeout)."""
    start = day
    end = day + timedelta(days=1)
    name = partition_name(day)
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '5s'")
        await conn.execute("LOCK TABLE gpu_samples_default IN ACCESS EXCLUSIVE MODE")
        await conn.execute(f"CREATE TABLE {name} (LIKE gpu_samples INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        moved = await conn.execute(f"WITH m AS (DELETE FROM gpu_samples_default WHERE time >= $1 AND time < $2 "
                                   f"RETURNING *) INSERT INTO {name} SELECT * FROM m", start, end)
        await conn.execute(f"ALTER TABLE gpu_samples ATTACH PARTITION {name} FOR VALUES FROM "
                           f"('{start.isoformat()}') TO ('{end.isoformat()}')")
    n = int(moved.split()[-1])
    log.info("partition created", extra={"partition": name, "moved_from_default": n})
    return True


async def drop_expired_partitions(conn: asyncpg.Connection, keep_from: datetime) -> list[str]:
    """Drop day partitions wholly older than `keep_from`; trim the default partition the same way."""
    dropped = []
    for name in sorted(await existing_partitions(conn)):
        if not name.startswith("gpu_samples_p"):
            continue
        try:
            day = datetime.strptime(name.removeprefix("gpu_samples_p"), "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue  # not one of ours
        if day + timedelta(days=1) <= keep_from:
            # Dropping a partition locks the whole table for a moment: give up quickly rather than make the
            # COPYs queued behind the lock wait; the next round tries again.
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '1s'")
                    await conn.execute(f"DROP TABLE {name}")
            except asyncpg.LockNotAvailableError:
                log.info("partition busy, dropped next round", extra={"partition": name})
                continue
            dropped.append(name)
    await conn.execute("DELETE FROM gpu_samples_default WHERE time < $1", keep_from)
    if dropped:
        log.info("partitions dropped (retention)", extra={"partitions": dropped})
    return dropped


async def rollup(conn: asyncpg.Connection, start: datetime, end: datetime) -> int:
    """(Re-)aggregate the minutes in [start, end) into gpu_samples_1m."""
    status = await conn.execute(ROLLUP_SQL, start, end, ORIGIN)
    return int(status.split()[-1])


async def plain_upkeep(conn: asyncpg.Connection, s: OrchestratorSettings, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    have = await existing_partitions(conn)
    for d in range(-1, s.telemetry_partitions_ahead_days + 1):
        day = today + timedelta(days=d)
        if partition_name(day) not in have:
            await ensure_partition(conn, day)
    # Rollup: the minutes finished since the last run (with a minute of overlap), plus any minute ingest marked
    # because samples arrived for it after it was rolled up.
    upto = floor_minute(now - timedelta(seconds=s.ingest_late_after_s))
    meta = dict(await conn.fetch("SELECT key, value FROM aether_meta WHERE key IN "
                                 "('rollup_watermark', 'rollup_dirty_from')"))
    watermark = datetime.fromisoformat(meta["rollup_watermark"]) if "rollup_watermark" in meta else None
    start = (watermark - timedelta(minutes=1)) if watermark else (upto - timedelta(days=s.telemetry_raw_retention_days))
    dirty = meta.get("rollup_dirty_from")
    if dirty is not None:
        start = min(start, floor_minute(await conn.fetchval("SELECT $1::text::timestamptz", dirty)))
    start = max(start, upto - timedelta(days=s.telemetry_raw_retention_days))
    if start < upto:
        n = await rollup(conn, start, upto)
        log.debug("rollup refreshed", extra={"from": start.isoformat(), "to": upto.isoformat(), "rows": n})
    async with conn.transaction():
        await conn.execute("INSERT INTO aether_meta VALUES ('rollup_watermark', $1) ON CONFLICT (key) DO UPDATE "
                           "SET value = EXCLUDED.value", upto.isoformat())
        if dirty is not None:  # cleared only if no newer mark arrived meanwhile
            await conn.execute("DELETE FROM aether_meta WHERE key = 'rollup_dirty_from' AND value = $1", dirty)
    await drop_expired_partitions(conn, now - timedelta(days=s.telemetry_raw_retention_days))
    await conn.execute("DELETE FROM gpu_samples_1m WHERE bucket < $1",
                       now - timedelta(days=s.telemetry_rollup_retention_days))


async def rollup_watermark(conn: asyncpg.Connection) -> datetime | None:
    """Plain PostgreSQL: minutes before this are in gpu_samples_1m; later ones are read from raw samples."""
    value = await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'rollup_watermark'")
    return datetime.fromisoformat(value) if value else None


# -- TimescaleDB --------------------------------------------------------------------------------------------

async def _job_setting(conn: asyncpg.Connection, proc: str, table: str, key: str) -> timedelta | None:
    value = await conn.fetchval("SELECT (config->>$3)::interval FROM timescaledb_information.jobs "
                                "WHERE proc_name = $1 AND hypertable_name = $2", proc, table, key)
    return value


async def apply_timescale_policies(conn: asyncpg.Connection, s: OrchestratorSettings) -> list[str]:
    """Bring retention, compression and refresh policies to the configured periods; returns what changed."""
    changed = []
    want = [("policy_retention", "gpu_samples", "drop_after", timedelta(days=s.telemetry_raw_retention_days),
             "SELECT remove_retention_policy('gpu_samples', if_exists => true)",
             "SELECT add_retention_policy('gpu_samples', drop_after => $1::interval)"),
            ("policy_retention", "gpu_samples_1m", "drop_after", timedelta(days=s.telemetry_rollup_retention_days),
             "SELECT remove_retention_policy('gpu_samples_1m', if_exists => true)",
             "SELECT add_retention_policy('gpu_samples_1m', drop_after => $1::interval)"),
            ("policy_compression", "gpu_samples", "compress_after", timedelta(hours=s.telemetry_compress_after_h),
             "SELECT remove_compression_policy('gpu_samples', if_exists => true)",
             "SELECT add_compression_policy('gpu_samples', compress_after => $1::interval)"),
            ("policy_refresh_continuous_aggregate", "gpu_samples_1m", "start_offset", refresh_start_offset(s),
             "SELECT remove_continuous_aggregate_policy('gpu_samples_1m', if_exists => true)",
             "SELECT add_continuous_aggregate_policy('gpu_samples_1m', start_offset => $1::interval, "
             "end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute')")]
    for proc, table, key, value, remove, add in want:
        if await _job_setting(conn, proc, table, key) == value:
            continue
        async with conn.transaction():
            await conn.execute(remove)
            await conn.execute(add, value)
        changed.append(f"{proc}:{table}={value}")
    if changed:
        log.info("timescaledb policies set", extra={"changed": changed})
    return changed


async def timescale_upkeep(conn: asyncpg.Connection, s: OrchestratorSettings, now: datetime | None = None) -> None:
    """Minutes that got samples older than the refresh window are refreshed here; newer ones by the policy."""
    now = now or datetime.now(UTC)
    dirty = await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'rollup_dirty_from'")
    if dirty is None:
        return
    window_start = floor_minute(now - refresh_start_offset(s))
    since = floor_minute(await conn.fetchval("SELECT $1::text::timestamptz", dirty))
    since = max(since, now - timedelta(days=s.telemetry_raw_retention_days))
    if since < window_start:
        # Not in a transaction: TimescaleDB refuses to refresh inside one.
        await conn.execute("CALL refresh_continuous_aggregate('gpu_samples_1m', $1::timestamptz, $2::timestamptz)",
                           since, window_start + timedelta(minutes=1))
        log.info("late samples re-aggregated", extra={"from": since.isoformat(), "to": window_start.isoformat()})
    await conn.execute("DELETE FROM aether_meta WHERE key = 'rollup_dirty_from' AND value = $1", dirty)


# -- the component ------------------------------------------------------------------------------------------

async def upkeep_once(rt: Runtime, first: bool = False) -> bool:
    """One round, if no other replica is doing it now; True when this one did it."""
    async with rt.db() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            return False
        try:
            if rt.storage == "timescaledb":
                if first:
                    await apply_timescale_policies(conn, rt.settings)
                await timescale_upkeep(conn, rt.settings)
            else:
                await plain_upkeep(conn, rt.settings)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return True


async def _loop(rt: Runtime, ready: asyncio.Event) -> None:
    await rt.db_ready.wait()
    first = True
    while True:
        try:
            if await upkeep_once(rt, first):
                first = False
            # Another replica holding the lock is doing the same work: ready either way.
            ready.set()
        except DB_DOWN_ERRORS as exc:
            log.warning("telemetry upkeep skipped: database unavailable", extra={"error": repr(exc)})
        except Exception:
            log.exception("telemetry upkeep failed; retrying next round")
        await asyncio.sleep(rt.settings.telemetry_maintenance_s)


async def start(rt: Runtime) -> None:
    # Ingest waits for the first round, so today's partition exists before the first COPY (attaching a
    # partition while a COPY routes rows into the default one makes that COPY fail and retry).
    ready = rt.components.setdefault("telemetry_storage_ready", asyncio.Event())
    rt.spawn(_loop(rt, ready), "telemetry-upkeep")
