"""PostgreSQL stops under a working cluster for 30 s and comes back: the job API answers 503 DATABASE_UNAVAILABLE at once
and never hangs, the orchestrator stays alive, a job that ends during the outage is recorded once afterwards,
and ingest catches up with every sample stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest

from services.localstack import Postgres
from tests.faults.support import (
    agent,
    ametric,
    fetch,
    headers,
    job_in,
    node_name,
    start_orchestrator,
    stored_samples,
    telemetry_in_stream,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]

OUTAGE_S = 30.0
ANSWER_WITHIN_S = 25.0  # the client's timeout: an answer must come before it (the 503 comes in well under)


@pytest.fixture
def own_pg():
    """A PostgreSQL of this test's own: it is stopped and started again, which the session one must not be."""
    server = Postgres().start()
    yield server
    server.cleanup()


async def test_postgres_outage_503_then_catch_up(nats_server, own_pg, output_dir):
    dsn = own_pg.create_database("outage")
    orch = await asyncio.to_thread(start_orchestrator, nats_server.url, dsn, output_dir / "orchestrator.log",
                                   INGEST_ACK_WAIT_S="3")
    agt = agent(nats_server.url, node_name("pg"), output_dir, interval=0.2)
    await asyncio.to_thread(agt.start)
    node = agt.args[agt.args.index("--node") + 1]
    answers: dict[str, dict] = {}
    try:
        async with httpx.AsyncClient(base_url=orch.url, timeout=ANSWER_WITHIN_S, headers=headers()) as c:
            async def placeable():
                return any(g["healthy"] for g in (await c.get("/v1/gpus")).json())

            await until(placeable, 30, "the agent's GPUs placeable")
            r = await c.post("/v1/jobs", json={"name": "ends-in-the-dark", "command": ["sleep", "3"]})
            assert r.status_code == 201, r.text
            jid = r.json()["job_id"]
            await until(lambda: job_in(c, jid, "RUNNING"), 20, "the job running")

            await asyncio.to_thread(own_pg.stop)
            down_at = time.monotonic()
            for what, call in [("submit", c.post("/v1/jobs", json={"name": "in-the-dark", "command": ["true"]})),
                               ("list", c.get("/v1/jobs")), ("get", c.get(f"/v1/jobs/{jid}")),
                               ("events", c.get(f"/v1/jobs/{jid}/events")), ("cancel", c.delete(f"/v1/jobs/{jid}"))]:
                t0 = time.monotonic()
                r = await call  # an httpx timeout here would fail the test: nothing may hang
                answers[what] = {"status": r.status_code, "code": r.json().get("code"),
                                 "seconds": round(time.monotonic() - t0, 3)}
            assert {a["status"] for a in answers.values()} == {503}, answers
            assert {a["code"] for a in answers.values()} == {"DATABASE_UNAVAILABLE"}, answers
            assert (await c.get("/health")).status_code == 200
            health = (await c.get("/v1/health")).json()
            assert health["database"]["ok"] is False and health["status"] == "degraded"

            # The job ends while the database is away; its report waits in JetStream. Ingest keeps retrying.
            await until(lambda: _at_least(ametric(agt.url, "aether_agent_jobs_finished_total"), 1), 20,
                        "the agent to finish the job")
            await until(lambda: _at_least(ametric(orch.url, "aether_ingest_db_errors_total"), 3), 30,
                        "ingest retrying its writes")
            await until(lambda: time.monotonic() - down_at >= OUTAGE_S, OUTAGE_S + 5, "the outage's length")
            assert orch.proc.poll() is None
            await asyncio.to_thread(own_pg.start)
            outage_s = time.monotonic() - down_at

            async def submitted():
                r = await c.post("/v1/jobs", json={"name": "after-the-dark", "command": ["true"]})
                return r.json()["job_id"] if r.status_code == 201 else None

            after = await until(submitted, 30, "submissions accepted again")
            done = await until(lambda: job_in(c, jid, "SUCCEEDED"), 30, "the job's end recorded")
            await until(lambda: job_in(c, after, "SUCCEEDED"), 30, "the new job to run")
        assert done["attempt"] == 1 and done["lost_count"] == 0, done
        events = await fetch(dsn, "SELECT to_state FROM job_events WHERE job_id = $1", jid)
        assert [e["to_state"] for e in events].count("SUCCEEDED") == 1
        db_errors = await ametric(orch.url, "aether_ingest_db_errors_total")

        await asyncio.to_thread(agt.stop)
        batches = await telemetry_in_stream(nats_server.url, node)
        expected = sum(b["samples"] for b in batches)
        await until(lambda: _rows_at_least(dsn, node, expected), 60, f"all {expected} samples stored")
        rows, distinct = await stored_samples(dsn, node)
        assert rows == distinct == expected
        (output_dir / "postgres_outage.json").write_text(json.dumps({
            "outage_s": round(outage_s, 1), "answers_during_outage": answers, "ingest_write_retries": db_errors,
            "samples_stored": rows}, indent=1))
    finally:
        with contextlib.suppress(Exception):
            agt.stop()
        orch.stop()


async def _at_least(value, n: float) -> bool:
    return await value >= n


async def _rows_at_least(dsn: str, node: str, n: int) -> bool:
    rows, _ = await stored_samples(dsn, node)
    return rows >= n
