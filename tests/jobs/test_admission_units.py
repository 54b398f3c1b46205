"""Admission against a real PostgreSQL, with the scheduler's side played by the test: when the lease is gone
while a batch was being placed, the jobs are stored unplaced (PENDING) and every promise is given back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import asyncpg
import pytest

from orchestrator.jobs import db
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.leader import FENCE_SQLSTATE, NotLeader
from orchestrator.jobs.model import Job, new_job_id
from orchestrator.migrate import apply_migrations
from services.schemas import JobSpec
from services.schemas.base import utcnow


class LostLease:
    """A planner that plans every job, then turns out not to lead: in Python (known lost) or in the database."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.released: list = []

    async def plan_new(self, jobs):
        return {j.id: SimpleNamespace(job=j) for j in jobs}

    def fence(self) -> str:
        if self.where == "python":
            raise NotLeader("lease lost")
        return f"DO $$BEGIN RAISE EXCEPTION 'lease lost' USING ERRCODE = '{FENCE_SQLSTATE}'; END$$"

    def release(self, decided) -> None:
        self.released += decided

    def advance_new(self, jobs, plan):
        raise AssertionError("a replica that does not lead must not place")

    def rows_new(self, applied, plan):
        raise AssertionError("a replica that does not lead must not write placements")

    async def placed_new(self, jobs, applied, plan):
        raise AssertionError("nothing was placed")


@pytest.mark.parametrize("where", ["python", "database"])
async def test_jobs_are_stored_unplaced_when_the_lease_is_gone(database_url, where):
    await apply_migrations(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2, reset=db.keep_session)
    try:
        ready = asyncio.Event()
        ready.set()
        settings = SimpleNamespace(job_tenant_quotas={}, job_tenant_max_active_jobs=0, job_tenant_max_gpus=0,
                                   job_max_queue=100)
        admission = Admission(SimpleNamespace(settings=settings, db_ready=ready, tx_pool=pool, pool=pool))
        admission.planner = planner = LostLease(where)
        jobs = [Job.from_spec(new_job_id(), JobSpec(name=f"j{i}", command=["true"]), "t", "admin", utcnow(), None)
                for i in range(3)]
        results = await admission._admit(jobs)
        assert [(r.job.id, r.created, r.announced, r.job.state.value) for r in results] == [
            (j.id, True, False, "PENDING") for j in jobs]
        assert sorted(d.job.id for d in planner.released) == sorted(j.id for j in jobs)  # every promise back
        rows = await pool.fetch("SELECT id, state FROM jobs ORDER BY id")
        assert [(r["id"], r["state"]) for r in rows] == sorted((j.id, "PENDING") for j in jobs)
    finally:
        await pool.close()
