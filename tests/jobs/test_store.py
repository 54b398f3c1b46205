"""The jobs tables on a real PostgreSQL: a redelivered log line is stored once, retention keeps unfinished jobs
and recent history, and deletes old finished jobs with their events and logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from orchestrator.jobs import store
from orchestrator.jobs.model import Job, new_job_id
from orchestrator.jobs.states import Transition, advance
from orchestrator.migrate import apply_migrations
from services.schemas import JobSpec, JobState


def mkjob(now: datetime) -> Job:
    return Job.from_spec(new_job_id(), JobSpec(name="s", command=["true"]), "t", "test", now)


async def test_logs_are_idempotent_and_retention_keeps_what_it_must(database_url):
    await apply_migrations(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        now = datetime.now(UTC)
        old, recent, running = mkjob(now - timedelta(days=3)), mkjob(now), mkjob(now - timedelta(days=3))
        await store.insert_jobs(conn, [old, recent, running])
        line = (old.id, 1, 0, "stdout", "hello", now)
        await store.insert_logs(conn, [line, line, (new_job_id(), 1, 0, "stdout", "no such job", now)])
        assert await conn.fetchval("SELECT count(*) FROM job_logs") == 1
        async with conn.transaction():
            locked = await store.lock_jobs(conn, [old.id, recent.id, running.id])
            done = []
            for job, finished in ((locked[old.id], now - timedelta(days=2)), (locked[recent.id], now)):
                a = advance(job, Transition(job.id, JobState.CANCELLED, time=finished, reason="test"))
                done.append(a)
            r = advance(locked[running.id], Transition(running.id, JobState.SCHEDULED, assign_node="n",
                                                      assignment=[{"uuid": "G", "index": 0}]))
            await store.write_transitions(conn, [*done, r])
        assert await store.purge_finished(conn, older_than_h=24) == 1
        left = {r["id"] for r in await conn.fetch("SELECT id FROM jobs")}
        assert left == {recent.id, running.id}
        assert await conn.fetchval("SELECT count(*) FROM job_logs") == 0  # went with its job
        assert await conn.fetchval("SELECT count(*) FROM job_events WHERE job_id = $1", old.id) == 0
        events = await store.events(conn, running.id)
        assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "PENDING"), ("PENDING", "SCHEDULED")]
    finally:
        await conn.close()
