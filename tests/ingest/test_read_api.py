"""Reading telemetry back, on both storage flavours: `GET /v1/gpus/{uuid}/telemetry` raw and bucketed (from the
rollup and on the fly), and /metrics with dcgm-exporter's names and labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from orchestrator.ingest import sample_row, write_rows
from orchestrator.migrate import apply_migrations
from services.schemas.telemetry_series import TelemetrySeries
from tests.ingest.support import batch, get, heartbeat, metrics, publish, sample, until
from tests.support.procs import auth_headers


# The TimescaleDB case carries the `timescale` mark, so tests/conftest.py alone decides whether it may be skipped
# (only without ../shared/timescaledb; with it, a missing extension stops the run).
@pytest.fixture(params=[pytest.param("timescaledb", marks=pytest.mark.timescale), "postgresql"])
def flavour_dsn(request, unique_node):
    if request.param == "timescaledb":
        pg = request.getfixturevalue("pg_server")
        assert pg.timescale, "the timescaledb extension is installed but this PostgreSQL did not load it"
    else:
        pg = request.getfixturevalue("plain_pg")
    return request.param, pg.create_database("api_" + unique_node)


async def _seed(dsn: str, node: str, now: datetime) -> datetime:
    """Three whole minutes of samples every 10 s for GPU 0 (util 0,10,..,50 each minute), a sample 10 s ago, all
    stored before the orchestrator starts (so plain PostgreSQL's first upkeep rolls the minutes up)."""
    await apply_migrations(dsn)
    m0 = now.replace(second=0, microsecond=0) - timedelta(minutes=6)
    rows = [sample_row(sample(node, 0, m0 + timedelta(minutes=m, seconds=10 * k), util_gpu_pct=10.0 * k + m,
                              throttle_reasons=["power_cap"] if k == 5 else []))
            for m in range(3) for k in range(6)]
    rows.append(sample_row(sample(node, 0, now - timedelta(seconds=10), util_gpu_pct=99.0)))
    conn = await asyncpg.connect(dsn)
    try:
        await write_rows(conn, rows)
    finally:
        await conn.close()
    return m0


async def _get(orch, uuid: str, **params) -> httpx.Response:
    return await get(f"{orch.url}/v1/gpus/{uuid}/telemetry", params=params, headers=auth_headers())


async def test_telemetry_read_api_and_dcgm_metrics(flavour_dsn, nats_server, unique_node, start_orch):
    flavour, dsn = flavour_dsn
    now = datetime.now(UTC)
    m0 = await _seed(dsn, unique_node, now)
    orch = start_orch(nats_server.url, dsn)
    uuid = f"GPU-{unique_node}-0"
    await heartbeat(nats_server.url, unique_node)
    await until(lambda: _ok(orch, uuid, m0), 20, "the GPU known to the API")

    # Raw: every sample in [from, to), in time order, real columns read back exactly.
    r = await _get(orch, uuid, **{"from": m0.isoformat(), "to": (m0 + timedelta(minutes=1)).isoformat()})
    body = r.json()
    TelemetrySeries.model_validate(body)
    assert r.status_code == 200 and body["source"] == "raw" and body["storage"] == flavour
    assert [p["util_gpu_pct"] for p in body["points"]] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert body["points"][5]["throttle_reasons"] == ["power_cap"] and body["points"][0]["throttle_reasons"] == []
    assert body["points"][0]["temp_c"] == 40.0 and body["points"][0]["xid_errors"] == []
    limited = (await _get(orch, uuid, **{"from": m0.isoformat(), "fields": "util_gpu_pct,power_w"})).json()
    assert set(limited["points"][0]) == {"time", "util_gpu_pct", "power_w"} and len(limited["points"]) == 19

    # Whole-minute buckets come from the rollup (plus raw samples after its watermark on plain PostgreSQL).
    body = (await _get(orch, uuid, **{"from": m0.isoformat(), "to": (now + timedelta(minutes=1)).isoformat(),
                               "bucket": "1m", "fields": "util_gpu_pct"})).json()
    TelemetrySeries.model_validate(body)
    assert body["source"] == "rollup" and body["bucket_s"] == 60
    pts = body["points"]
    assert [(p["n"], p["util_gpu_pct_avg"], p["util_gpu_pct_min"], p["util_gpu_pct_max"]) for p in pts[:3]] == \
        [(6, 25.0 + m, 0.0 + m, 50.0 + m) for m in range(3)]
    assert pts[-1]["util_gpu_pct_max"] == 99.0  # the recent sample, not rolled up yet on plain PostgreSQL
    two = (await _get(orch, uuid, **{"from": m0.isoformat(), "to": (m0 + timedelta(minutes=4)).isoformat(),
                              "bucket": "2m", "fields": "util_gpu_pct"})).json()["points"]
    assert sum(p["n"] for p in two) == 18 and max(p["util_gpu_pct_max"] for p in two) == 52.0
    # Other buckets are computed from raw samples.
    body = (await _get(orch, uuid, **{"from": m0.isoformat(), "to": (m0 + timedelta(minutes=1)).isoformat(),
                               "bucket": "30s", "fields": "util_gpu_pct"})).json()
    assert body["source"] == "raw_bucketed"
    assert [(p["n"], p["util_gpu_pct_avg"]) for p in body["points"]] == [(3, 10.0), (3, 40.0)]

    # Errors carry stable codes and name the parameter.
    bad = await _get(orch, uuid, bucket="fortnight")
    assert bad.status_code == 422 and bad.json()["code"] == "INVALID_REQUEST" and bad.json()["field"] == "bucket"
    naive = await _get(orch, uuid, **{"from": "2026-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["field"] == "from"
    huge = await _get(orch, uuid, **{"from": (now - timedelta(days=30)).isoformat(), "bucket": "1s"})
    assert huge.status_code == 422 and huge.json()["field"] == "bucket"
    assert (await _get(orch, "GPU-nobody")).json()["code"] == "GPU_NOT_FOUND"
    assert (await get(f"{orch.url}/v1/gpus/{uuid}/telemetry")).status_code == 401

    await _check_dcgm_metrics(nats_server.url, orch, unique_node + "x")


async def _check_dcgm_metrics(nats_url: str, orch, node: str) -> None:
    """Publish two ticks of a node whose heartbeat names its host and driver; /metrics must show them as
    dcgm-exporter would, next to the orchestrator's own ingest counters."""
    await heartbeat(nats_url, node, hostname="gpu-host-7", driver="550.54.15")
    now = datetime.now(UTC)
    first = batch(node, 1, now - timedelta(seconds=1), xid_errors=[79], throttle_reasons=["sw_thermal"])
    second = batch(node, 2, now, throttle_reasons=["power_cap", "sw_thermal"])
    await publish(nats_url, [first, second])

    async def latest_there():
        fams = await metrics(orch.url)
        util = fams.get("DCGM_FI_DEV_GPU_UTIL")
        ok = util and any(s.labels["hostname"] == "gpu-host-7" and s.value == second.samples[0].util_gpu_pct
                          for s in util.samples)
        return fams if ok else None

    fams = await until(latest_there, 20, "DCGM gauges for the node's latest tick")
    mine = {name: {s.labels["gpu"]: s for s in f.samples if s.labels.get("hostname") == "gpu-host-7"}
            for name, f in fams.items() if name.startswith("DCGM_")}
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP",
                 "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK",
                 "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"):
        assert set(mine[name]) == {"0", "1"}, name
    s0 = second.samples[0]
    util = mine["DCGM_FI_DEV_GPU_UTIL"]["0"]
    assert util.labels == {"gpu": "0", "UUID": s0.gpu_uuid, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
                           "modelName": "NVIDIA H100 80GB HBM3", "hostname": "gpu-host-7",
                           "DCGM_FI_DRIVER_VERSION": "550.54.15"}
    assert mine["DCGM_FI_DEV_FB_FREE"]["0"].value == s0.mem_total_mb - s0.mem_used_mb
    assert mine["DCGM_FI_DEV_XID_ERRORS"]["0"].value == 79  # the last XID, kept after newer samples had none
    assert mine["DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"]["0"].value == 0x004 | 0x020
    assert mine["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]["0"].value == s0.energy_mj
    assert fams["DCGM_FI_DEV_GPU_UTIL"].type == "gauge"
    assert fams["aether_ingest_samples"].samples[0].value >= 4
    assert fams["aether_ingest_lag_seconds"].type == "histogram"
    for name in ("aether_ingest_messages", "aether_ingest_malformed", "aether_ingest_redelivered_messages",
                 "aether_ingest_stream_pending_messages", "aether_ingest_ack_pending_messages"):
        assert name in fams, name


async def _ok(orch, uuid: str, start: datetime) -> bool:
    return (await _get(orch, uuid, **{"from": start.isoformat()})).status_code == 200
