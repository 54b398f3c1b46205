"""Admission of submitted jobs: queue limit, tenant quotas, idempotency keys, and the insert — batched.

Submissions that arrive together are decided and inserted in one transaction under one advisory lock, so the
limits hold exactly across replicas (check-then-insert never interleaves) and a burst costs one commit, not one
per job. Each caller gets its own answer: the stored job, or the typed refusal.

On the scheduler's leader, new jobs that can start right now are placed in that same transaction (the scheduler
plans them first: `Scheduler.plan_new`), so they reach their node without waiting for a scheduler pass and its
commit; the rest queue as usual.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.errors import DatabaseUnavailable, QueueFull, TenantQuotaExceeded
from orchestrator.jobs import db, store
from orchestrator.jobs.leader import NotLeader, not_leader
from orchestrator.jobs.model import Job
from orchestrator.jobs.states import Applied
from orchestrator.runtime import Runtime
from services.errors import AetherError

if TYPE_CHECKING:
    from orchestrator.jobs.scheduler import Scheduler

log = logging.getLogger("aether.jobs.admission")

MAX_BATCH = 500
CONCURRENT_BATCHES = 2


@dataclass
class Admitted:
    job: Job
    created: bool  # False: an earlier submission with the same idempotency key
    announced: bool = False  # placed at admission: already queued, published and dispatched


class Admission:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.s = rt.settings
        self._waiting: list[tuple[Job, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self.planner: Scheduler | None = None  # places new jobs as they are stored, on the scheduler's leader

    def quota(self, tenant: str) -> tuple[int, int]:
        q = self.s.job_tenant_quotas.get(tenant)
        if q is not None:
            return q.max_active_jobs, q.max_gpus
        return self.s.job_tenant_max_active_jobs, self.s.job_tenant_max_gpus

    async def submit(self, job: Job) -> Admitted:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((job, fut))
        self._wake.set()
        try:
            async with asyncio.timeout(20.0):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise DatabaseUnavailable("the job could not be stored in time; the database is slow or down",
                                      job_id=job.id) from None

    async def run(self) -> None:
        # Two batches at a time: the next one plans and waits on the admission lock while the last one commits
        # and is announced, so a burst waits for one transaction, not for one and a half. (Their checks and
        # inserts still take turns under the lock, so the limits hold as exactly as with one.)
        slots = asyncio.Semaphore(CONCURRENT_BATCHES)
        settling: set[asyncio.Task] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    await slots.acquire()
                    batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                    task = asyncio.create_task(self._settle(batch))
                    settling.add(task)
                    task.add_done_callback(lambda t: (settling.discard(t), slots.release()))
        finally:
            for task in settling:
                task.cancel()

    async def _settle(self, batch: list[tuple[Job, asyncio.Future]]) -> None:
        """Admit one batch and give each caller its answer; never raises."""
        try:
            results = await self._admit([job for job, _ in batch])
        except AetherError as exc:
            results = [exc] * len(batch)
        except Exception as exc:
            log.exception("admission batch failed")
            results = [DatabaseUnavailable(f"job not stored: {exc.__class__.__name__}")] * len(batch)
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def _admit(self, jobs: list[Job]) -> list[Admitted | AetherError]:
        plan = await self._plan(jobs)
        try:
            results, applied = await self._commit(jobs, plan)
        except NotLeader:
            # The lease went while we planned: store the jobs unplaced (whoever leads now queues them).
            self.planner.release(list(plan.values()))
            plan = {}
            results, applied = await self._commit(jobs, plan)
        except BaseException:
            if plan:
                self.planner.release(list(plan.values()))
            raise
        if plan:
            placed = {a.job.id: a.job for a in applied}
            self.planner.release([d for job_id, d in plan.items() if job_id not in placed])
            if placed:
                results = [Admitted(placed[r.job.id], True, announced=True)
                           if isinstance(r, Admitted) and r.created and r.job.id in placed else r for r in results]
                try:
                    await self.planner.placed_new([j for j in jobs if j.id in placed], applied, plan)
                except Exception:  # stored is stored: the callers get their job ids whatever the courtesies do
                    log.exception("announcing jobs placed at admission failed")
        return results

    async def _plan(self, jobs: list[Job]) -> dict[str, Any]:
        if self.planner is None:
            return {}
        try:
            return await self.planner.plan_new(jobs)
        except Exception:  # placing at admission is a shortcut: without it the jobs queue
            log.exception("placing at admission failed; the jobs queue")
            return {}

    async def _commit(self, jobs: list[Job], plan: dict[str, Any]
                      ) -> tuple[list[Admitted | AetherError], list[Applied]]:
        out: list[Admitted | AetherError] = []
        accepted: list[Job] = []
        applied: list[Applied] = []
        # Placements are only written by the scheduler's leader: the lease fence travels with BEGIN. The admission
        # lock is taken by the first read (store.admission_state), so it is held for one round trip less.
        try:
            async with db.transaction(self.rt, first=self.planner.fence() if plan else None) as conn:
                counts, pending, existing = await store.admission_state(
                    conn, [(j.tenant, j.idempotency_key) for j in jobs if j.idempotency_key])
                batch_keys: dict[tuple[str, str], Job] = {}
                for job in jobs:
                    key = (job.tenant, job.idempotency_key) if job.idempotency_key else None
                    if key is not None and key in existing:
                        out.append(Admitted(existing[key], created=False))
                        continue
                    if key is not None and key in batch_keys:
                        out.append(Admitted(batch_keys[key], created=False))
                        continue
                    refusal = self._refusal(job, counts, pending)
                    if refusal is not None:
                        out.append(refusal)
                        continue
                    active, gpus = counts.get(job.tenant, (0, 0))
                    counts[job.tenant] = (active + 1, gpus + job.gpus)
                    pending += 1
                    accepted.append(job)
                    if key is not None:
                        batch_keys[key] = job
                    out.append(Admitted(job, created=True))
                if accepted:
                    # Those planned go in SCHEDULED, with their placement rows, all in one statement: under the lock,
                    # every round trip is one more that the next batch waits for.
                    applied = self.planner.advance_new(accepted, plan) if plan else []
                    await store.insert_jobs(conn, accepted, applied,
                                            also=self.planner.rows_new(applied, plan) if applied else None)
        except asyncpg.PostgresError as exc:
            if not_leader(exc):
                raise NotLeader("this replica no longer holds the scheduler lease") from None
            raise
        return out, applied

    def _refusal(self, job: Job, counts: dict[str, tuple[int, int]], pending: int) -> AetherError | None:
        if pending >= self.s.job_max_queue:
            return QueueFull(f"the queue holds {pending} jobs, its limit ({self.s.job_max_queue}); retry later",
                             details={"queued": pending, "limit": self.s.job_max_queue})
        max_jobs, max_gpus = self.quota(job.tenant)
        active, gpus = counts.get(job.tenant, (0, 0))
        if max_jobs and active + 1 > max_jobs:
            return TenantQuotaExceeded(
                f"tenant {job.tenant!r} has {active} unfinished jobs, its quota is {max_jobs}",
                details={"tenant": job.tenant, "active_jobs": active, "max_active_jobs": max_jobs})
        if max_gpus and gpus + job.gpus > max_gpus:
            return TenantQuotaExceeded(
                f"tenant {job.tenant!r} holds or waits for {gpus} GPUs; {job.gpus} more would exceed its quota "
                f"of {max_gpus}", details={"tenant": job.tenant, "gpus": gpus, "max_gpus": max_gpus})
        return None
