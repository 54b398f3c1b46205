"""Energy and emissions from stored samples (real PostgreSQL): per GPU, job, tenant and cluster, from power or the
energy counter, raw and from the 1-minute rollup, weighted by a time-varying intensity."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import orjson
import pytest

from orchestrator.carbon.config import CarbonSettings
from orchestrator.carbon.intensity import IntensitySeries
from orchestrator.carbon.service import CarbonService
from orchestrator.ingest import COLUMNS, sample_row
from orchestrator.migrate import apply_migrations
from tests.alerts.support import sample

# Recent enough that no retention or compression policy touches the rows during the test.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def power_at(t: np.ndarray) -> np.ndarray:
    # A job-like profile: ramps, plateaus and noise, so the integral is not trivially a rectangle.
    rng = np.random.default_rng(7)
    return 150.0 + 400.0 * (t > 40) * (t < 260) + 60.0 * np.sin(t / 7.0) + rng.normal(0, 8.0, t.shape)


def integral(ts: np.ndarray, ps: np.ndarray, a: float, b: float) -> float:
    """Trapezoid of power over [a, b], interpolating power at the ends: the reference."""
    inside = (ts > a) & (ts < b)
    xs = np.concatenate([[a], ts[inside], [b]])
    ys = np.interp(xs, ts, ps)
    return float(np.sum((ys[1:] + ys[:-1]) / 2.0 * np.diff(xs)))


async def _insert(conn: asyncpg.Connection, node: str, ts: np.ndarray, ps: np.ndarray, *, index: int = 0,
                  counter: bool = False) -> str:
    rows = []
    energy = 5e9  # the counter starts wherever the driver left it
    for k, (t, p) in enumerate(zip(ts, ps, strict=True)):
        if k:
            energy += (ts[k] - ts[k - 1]) * (p + ps[k - 1]) / 2.0 * 1000.0
        s = sample(node, T0 + timedelta(seconds=float(t)), index, power_w=float(p),
                   energy_mj=energy if counter else None)
        rows.append(sample_row(s))
    await conn.copy_records_to_table("gpu_samples", records=rows, columns=COLUMNS)
    return f"GPU-{node}-{index}"


async def _job(conn, job_id: str, tenant: str, node: str, uuids: list[str], start: datetime, end: datetime | None):
    await conn.execute(
        "INSERT INTO jobs (id, name, tenant, spec, job_type, gpus, gpu_mem_mb, max_duration_s, state, node, "
        "assignment, submitted_at, started_at, finished_at, state_since) "
        "VALUES ($1, $1, $2, '{}'::jsonb, 'batch', $3, 1024, 3600, $4, $5, $6::jsonb, $7, $7, $8, $7)",
        job_id, tenant, len(uuids), "SUCCEEDED" if end else "RUNNING", node,
        orjson.dumps([{"uuid": u, "index": i} for i, u in enumerate(uuids)]).decode(), start, end)


@pytest.fixture
async def conn(database_url):
    await apply_migrations(database_url)
    c = await asyncpg.connect(database_url)
    yield c
    await c.close()


async def test_job_energy_matches_the_integral_of_its_gpu_power(conn, unique_node):
    ts = np.arange(0.0, 300.0, 1.0)
    ps = power_at(ts)
    uuid = await _insert(conn, unique_node, ts, ps)
    other = await _insert(conn, unique_node, ts, ps * 0.5, index=1)  # a busy neighbour must not leak in
    start, end = T0 + timedelta(seconds=50.5), T0 + timedelta(seconds=250.25)
    await _job(conn, "jenergy1", "team-a", unique_node, [uuid], start, end)
    svc = CarbonService(CarbonSettings(intensity_g_per_kwh=300.0))
    rep = await svc.report(conn, by="job", start=T0 - timedelta(minutes=5), end=T0 + timedelta(minutes=10))
    [row] = [r for r in rep.rows if r.key == "jenergy1"]
    expected_j = integral(ts, ps, 50.5, 250.25)
    assert row.energy_kwh * 3.6e6 == pytest.approx(expected_j, rel=0.01)
    assert row.co2_g == pytest.approx(row.energy_kwh * 300.0, rel=1e-9)
    assert row.covered_s == pytest.approx(199.75, abs=0.01)
    # by GPU: the whole series of each; the cluster is their sum; the idle part is unattributed.
    by_gpu = await svc.report(conn, by="gpu", start=T0, end=T0 + timedelta(seconds=299))
    got = {r.key: r.energy_kwh * 3.6e6 for r in by_gpu.rows}
    assert got[uuid] == pytest.approx(integral(ts, ps, 0, 299), rel=1e-6)
    assert got[other] == pytest.approx(integral(ts, ps * 0.5, 0, 299), rel=1e-6)
    assert by_gpu.total_energy_kwh * 3.6e6 == pytest.approx(got[uuid] + got[other], rel=1e-9)
    assert rep.unattributed_energy_kwh == pytest.approx(rep.total_energy_kwh - row.energy_kwh, rel=1e-9)


async def test_energy_counter_is_preferred_and_a_counter_reset_falls_back_to_power(conn, unique_node):
    ts = np.arange(0.0, 120.0, 0.5)
    ps = power_at(ts)
    uuid = await _insert(conn, unique_node, ts, ps, counter=True)
    # Make power lie by a factor of 2 where the counter is valid: the counter must win.
    await conn.execute("UPDATE gpu_samples SET power_w = power_w * 2 WHERE gpu_uuid = $1", uuid)
    svc = CarbonService(CarbonSettings())
    rep = await svc.report(conn, by="gpu", start=T0, end=T0 + timedelta(seconds=119.5))
    assert rep.rows[0].energy_kwh * 3.6e6 == pytest.approx(integral(ts, ps, 0, 119.5), rel=1e-6)
    # A driver reload resets the counter: that one segment is integrated from power (doubled here).
    cut = T0 + timedelta(seconds=60)
    await conn.execute("UPDATE gpu_samples SET energy_mj = energy_mj - 5e9 WHERE gpu_uuid = $1 AND time >= $2",
                       uuid, cut)
    rep2 = await svc.report(conn, by="gpu", start=T0, end=T0 + timedelta(seconds=119.5))
    seg = integral(ts, ps, 59.5, 60.0)
    assert rep2.rows[0].energy_kwh * 3.6e6 == pytest.approx(integral(ts, ps, 0, 119.5) + seg, rel=1e-6)


async def test_gaps_are_not_integrated_and_shared_gpus_split_energy(conn, unique_node):
    ts = np.concatenate([np.arange(0.0, 100.0, 1.0), np.arange(400.0, 500.0, 1.0)])  # a 300 s silence
    ps = np.full(ts.shape, 200.0)
    uuid = await _insert(conn, unique_node, ts, ps)
    svc = CarbonService(CarbonSettings(max_gap_s=60.0))
    rep = await svc.report(conn, by="gpu", start=T0, end=T0 + timedelta(seconds=500))
    assert rep.rows[0].energy_kwh * 3.6e6 == pytest.approx(200.0 * (99 + 99), rel=1e-9)
    assert rep.rows[0].covered_s == pytest.approx(198.0)
    # Two jobs on one GPU at once share its energy evenly; per-tenant totals add them up.
    await _job(conn, "jshare1", "team-a", unique_node, [uuid], T0, T0 + timedelta(seconds=50))
    await _job(conn, "jshare2", "team-b", unique_node, [uuid], T0, T0 + timedelta(seconds=50))
    jobs = await svc.report(conn, by="job", start=T0, end=T0 + timedelta(seconds=500))
    per = {r.key: r.energy_kwh * 3.6e6 for r in jobs.rows}
    assert per["jshare1"] == pytest.approx(200.0 * 50 / 2, rel=1e-9)
    assert per["jshare2"] == pytest.approx(per["jshare1"], rel=1e-9)
    tenants = await svc.report(conn, by="tenant", start=T0, end=T0 + timedelta(seconds=500))
    assert {r.key for r in tenants.rows} == {"team-a", "team-b"}


async def test_time_varying_intensity_weights_each_segment(conn, unique_node):
    ts = np.arange(0.0, 3600.0, 10.0)
    ps = np.full(ts.shape, 360.0)  # 360 W for an hour: 0.1 kWh per 1000 s
    await _insert(conn, unique_node, ts, ps)
    half = (T0 + timedelta(minutes=30)).timestamp()
    series = IntensitySeries((T0.timestamp() - 86400, half), (100.0, 500.0), "test.csv")
    svc = CarbonService(CarbonSettings())
    svc.series = series
    rep = await svc.report(conn, by="cluster", start=T0, end=T0 + timedelta(seconds=3590), bucket_s=600)
    kwh_first = 360.0 * 1800 / 3.6e6
    kwh_second = 360.0 * 1790 / 3.6e6
    assert rep.total_energy_kwh == pytest.approx(kwh_first + kwh_second, rel=1e-9)
    assert rep.total_co2_g == pytest.approx(kwh_first * 100 + kwh_second * 500, rel=1e-6)
    assert len(rep.series) == 6
    assert rep.series[0].co2_g == pytest.approx(rep.series[0].energy_kwh * 100, rel=1e-6)
    assert rep.series[-1].co2_g == pytest.approx(rep.series[-1].energy_kwh * 500, rel=1e-6)
    assert rep.intensity.mean_g_per_kwh == pytest.approx((100 * 1800 + 500 * 1790) / 3590, rel=1e-9)


async def test_long_ranges_use_the_minute_rollup(conn, unique_node, pg_server):
    ts = np.arange(0.0, 1200.0, 1.0)
    ps = power_at(ts)
    uuid = await _insert(conn, unique_node, ts, ps, counter=True)
    storage = await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'storage'")
    if storage == "timescaledb":
        await conn.execute("CALL refresh_continuous_aggregate('gpu_samples_1m', NULL, NULL)")
    else:
        await conn.execute(
            "INSERT INTO gpu_samples_1m (bucket, gpu_uuid, node, n, unhealthy_n, power_w_avg, energy_mj_min, "
            "energy_mj_max) SELECT date_bin('1 minute', time, 'epoch'), gpu_uuid, node, count(*), 0, avg(power_w), "
            "min(energy_mj), max(energy_mj) FROM gpu_samples WHERE gpu_uuid = $1 GROUP BY 1, 2, 3", uuid)
    svc = CarbonService(CarbonSettings())
    rep = await svc.report(conn, by="gpu", start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=18),
                           source="rollup")
    assert rep.source == "rollup"
    # Minute m's energy is the counter's increase from the end of minute m-1 to the end of minute m.
    expected = integral(ts, ps, 119.0, 1079.0)
    assert rep.rows[0].energy_kwh * 3.6e6 == pytest.approx(expected, rel=0.01)
    assert not math.isnan(rep.total_co2_g)
