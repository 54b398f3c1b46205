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
from orchestrator.jobs.reports import Reports
from orchestrator.jobs.states import Transition, advance
from orchestrator.migrate import apply_migrations
from services import subjects
from services.schemas import JobSpec, JobState, JobStateEvent
from tests.support.waiting import until

HELD = "TRUE"


async def _setup(database_url: str, n: int, running: bool = True) -> tuple[asyncpg.Pool, Lifecycle, dict[str, Job]]:
    """`n` jobs RUNNING (or SCHEDULED) on node n1, stored, and the leader's copies of them."""
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
    if running:
        placed = [advance(a.job, Transition(a.job.id, JobState.RUNNING, source="agent", node="n1", attempt=1))
                  for a in placed]
    async with pool.acquire() as conn:
        await store.insert_jobs(conn, [a.job for a in placed], [])
    return pool, lifecycle, {a.job.id: a.job for a in placed}


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


class _Msg:
    def __init__(self, job: Job, state: JobState, prev: JobState) -> None:
        self.subject = subjects.job_report(job.id, "n1")
        self.data = JobStateEvent(job_id=job.id, state=state, prev_state=prev, time=datetime.now(UTC), source="agent",
                                  node="n1", attempt=1, exit_code=0 if state == JobState.SUCCEEDED else None,
                                  duration_s=0.01).to_bytes()
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


async def test_overlapping_batches_apply_a_jobs_reports_in_order(database_url):
    """A job's RUNNING is being written (held up by a row lock) when the batch with its SUCCEEDED comes: that batch
    waits, then reads the copy the first one left - no RUNNING inferred from the final report, nothing refused."""
    pool, lifecycle, copies = await _setup(database_url, 1, running=False)
    registry = CollectorRegistry()
    lifecycle.metrics = JobMetrics(registry)
    lifecycle.listeners.append(lambda applied: copies.update({a.job.id: a.job for a in applied}))
    sched = SimpleNamespace(active=copies, lifecycle=lifecycle, fence=lambda: "SELECT 1", metrics=lifecycle.metrics)
    reports = Reports(lifecycle.rt, sched, on_stray=lambda *a: None, on_hint=lambda hints: None, held=lambda: HELD)
    (job,) = copies.values()
    blocker = await asyncpg.connect(database_url)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        first = asyncio.create_task(reports.handle([_Msg(job, JobState.RUNNING, JobState.SCHEDULED)]))

        async def first_waits_on_the_row() -> bool:
            return await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND datname = current_database()") == 1
        await until(first_waits_on_the_row, 10, "the RUNNING write held up by the row lock")
        second = asyncio.create_task(reports.handle([_Msg(job, JobState.SUCCEEDED, JobState.RUNNING)]))
        await asyncio.sleep(0)  # (a yield, not a wait: the second batch runs up to its first suspension point)
        await hold.commit()
        await asyncio.gather(first, second)
    finally:
        await blocker.close()
    try:
        rows = await pool.fetch("SELECT from_state, to_state, reason FROM job_events WHERE job_id = $1 ORDER BY id",
                                job.id)
        assert [(r["from_state"], r["to_state"], r["reason"]) for r in rows][-2:] == [
            ("SCHEDULED", "RUNNING", None), ("RUNNING", "SUCCEEDED", None)]
        refused = sum(s.value for m in registry.collect() if m.name == "aether_job_reports_refused"
                      for s in m.samples if s.name.endswith("_total"))
        assert refused == 0
    finally:
        await pool.close()
