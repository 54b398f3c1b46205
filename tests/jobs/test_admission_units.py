"""Admission against a real PostgreSQL, with the scheduler's side played by the test: when the lease is gone
while a batch was being placed, the jobs are stored unplaced (PENDING) and every promise is given back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import asyncpg
import pytest

from orchestrator.jobs import db
from orchestrator.jobs.admission import Admission, Admitted
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


async def test_quota_and_queue_limit_hold_exactly_when_two_replicas_admit_at_once(database_url):
    """Two replicas' admissions (each its own pool), batches racing: the quota and the queue limit are never
    exceeded, because each batch reads the counts only once it holds the admission lock, after every batch before
    it has committed."""
    await apply_migrations(database_url)
    pools = [await asyncpg.create_pool(database_url, min_size=0, max_size=4, reset=db.keep_session) for _ in range(2)]
    try:
        ready = asyncio.Event()
        ready.set()
        quota = SimpleNamespace(max_active_jobs=7, max_gpus=0)
        settings = SimpleNamespace(job_tenant_quotas={"capped": quota}, job_tenant_max_active_jobs=0,
                                   job_tenant_max_gpus=0, job_max_queue=20)
        replicas = [Admission(SimpleNamespace(settings=settings, db_ready=ready, tx_pool=p, pool=p)) for p in pools]

        def jobs(tenant: str, n: int) -> list[Job]:
            return [Job.from_spec(new_job_id(), JobSpec(name=f"{tenant}{i}", command=["true"]), tenant, "admin",
                                  utcnow(), None) for i in range(n)]

        # 24 batches of 2 jobs for the capped tenant and 2 for others, alternating between the replicas.
        batches = [jobs("capped", 2) + jobs(f"free{b}", 2) for b in range(24)]
        results = await asyncio.gather(*(replicas[b % 2]._admit(batch) for b, batch in enumerate(batches)))
        admitted = [r.job for rs in results for r in rs if isinstance(r, Admitted)]
        refused = [type(r).__name__ for rs in results for r in rs if not isinstance(r, Admitted)]
        assert sum(j.tenant == "capped" for j in admitted) == 7
        assert len(admitted) == 20  # the queue limit: every job stays PENDING (nothing places them)
        assert sorted(set(refused)) == ["QueueFull", "TenantQuotaExceeded"]
        rows = await pools[0].fetch("SELECT tenant, count(*) AS n FROM jobs WHERE state = 'PENDING' GROUP BY tenant")
        assert sum(r["n"] for r in rows) == 20 and {r["tenant"]: r["n"] for r in rows}["capped"] == 7
    finally:
        for p in pools:
            await p.close()
