"""Agents' reports written the fast way (`Lifecycle.apply_known`: decided on the leader's copies of the jobs, one
statement that commits on its own), against a real PostgreSQL: written only while the copy is still true and the
lease is held; anything else is left, untouched, to the locked transaction, which decides on the row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from orchestrator.jobs import db, store
from orchestrator.jobs.leader import NotLeader
from orchestrator.jobs.lifecycle import Lifecycle
from orchestrator.jobs.metrics import JobMetrics
from orchestrator.jobs.model import Job, new_job_id
from orchestrator.jobs.states import Transition, advance
from orchestrator.migrate import apply_migrations
from services.schemas import JobSpec, JobState

HELD = "TRUE"


async def _setup(database_url: str, n: int) -> tuple[asyncpg.Pool, Lifecycle, dict[str, Job]]:
    """`n` jobs RUNNING on node n1, stored, and the leader's copies of them."""
    await apply_migrations(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2, reset=db.keep_session)
    ready = asyncio.Event()
    ready.set()
    rt = SimpleNamespace(settings=SimpleNamespace(job_max_retries=2), db_ready=ready, tx_pool=pool, pool=pool,
                         hub=SimpleNamespace(clients=[]), nc=None)
    lifecycle = Lifecycle(rt, JobMetrics(CollectorRegistry()))
    now = datetime.now(UTC)
    jobs = [Job.from_spec(new_job_id(), JobSpec(name=f"j{i}", command=["true"]), "t", "test", now) for i in range(n)]
    placed = [advance(j, Transition(j.id, JobState.SCHEDULED, assign_node="n1",
                                    assignment=[{"uuid": f"G{i}", "index": i}])) for i, j in enumerate(jobs)]
    running = [advance(a.job, Transition(a.job.id, JobState.RUNNING, source="agent", node="n1", attempt=1))
               for a in placed]
    async with pool.acquire() as conn:
        await store.insert_jobs(conn, [a.job for a in running], [])
    return pool, lifecycle, {a.job.id: a.job for a in running}


def _done(job: Job, state: JobState = JobState.SUCCEEDED) -> Transition:
    return Transition(job.id, state, source="agent", node="n1", attempt=1, exit_code=0, time=datetime.now(UTC))


async def test_a_report_is_written_only_while_the_copy_is_true(database_url):
    pool, lifecycle, copies = await _setup(database_url, 3)
    try:
        a, b, c = copies.values()
        # Behind the leader's back, another replica asked for b to be cancelled: its copy is no longer true.
        await pool.execute("UPDATE jobs SET cancel_requested_at = now() WHERE id = $1", b.id)
        line = (a.id, 1, 0, "stdout", "bye", datetime.now(UTC))
        reports = [_done(a), _done(b), _done(c, JobState.RUNNING)]  # c: RUNNING again, a redelivery
        applied, rest, logged = await lifecycle.apply_known(reports, copies.get, held=lambda: HELD, logs=[line])
        assert [x.job.id for x in applied] == [a.id] and logged
        assert [t.job_id for t in rest] == [b.id, c.id]  # left untouched, in order
        rows = {r["id"]: r for r in await pool.fetch("SELECT * FROM jobs")}
        assert rows[a.id]["state"] == "SUCCEEDED" and rows[a.id]["exit_code"] == 0
        assert rows[b.id]["state"] == "RUNNING" and rows[c.id]["state"] == "RUNNING"
        events = await pool.fetch("SELECT job_id, from_state, to_state FROM job_events ORDER BY id")
        assert [(e["job_id"], e["from_state"], e["to_state"]) for e in events][-1] == (a.id, "RUNNING", "SUCCEEDED")
        assert sum(e["job_id"] == b.id for e in events) == sum(e["job_id"] == c.id for e in events)  # none for b
        assert await pool.fetchval("SELECT count(*) FROM job_logs WHERE job_id = $1", a.id) == 1
        # The locked transaction then decides on the rows: b's report applies (the cancel request kept), c's is a
        # duplicate.
        more, refused = await lifecycle.apply(rest)
        assert [x.job.id for x in more] == [b.id]
        assert [(t.job_id, why.duplicate) for t, why in refused] == [(c.id, True)]
        row = await pool.fetchrow("SELECT state, cancel_requested_at FROM jobs WHERE id = $1", b.id)
        assert row["state"] == "SUCCEEDED" and row["cancel_requested_at"] is not None
    finally:
        await pool.close()


async def test_nothing_is_written_without_the_lease(database_url):
    pool, lifecycle, copies = await _setup(database_url, 1)
    try:
        (job,) = copies.values()
        line = (job.id, 1, 0, "stdout", "from a deposed leader", datetime.now(UTC))
        with pytest.raises(NotLeader):
            await lifecycle.apply_known([_done(job)], copies.get, held=lambda: "FALSE", logs=[line])
        assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", job.id) == "RUNNING"
        assert await pool.fetchval("SELECT count(*) FROM job_logs") == 0

        def known_lost() -> str:
            raise NotLeader("lease lost")

        with pytest.raises(NotLeader):
            await lifecycle.apply_known([_done(job)], copies.get, held=known_lost)
        assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", job.id) == "RUNNING"
    finally:
        await pool.close()
