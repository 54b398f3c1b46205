"""The orchestrator's Placer: heuristic fallback when the AI core is down or slow, recorded and published."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import nats
import pytest

from orchestrator.errors import ResourceExhausted
from orchestrator.migrate import apply_migrations
from orchestrator.placement import Placer
from services import subjects
from services.localstack import free_port
from services.schemas.placement import PlacementDecision
from tests.ai_core.conftest import gpu, job

CANDS = [gpu(0, "a", mem_free_mb=60000, util_gpu_pct=5), gpu(1, "a", mem_free_mb=25000, util_gpu_pct=70),
         gpu(2, "a", mem_free_mb=25000, util_gpu_pct=20), gpu(0, "b", mem_free_mb=10000)]


async def test_fallback_when_unreachable_is_recorded_and_published(database_url, nats_server, unique_node):
    await apply_migrations(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    nc = await nats.connect(nats_server.url)
    sub = await nc.subscribe(subjects.PLACEMENT)
    placer = Placer(base_url=f"http://127.0.0.1:{free_port()}", pool=pool, nc=nc, timeout_s=0.3)
    job_id = f"job-{unique_node}"
    try:
        d = await placer.place(job_id, job(gpu_mem_mb=20000), CANDS)
        # Best fit on memory (5000 MB left on a-1 and a-2), then least utilised: a-2.
        assert d.policy == "heuristic" and d.fallback_reason.startswith("UNREACHABLE")
        assert d.chosen_uuid == "GPU-a-2" and d.model_version is None
        assert d.rejected == {"GPU-b-0": "needs 20000 MB, 10000 MB unreserved"}
        assert [c.gpu_uuid for c in d.chosen_state] == ["GPU-a-2"]

        row_id = await placer.record(d)  # the jobs engineer's call form: record(decision)
        row = await pool.fetchrow("SELECT * FROM placements WHERE id = $1", row_id)
        assert row["job_id"] == job_id and row["policy"] == "heuristic"
        assert row["fallback_reason"].startswith("UNREACHABLE") and row["chosen_uuids"] == ["GPU-a-2"]
        assert row["candidates"] == 4 and json.loads(row["rejected"]) == d.rejected
        assert json.loads(row["job_features"])["gpu_mem_mb"] == 20000
        assert json.loads(row["chosen_state"])[0]["gpu_uuid"] == "GPU-a-2"
        published = PlacementDecision.model_validate_json((await sub.next_msg(timeout=5)).data)
        assert published.job_id == job_id and published.policy == "heuristic"

        # record(pool, decision) also works, e.g. with a connection inside the caller's transaction.
        async with pool.acquire() as conn, conn.transaction():
            await placer.record(conn, d, publish=False)
        assert await pool.fetchval("SELECT count(*) FROM placements WHERE job_id = $1", job_id) == 2

        # After a few failures in a row the AI core is not called for a while (no timeouts to wait out).
        reasons = [(await placer.place(job_id, job(), CANDS)).fallback_reason for _ in range(3)]
        assert reasons[-1].startswith("CIRCUIT_OPEN")
    finally:
        await placer.aclose()
        await nc.close()
        await pool.close()


async def test_fallback_on_timeout():
    release = asyncio.Event()

    async def hang(reader, writer):
        await reader.read(1 << 16)  # take the request, never answer
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    placer = Placer(base_url=f"http://127.0.0.1:{port}", timeout_s=0.2)
    try:
        d = await asyncio.wait_for(placer.place("job-t", job(), CANDS), 5)
        assert d.policy == "heuristic" and d.fallback_reason == "TIMEOUT"
    finally:
        await placer.aclose()
        release.set()
        server.close()


async def test_nothing_fits_is_resource_exhausted():
    placer = Placer(base_url=f"http://127.0.0.1:{free_port()}", timeout_s=0.2)
    try:
        with pytest.raises(ResourceExhausted) as exc:
            await placer.place("job-big", job(gpu_mem_mb=100000), CANDS)
        assert exc.value.code == "RESOURCE_EXHAUSTED" and exc.value.job_id == "job-big"
        with pytest.raises(ResourceExhausted):
            await placer.place("job-wide", job(gpus=4, gpu_mem_mb=1000), CANDS)  # no node has 4 GPUs
    finally:
        await placer.aclose()
