"""The storage schema on both flavours: TimescaleDB (hypertable, 1-minute continuous aggregate, compression,
retention and refresh policies, set to the configured periods) and plain PostgreSQL (daily partitions made ahead,
rows moved out of the default partition, the rollup kept current including late samples, retention)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from orchestrator import partitions
from orchestrator.ingest import sample_row, write_rows
from orchestrator.migrate import apply_migrations
from orchestrator.settings import OrchestratorSettings
from tests.ingest.support import sample


def _settings(dsn: str, **kw) -> OrchestratorSettings:
    return OrchestratorSettings(database_url=dsn, auth_enabled=False, **kw)


def _rows(node: str, t: datetime, utils: list[float], gpu: int = 0) -> list[tuple]:
    return [sample_row(sample(node, gpu, t + timedelta(seconds=k), util_gpu_pct=u)) for k, u in enumerate(utils)]


async def _jobs(conn: asyncpg.Connection) -> dict[tuple[str, str], dict]:
    import json
    rows = await conn.fetch("SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs "
                            "WHERE hypertable_name IN ('gpu_samples', 'gpu_samples_1m')")
    return {(r["proc_name"], r["hypertable_name"]): json.loads(r["config"]) for r in rows}


@pytest.mark.timescale
async def test_timescale_hypertable_aggregate_and_policies(database_url, unique_node):
    await apply_migrations(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'storage'") == "timescaledb"
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.hypertables "
                                   "WHERE hypertable_name = 'gpu_samples'") == 1
        cagg = await conn.fetchrow("SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
                                   "WHERE view_name = 'gpu_samples_1m'")
        assert cagg is not None and cagg["materialized_only"] is False  # real-time: recent minutes included
        segment = await conn.fetchval("SELECT segmentby_column_index FROM timescaledb_information.compression_settings"
                                      " WHERE hypertable_name = 'gpu_samples' AND attname = 'gpu_uuid'")
        assert segment == 1
        jobs = await _jobs(conn)
        assert jobs[("policy_retention", "gpu_samples")]["drop_after"] == "7 days"
        assert jobs[("policy_retention", "gpu_samples_1m")]["drop_after"] == "90 days"
        assert ("policy_compression", "gpu_samples") in jobs
        assert ("policy_refresh_continuous_aggregate", "gpu_samples_1m") in jobs

        # Configured periods replace the defaults; a second pass changes nothing.
        s = _settings(database_url, telemetry_raw_retention_days=1, telemetry_rollup_retention_days=30,
                      telemetry_compress_after_h=2)
        changed = await partitions.apply_timescale_policies(conn, s)
        assert len(changed) == 4
        jobs = await _jobs(conn)
        assert jobs[("policy_retention", "gpu_samples")]["drop_after"] == "1 day"
        assert jobs[("policy_retention", "gpu_samples_1m")]["drop_after"] == "30 days"
        assert jobs[("policy_compression", "gpu_samples")]["compress_after"] == "02:00:00"
        # The refresh window shrinks to stay inside the (now one-day) raw retention.
        assert jobs[("policy_refresh_continuous_aggregate", "gpu_samples_1m")]["start_offset"] == "12:00:00"
        assert await partitions.apply_timescale_policies(conn, s) == []

        # The aggregate answers at once (real-time) and after materialisation alike.
        minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
        assert await write_rows(conn, _rows(unique_node, minute, [10, 20, 30, 40])) == 4
        q = ("SELECT n, util_gpu_pct_avg, util_gpu_pct_min, util_gpu_pct_max FROM gpu_samples_1m "
             "WHERE gpu_uuid = $1 AND bucket = $2")
        live = await conn.fetchrow(q, f"GPU-{unique_node}-0", minute)
        assert (live["n"], live["util_gpu_pct_avg"], live["util_gpu_pct_min"], live["util_gpu_pct_max"]) == \
            (4, 25.0, 10.0, 40.0)
        await conn.execute("CALL refresh_continuous_aggregate('gpu_samples_1m', $1::timestamptz, $2::timestamptz)",
                           minute, minute + timedelta(minutes=1))
        assert await conn.fetchrow(q, f"GPU-{unique_node}-0", minute) == live
    finally:
        await conn.close()


@pytest.mark.timescale
async def test_timescale_late_samples_beyond_the_refresh_window(database_url, unique_node):
    await apply_migrations(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        s = _settings(database_url)
        old = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=2)
        # Stored late (ingest marks the minutes), older than the policy's one-day window.
        await write_rows(conn, _rows(unique_node, old, [50, 70]), late_from=old)
        assert await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'rollup_dirty_from'") is not None
        await partitions.timescale_upkeep(conn, s)
        assert await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'rollup_dirty_from'") is None
        # Materialised: visible even to a materialised-only read of the aggregate's own hypertable.
        mat = await conn.fetchval("SELECT format('%I.%I', materialization_hypertable_schema, "
                                  "materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates "
                                  "WHERE view_name = 'gpu_samples_1m'")
        n = await conn.fetchval(f"SELECT count(*) FROM {mat} WHERE gpu_uuid = $1", f"GPU-{unique_node}-0")
        assert n == 1
    finally:
        await conn.close()


async def test_duplicates_are_skipped_not_stored(database_url, unique_node):
    await apply_migrations(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        t = datetime.now(UTC) - timedelta(minutes=1)
        first = _rows(unique_node, t, [1, 2, 3])
        assert await write_rows(conn, first) == 3
        assert await write_rows(conn, first) == 0  # COPY meets the primary key: staging + ON CONFLICT
        more = first + _rows(unique_node, t + timedelta(seconds=10), [4, 5])
        assert await write_rows(conn, more, maybe_stored=True) == 2
        assert await conn.fetchval("SELECT count(*) FROM gpu_samples WHERE node = $1", unique_node) == 5
    finally:
        await conn.close()


async def test_plain_partitions_rollup_and_retention(plain_pg, unique_node):
    dsn = plain_pg.create_database("plain_" + unique_node)
    await apply_migrations(dsn)
    s = _settings(dsn, telemetry_raw_retention_days=7, telemetry_rollup_retention_days=90)
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.replace(hour=0, minute=0, second=0)
    gpu = f"GPU-{unique_node}-0"
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'storage'") == "postgresql"
        # A sample far ahead lands in the default partition until its day gets one.
        ahead = today + timedelta(days=10, hours=1)
        await write_rows(conn, _rows(unique_node, ahead, [5]))
        minute = now.replace(second=0) - timedelta(minutes=10)
        await write_rows(conn, _rows(unique_node, minute, [10, 20, 30]))
        await partitions.plain_upkeep(conn, s, now=now)
        have = await partitions.existing_partitions(conn)
        for d in range(-1, s.telemetry_partitions_ahead_days + 1):
            assert partitions.partition_name(today + timedelta(days=d)) in have
        where = "SELECT tableoid::regclass::text FROM gpu_samples WHERE gpu_uuid = $1 AND time = $2"
        assert await conn.fetchval(where, gpu, ahead) == "gpu_samples_default"
        await partitions.ensure_partition(conn, today + timedelta(days=10))
        assert await conn.fetchval(where, gpu, ahead) == partitions.partition_name(today + timedelta(days=10))
        assert await conn.fetchval("SELECT count(*) FROM gpu_samples_default") == 0

        # Rows of today went to today's partition (made by the first round); finished minutes are rolled up.
        assert await conn.fetchval(where, gpu, minute) == partitions.partition_name(minute.replace(
            hour=0, minute=0, second=0))
        q = ("SELECT n, util_gpu_pct_avg, util_gpu_pct_min, util_gpu_pct_max FROM gpu_samples_1m "
             "WHERE gpu_uuid = $1 AND bucket = $2")
        assert tuple(await conn.fetchrow(q, gpu, minute)) == (3, 20.0, 10.0, 30.0)
        assert await partitions.rollup_watermark(conn) == now.replace(second=0) - timedelta(minutes=1)

        # A late sample for a minute already rolled up: ingest marks it, the next round re-aggregates it.
        await write_rows(conn, _rows(unique_node, minute + timedelta(seconds=30), [60]), late_from=minute)
        await partitions.plain_upkeep(conn, s, now=now + timedelta(minutes=1))
        assert tuple(await conn.fetchrow(q, gpu, minute)) == (4, 30.0, 10.0, 60.0)
        assert await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'rollup_dirty_from'") is None

        # Retention: a day partition past 7 days is dropped, old rows in the default deleted, old rollup trimmed.
        old_day = today - timedelta(days=9)
        await partitions.ensure_partition(conn, old_day)
        await write_rows(conn, _rows(unique_node, old_day + timedelta(hours=3), [1]))
        await write_rows(conn, _rows(unique_node, today - timedelta(days=20), [1]))  # no partition: default
        await conn.execute("INSERT INTO gpu_samples_1m (bucket, gpu_uuid, node, n, unhealthy_n) "
                           "VALUES ($1, $2, $3, 1, 0)", now - timedelta(days=100), gpu, unique_node)
        await partitions.plain_upkeep(conn, s, now=now + timedelta(minutes=1))
        assert partitions.partition_name(old_day) not in await partitions.existing_partitions(conn)
        assert await conn.fetchval("SELECT count(*) FROM gpu_samples WHERE time < $1", today - timedelta(days=8)) == 0
        assert await conn.fetchval("SELECT count(*) FROM gpu_samples_1m WHERE bucket < $1",
                                   now - timedelta(days=90)) == 0
        assert await conn.fetchval("SELECT count(*) FROM gpu_samples WHERE gpu_uuid = $1 AND time = $2",
                                   gpu, minute) == 1  # recent data untouched
    finally:
        await conn.close()
