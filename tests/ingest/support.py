"""Helpers for the ingest tests: build and publish telemetry, count stored rows, read /metrics, poll with a deadline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import nats
from prometheus_client.parser import text_string_to_metric_families

from services import subjects
from services.bus import ensure_telemetry_stream
from services.schemas import GpuInventory, Heartbeat, TelemetryBatch, TelemetrySample
from tests.support.waiting import until  # noqa: F401  (re-exported for the tests here)


def sample(node: str, i: int, t: datetime, seq: int = 0, **kw: Any) -> TelemetrySample:
    values = dict(util_gpu_pct=float((seq * 7 + i) % 100), util_mem_pct=20.0, mem_used_mb=1000.0 + i,
                  mem_total_mb=81559.0, temp_c=40.0 + i, power_w=100.0 + seq % 50, power_limit_w=700.0,
                  sm_clock_mhz=1980.0, mem_clock_mhz=2619.0, energy_mj=1.0e6 + seq * 1000.0, pstate=0,
                  pci_bus_id=f"00000000:{0x18 + i:02X}:00.0", processes=[])
    values.update(kw)
    return TelemetrySample(time=t, node=node, gpu_index=i, gpu_uuid=f"GPU-{node}-{i}", name="NVIDIA H100 80GB HBM3",
                           **values)


def batch(node: str, seq: int, t: datetime, gpus: int = 2, **kw: Any) -> TelemetryBatch:
    return TelemetryBatch(node=node, seq=seq, time=t, interval_s=1.0,
                          samples=[sample(node, i, t, seq, **kw) for i in range(gpus)])


def batches(node: str, count: int, gpus: int = 2, start: datetime | None = None, step_s: float = 0.01,
            seq0: int = 0) -> list[TelemetryBatch]:
    """`count` ticks of one node, `step_s` apart, starting 30 s ago (recent, not 'late')."""
    t0 = start or datetime.now(UTC) - timedelta(seconds=30)
    return [batch(node, seq0 + k, t0 + timedelta(seconds=k * step_s), gpus) for k in range(count)]


async def publish(url: str, items: list[TelemetryBatch | tuple[str, bytes]]) -> int:
    """Publish to JetStream (waiting for every PubAck). Items are batches (sent on their node's subject with
    their de-dup id) or raw (subject, bytes)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_telemetry_stream(js)
        futures = []
        for item in items:
            if isinstance(item, TelemetryBatch):
                futures.append(await js.publish_async(subjects.telemetry(item.node), item.to_bytes(),
                                                      headers={"Nats-Msg-Id": item.msg_id()}))
            else:
                subject, data = item
                futures.append(await js.publish_async(subject, data))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await nc.close()


async def heartbeat(url: str, node: str, gpus: int = 2, hostname: str | None = None,
                    driver: str | None = None) -> None:
    nc = await nats.connect(url)
    try:
        hb = Heartbeat(node=node, time=datetime.now(UTC), agent_version="test", interval_s=1.0, hostname=hostname,
                       driver_version=driver,
                       gpus=[GpuInventory(uuid=f"GPU-{node}-{i}", index=i, name="NVIDIA H100 80GB HBM3",
                                          mem_total_mb=81559, pci_bus_id=f"00000000:{0x18 + i:02X}:00.0")
                             for i in range(gpus)])
        await nc.publish(subjects.heartbeat(node), hb.to_bytes())
        await nc.flush()
    finally:
        await nc.close()


async def get(url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, **kw)


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def stored(dsn: str, node: str | None = None) -> tuple[int, int]:
    """(rows, distinct (gpu_uuid, time)) in gpu_samples, for one node or all."""
    where = "WHERE node = $1" if node else ""
    args = (node,) if node else ()
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(f"SELECT count(*) AS n, count(DISTINCT (gpu_uuid, time)) AS d FROM gpu_samples "
                                  f"{where}", *args)
        return row["n"], row["d"]
    finally:
        await conn.close()


async def metrics(url: str) -> dict[str, Any]:
    """/metrics parsed: metric family name -> family."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{url}/metrics")).text
    return {f.name: f for f in text_string_to_metric_families(text)}


async def metric_value(url: str, name: str, default: float = 0.0) -> float:
    """The value of an unlabelled sample (e.g. `aether_ingest_samples_total`)."""
    for fam in (await metrics(url)).values():
        for s in fam.samples:
            if s.name == name and not s.labels:
                return s.value
    return default
